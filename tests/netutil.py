"""Helpers for multi-process tests: start child nodes (``tests.child``) and wait on their output."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECRET = "test-secret-0123456789"


class ChildNode:
    """A child node process. ``exec(code)`` runs a snippet in it; ``expect(tag)`` waits for an
    ``emit(tag, ...)`` line and returns its values (after the tag)."""

    def __init__(self, log_dir, name, **cfg):
        cfg.setdefault("secret", SECRET)
        cfg.setdefault("binds", ["127.0.0.1:*"])
        cfg.setdefault("norc", True)
        self.name = name
        self.cfg = cfg
        self.log_path = Path(log_dir) / ("%s.log" % name.replace("/", "_"))
        self._lines = queue.Queue()
        self.backlog = []
        self.proc = None
        self.start()

    def start(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO), env.get("PYTHONPATH", "")])
        env.setdefault("AEMP_TEST_LOG", "INFO")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "child", json.dumps(self.cfg)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, cwd=str(REPO),
            env=env)
        self._lines = queue.Queue()
        self.backlog = []
        t = threading.Thread(target=self._reader, args=(self.proc, self._lines), daemon=True)
        t.start()
        _, self.nodeid, self.binds = self.expect_raw("ready", timeout=20)
        return self

    @staticmethod
    def _reader(proc, lines):
        for raw in proc.stdout:
            try:
                lines.put(json.loads(raw))
            except ValueError:
                lines.put(["garbage", raw.decode("utf-8", "replace")])
        lines.put(None)

    def exec(self, code):
        self.proc.stdin.write((json.dumps({"exec": code}) + "\n").encode())
        self.proc.stdin.flush()

    def expect_raw(self, tag, timeout=10, pred=None):
        deadline = time.monotonic() + timeout
        for i, item in enumerate(self.backlog):
            if item[0] == tag and (pred is None or pred(item[1:])):
                return self.backlog.pop(i)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("%s: no %r line within %s s; seen %r; log:\n%s" % (
                    self.name, tag, timeout, self.backlog[-10:], self.log_tail()))
            try:
                item = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if item is None:
                self._lines.put(None)
                raise AssertionError("%s exited (rc=%s) before %r; seen %r; log:\n%s" % (
                    self.name, self.proc.poll(), tag, self.backlog[-10:], self.log_tail()))
            if item[0] == "error":
                raise AssertionError("%s: snippet failed:\n%s" % (self.name, item[1]))
            if item[0] == tag and (pred is None or pred(item[1:])):
                return item
            self.backlog.append(item)

    def expect(self, tag, timeout=10, pred=None):
        return self.expect_raw(tag, timeout, pred)[1:]

    def log_tail(self, n=40):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()
        self._log.close()

    @property
    def addr(self):
        return self.binds[0]
