"""backends.native: the priority gate in front of a shared model."""

from __future__ import annotations

import threading
import time

import pytest

from backends.native import PriorityGate


def hold(gate: PriorityGate, urgent: bool, name: str, order: list[str], release: threading.Event) -> threading.Thread:
    def run() -> None:
        with gate.slot(urgent):
            order.append(name)
            release.wait(10)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_urgent_waiters_go_first_and_each_class_in_arrival_order() -> None:
    gate = PriorityGate(1)
    order: list[str] = []
    release = threading.Event()
    busy = hold(gate, False, "busy", order, release)
    wait_until(lambda: order == ["busy"])
    threads = []
    for name, urgent in [("step-1", False), ("first-words", True), ("step-2", False), ("final", True)]:
        threads.append(hold(gate, urgent, name, order, release))
        wait_until(lambda n=len(threads): gate.waiting == n)
    release.set()
    for thread in [busy, *threads]:
        thread.join(5)
    assert order == ["busy", "first-words", "final", "step-1", "step-2"]


def test_slots_run_at_once_and_no_more() -> None:
    gate = PriorityGate(2)
    running, peak = [0], [0]
    lock = threading.Lock()

    def work() -> None:
        with gate.slot():
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.02)
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert peak[0] == 2 and gate.waiting == 0


def test_a_holder_that_raises_frees_its_slot() -> None:
    gate = PriorityGate(1)
    with pytest.raises(RuntimeError), gate.slot():
        raise RuntimeError("decode failed")
    order: list[str] = []
    release = threading.Event()
    release.set()
    hold(gate, False, "next", order, release).join(5)
    assert order == ["next"]
