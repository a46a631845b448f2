"""The examples run as documented (each as real processes on 127.0.0.1)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_demo_receiver_sender_through_a_seed():
    """examples/demo.py: the AEMP introduction's receiver/sender pair through a seed, and a
    monitor firing with transport_error when the receiver is killed."""
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    received = [l for l in lines if "received data: message" in l]
    assert len(received) >= 3, out.stdout
    assert any("is gone: ['transport_error'" in l for l in lines), out.stdout
    assert lines[-1].startswith("demo: done"), out.stdout
