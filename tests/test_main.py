"""server/__main__.py: SIGTERM stops the server whichever greenlet the signal lands in."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The signal arrives while a handler greenlet runs, under a bare ``except:`` as
# python-engineio runs Socket.IO handlers; the main greenlet, which serves, waits meanwhile.
SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import eventlet
    eventlet.monkey_patch(thread=False)
    import greenlet
    from server.__main__ import _terminate, eventlet_terminate

    handler = _terminate if sys.argv[1] == "plain" else eventlet_terminate(greenlet.getcurrent())
    signal.signal(signal.SIGTERM, handler)

    def socketio_handler():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs at the next bytecode boundary
                pass
        except:  # noqa: E722 - as engineio's run_handler
            print("handler swallowed the interrupt")

    eventlet.spawn(socketio_handler)
    try:
        eventlet.sleep(3)
        print("served on")
    except KeyboardInterrupt:
        print("main interrupted")
    """
)


def run(mode: str) -> str:
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", SCRIPT, mode], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_sigterm_during_a_handler_under_eventlet_interrupts_the_serving_greenlet():
    pytest.importorskip("eventlet", reason="eventlet is optional: pip install eventlet")
    assert run("eventlet").splitlines() == ["main interrupted"]


def test_a_plain_keyboard_interrupt_would_be_swallowed_by_the_handler():
    # Why the handler above exists: raising where the signal lands loses it.
    pytest.importorskip("eventlet", reason="eventlet is optional: pip install eventlet")
    assert run("plain").splitlines() == ["handler swallowed the interrupt", "served on"]
