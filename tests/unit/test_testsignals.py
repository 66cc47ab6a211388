"""The worker's test signals: queued firings, waits that time out, held firing threads
(no services needed)."""

from __future__ import annotations

import threading
import time

import pytest

from reconcile.worker import TestSignal, WorkerSignals


def test_each_wait_consumes_one_firing_in_order() -> None:
    signal: TestSignal[int] = TestSignal("landed")
    signal.fire(3)
    signal.fire(5)
    assert signal.wait(0.1) == 3
    assert signal.wait(0.1) == 5
    assert signal.fired == 2
    with pytest.raises(TimeoutError, match=r"'landed' not fired within 0\.05 s"):
        signal.wait(0.05)


def test_wait_returns_as_soon_as_another_thread_fires() -> None:
    signal: TestSignal[None] = TestSignal("idle")
    timer = threading.Timer(0.05, signal.fire, args=(None,))
    t0 = time.monotonic()
    timer.start()
    signal.wait(5)
    assert time.monotonic() - t0 < 2


def test_wait_for_skips_values_that_do_not_match() -> None:
    signal: TestSignal[int] = TestSignal("landed")
    for n in (0, 0, 2, 1):
        signal.fire(n)
    assert signal.wait_for(lambda n: n > 0, 0.1) == 2
    assert signal.wait(0.1) == 1, "values after the match stay queued"


def test_clear_forgets_earlier_firings_but_not_the_count() -> None:
    signal: TestSignal[None] = TestSignal("quiet")
    signal.fire(None)
    signal.clear()
    with pytest.raises(TimeoutError):
        signal.wait(0.05)
    assert signal.fired == 1


def test_a_held_signal_keeps_the_firing_thread_until_released() -> None:
    signal: TestSignal[int] = TestSignal("woke")
    signal.hold(lambda claimed: claimed > 0)
    signal.fire(0)  # does not match: not held
    past = threading.Event()

    def fire() -> None:
        signal.fire(1)
        past.set()

    thread = threading.Thread(target=fire, daemon=True)
    thread.start()
    assert signal.wait_for(lambda n: n == 1, 5) == 1, "queued before the firing thread is held"
    assert not past.wait(0.2), "the firing thread is held"
    signal.release()
    assert past.wait(5)
    signal.fire(2)  # released: later firings pass


def test_every_worker_signal_is_named_after_its_field() -> None:
    signals = WorkerSignals()
    names = {name: getattr(signals, name).name for name in vars(signals)}
    assert names and all(field == name for field, name in names.items())
    assert WorkerSignals().fetch_landed is not signals.fetch_landed, "one set per worker"
