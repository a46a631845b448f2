"""The AEMP example ports run as documented: the resilient chat and the job pool.

Every example is a real process on 127.0.0.1 around a seed started with ``examples/seed.py``
and the demo environment (``AEMP_DEMO_SEED``/``AEMP_DEMO_SECRET``, as examples/demo.py does).
Waits are for output lines, each with a deadline. ``Script``, ``Examples`` and ``run_python``
live in tests/netutil.py and the ``examples`` fixture in tests/conftest.py: tests/test_monkey.py,
tests/test_threaded.py and tests/test_embedding.py use them too (legacy_monkey.py and
wsgi_embed.py are tested there).
"""

import re
import signal

import pytest

# slow (docs/testing.md): real processes, ~10 s for the module on a busy 2-core machine
pytestmark = pytest.mark.slow


def test_chat_server_and_clients_survive_kills_and_restarts(examples):
    """examples/chat_server.py + chat_client.py: the server registers in eg_chat_server,
    clients find it with db_mon and monitor it; quits are announced through the server's
    monitors; a killed client and a killed server are restarted and the chat goes on."""
    examples.seed()
    server = examples.start("server", "chat_server.py")
    server.expect(r"server ready: \S+#", 20)
    alice = examples.start("alice", "chat_client.py", "alice", stdin=True)
    bob = examples.start("bob", "chat_client.py", "bob", stdin=True)
    alice.expect(r"^alice \(joins\)", 20)
    bob.expect(r"^bob \(joins\)", 20)

    m = bob.mark()
    alice.send_line("hello bob")
    bob.expect(r"^alice: hello bob$", 10, since=m)
    server.expect(r"relaying: alice: hello bob", 5)

    # a client killed without a word: the server's monitor announces it
    m = alice.mark()
    bob.kill()
    alice.expect(r"^bob \(quits, transport_error", 20, since=m)
    mb = bob.mark()
    bob.start()
    alice.expect(r"^bob \(joins\)", 20, since=m)
    bob.expect(r"^bob \(joins\)", 20, since=mb)

    # the server killed: both clients notice, wait, and join the restarted server
    ma, mb = alice.mark(), bob.mark()
    server.kill()
    alice.expect(r"^\* disconnected from server: transport_error", 20, since=ma)
    bob.expect(r"^\* disconnected from server: transport_error", 20, since=mb)
    ms = server.mark()
    server.start()
    server.expect(r"server ready", 20, since=ms)
    alice.expect(r"^\* connecting to server ", 30, since=ma)
    alice.expect(r"^alice \(joins\)", 20, since=ma)  # each sees its own join relayed
    bob.expect(r"^bob \(joins\)", 20, since=mb)

    m = bob.mark()
    alice.send_line("still here?")
    bob.expect(r"^alice: still here\?$", 10, since=m)

    # a client that ends normally (EOF on stdin) is announced too
    m = bob.mark()
    alice.close_stdin()
    assert alice.wait(20) == 0
    bob.expect(r"^alice \(quits", 20, since=m)


# --------------------------------------------------------------------------- job pool


def _sum_squares(n):
    return sum(i * i for i in range(n))


def test_jobpool_requeues_the_job_of_a_killed_worker(examples):
    """examples/jobpool.py: workers db_reg in jobpool_workers; the dispatcher hands out jobs,
    monitors the workers, and re-queues the job of a worker killed while working on it."""
    examples.seed()
    fast = examples.start("fast", "jobpool.py", "worker", "--delay", "0.05")
    slow = examples.start("slow", "jobpool.py", "worker", "--delay", "60")
    fast.expect(r"worker \S+: ready", 20)
    slow_port = slow.expect(r"worker (\S+): ready", 20).group(1)
    disp = examples.start("dispatcher", "jobpool.py", "dispatcher", "8", "--min-workers", "2")
    job = int(slow.expect(r"working on job (\d+)", 30).group(1))
    slow.kill()
    disp.expect(r"worker %s died \(transport_error" % re.escape(slow_port), 20)
    disp.expect(r"re-queueing job %d$" % job, 5)
    disp.expect(r"all 8 jobs done", 30)
    assert disp.wait(10) == 0
    done = {}
    for line in disp.lines:
        m = re.search(r"dispatcher: job (\d+) -> (\d+) \(worker (\S+)\)", line)
        if m:
            done[int(m.group(1))] = (int(m.group(2)), m.group(3))
    assert sorted(done) == list(range(8)), disp.tail()
    for j, (value, by) in done.items():
        assert value == _sum_squares(1000 + j)
        assert by != slow_port
    assert fast.count(r"working on job %d$" % job) == 1  # the re-queued job, done once


def test_jobpool_dispatcher_picks_up_a_worker_started_later(examples):
    """A dispatcher started before any worker waits; a worker that joins later gets the jobs."""
    examples.seed()
    disp = examples.start("dispatcher", "jobpool.py", "dispatcher", "3")
    worker = examples.start("worker", "jobpool.py", "worker", "--delay", "0")
    worker.expect(r"ready", 20)
    disp.expect(r"all 3 jobs done", 30)
    assert disp.wait(10) == 0


# --------------------------------------------------------------------------- ending cleanly


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_examples_end_cleanly_on_ctrl_c_and_sigterm(examples, sig):
    """``run_forever()`` (the examples end with it): Ctrl-C or SIGTERM shuts the node down and
    the process exits with status 0, without a ``KeyboardInterrupt`` traceback; the receiver's
    peer (the seed) sees the link end at once."""
    seed = examples.seed()
    mark = seed.mark()
    rcv = examples.start("receiver", "eg_receiver.py")
    rcv.expect("registered in eg_receivers")
    seed.expect(r"seed: node eg_receiver\S* up", since=mark)
    mark = seed.mark()
    rcv.kill(sig)
    assert rcv.proc.returncode == 0, rcv.tail()
    assert not any("Traceback" in ln or "KeyboardInterrupt" in ln for ln in rcv.lines), rcv.tail()
    seed.expect(r"seed: node eg_receiver\S* down", since=mark)
