"""The README demo: a small AEMP network of local processes on 127.0.0.1.

Run:  python examples/demo.py

It starts a seed (examples/seed.py), the AEMP introduction's receiver (examples/eg_receiver.py,
registers a port in the family ``eg_receivers``) and sender (examples/eg_sender.py, finds the
receiver with ``db_mon`` and sends it ``test`` messages), each as its own process. Then it kills
the receiver with SIGKILL, and the sender's monitor on the receiver's port fires with
``transport_error``. Every line the nodes print is shown, prefixed with the node's role. It uses a
fresh random secret and ``norc``, so it does not need (or touch) an rc file.
"""

import os
import queue
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(role, script, *args, env):
    proc = subprocess.Popen(
        [sys.executable, "-u", os.path.join(HERE, script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )

    def pump():
        for line in proc.stdout:
            lines.put((role, line.rstrip("\n")))

    threading.Thread(target=pump, daemon=True).start()
    return proc


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            role, line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        print("%-9s| %s" % (role, line), flush=True)
        if pred(role, line):
            return line
    raise SystemExit("demo: timed out waiting for %s" % what)


lines = queue.Queue()


def main():
    addr = "127.0.0.1:%d" % free_port()
    env = dict(os.environ, AEMP_DEMO_SEED=addr, AEMP_DEMO_SECRET=secrets.token_hex(16))
    print("demo: seed at %s, receiver and sender find each other through it" % addr, flush=True)
    procs = {}
    try:
        procs["seed"] = start("seed", "seed.py", addr, env=env)
        wait_for(lambda r, l: r == "seed" and "listening" in l, 20, "the seed")
        procs["receiver"] = start("receiver", "eg_receiver.py", env=env)
        wait_for(lambda r, l: r == "receiver" and "registered" in l, 20, "the receiver")
        procs["sender"] = start("sender", "eg_sender.py", "3", env=env)
        seen = set()

        def three_received(role, line):
            if role == "receiver" and "received data" in line:
                seen.add(line)
            return len(seen) >= 3

        wait_for(three_received, 30, "three test messages")
        print("demo: killing the receiver with SIGKILL; the sender's monitor must fire", flush=True)
        procs["receiver"].send_signal(signal.SIGKILL)
        wait_for(lambda r, l: r == "sender" and "is gone" in l, 30, "the sender's monitor")
        print("demo: done: messages crossed the network and the monitor fired", flush=True)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
