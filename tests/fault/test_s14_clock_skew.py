"""Scenario 14: skewed clocks. Clients, workers and a scheduler whose clocks are 300 s
fast and 300 s slow, against one Redis whose clock is right.

The skew is real: each skewed process runs under libfaketime (Debian's ``libfaketime``,
``LD_PRELOAD`` with ``FAKETIME="+300s"`` / ``"-300s"``), so ``time.time()`` and every
other wall-clock read in that process, the engine's included, is off by 300 s; the
monotonic clock is left alone (``FAKETIME_DONT_FAKE_MONOTONIC``). Redis, PostgreSQL and
this test run on the true clock: the effect rows are stamped by PostgreSQL's
``clock_timestamp()``, so lateness is measured on a clock no skewed process touches.

* ``perform_in``: a fast client and a slow client each schedule keys ``DELAY`` s ahead
  (a fast and a slow worker promote and run them, no scheduler);
  each key must run no earlier than ``DELAY`` s after the test told the client to
  send, and no later than the promotion interval (``poll_interval`` x 1.5) plus the
  send window and a delivery's slack after that. With a host-clock run-at the fast
  client's jobs would run 300 s late and the slow client's at once (``DELAY`` s early).
* retries: a fast and a slow worker fail every key once with ``retry_in = RETRY_DELAY``;
  each retry must run ``RETRY_DELAY`` s after the failure entered the retry set (seen
  by this test within its 20 ms polling), within the same bound. The keys reach the
  workers through passes of a fast scheduler with a jitter window, whose spread must
  stay within ``JITTER`` s of the pass.

Nothing lost, nothing doubled: every key done once, one effect row each.
"""

from __future__ import annotations

import glob
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from tests.fault.harness import ROOT, SOAK, World
from tests.fault.oracle_app import effects
from tests.fault.results import record

SKEW = 300
KEYS = 200 if SOAK else 40
"""Keys per skewed client (perform_in) or in all (retries)."""
DELAY = 4.0
RETRY_DELAY = 4.0
JITTER = 2.0
POLL = 0.5  # the World's poll_interval
SLACK = 1.5
"""Seconds a promoted job may take to be fetched and performed on a loaded machine (2
cores, several suites: 0.2-1.2 s seen). Far below the delays themselves and the 300 s
skew, so a host-clock run-at still fails both ways: early (slow clock) or 300 s late."""
OBSERVE = 0.1
"""How late this test may see a retry-set entry (it polls every 20 ms)."""


def faketime_library() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
                   + glob.glob("/usr/lib/faketime/libfaketime.so.1"))
    if not found:
        pytest.fail("libfaketime is not installed (Debian: apt-get install libfaketime faketime); "
                    "scenario 14 runs processes with skewed clocks through it")
    return found[0]


def skewed(offset: int) -> dict[str, str]:
    """The environment of a process whose wall clock is ``offset`` s off."""
    return {"LD_PRELOAD": faketime_library(), "FAKETIME": f"{offset:+d}s",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def client_main() -> None:
    """A client process: reads one line ("go"), then ``Oracle.perform_in(DELAY, key)``
    for each key of ``FAULT_CLIENT_KEYS`` (``a-b``), then prints its own clock."""
    from reconcile.broker import get_broker
    from tests.fault.oracle_app import Oracle

    start, _, end = os.environ["FAULT_CLIENT_KEYS"].partition("-")
    keys = range(int(start), int(end) + 1)
    # connect before "go" (Redis, and PostgreSQL for the kill switch), so that the send
    # window is the enqueues alone
    get_broker().redis.ping()
    assert Oracle.enqueue_allowed()
    sys.stdin.readline()
    for key in keys:
        assert Oracle.perform_in(float(os.environ["FAULT_CLIENT_DELAY"]), key) is not None
    print(f"sent {time.time()!r}", flush=True)


def start_client(world: World, offset: int, keys: range) -> subprocess.Popen[bytes]:
    env = world.env("fault-client", FAULT_CLIENT_KEYS=f"{keys.start}-{keys.stop - 1}",
                    FAULT_CLIENT_DELAY=DELAY, **skewed(offset))
    return subprocess.Popen(
        [sys.executable, "-c", "from tests.fault.test_s14_clock_skew import client_main; client_main()"],
        cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def effect_times(world: World) -> dict[int, float]:
    """key -> epoch seconds of its (first) effect row, on PostgreSQL's clock."""
    with world.engine.connect() as c:
        rows = c.execute(sa.select(effects.c.key, sa.func.min(effects.c.at)).group_by(effects.c.key)).all()
    return {int(k): at.timestamp() for k, at in rows}


def spread(values: list[float]) -> str:
    return (f"min {min(values):+.2f} s, median {statistics.median(values):+.2f} s, "
            f"max {max(values):+.2f} s")


def test_perform_in_runs_on_time_whatever_the_clients_clock(world: World) -> None:
    fast_keys, slow_keys = range(1, KEYS + 1), range(KEYS + 1, 2 * KEYS + 1)
    world.seed(2 * KEYS)
    clients = {+SKEW: start_client(world, +SKEW, fast_keys), -SKEW: start_client(world, -SKEW, slow_keys)}
    # No scheduler here: a new scheduler's first pass after a Redis loss (a fresh Redis
    # is one) takes every lock over and would run the pending keys at once; the
    # workers alone promote scheduled jobs.
    workers = world.worker(concurrency=4, **skewed(+SKEW)), world.worker(concurrency=4, **skewed(-SKEW))
    world.wait_registered(*workers)
    sent: dict[int, tuple[float, float, float]] = {}  # offset -> (go, sent, the client's own clock)
    for offset, client in clients.items():
        go = time.time()
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(b"go\n")
        client.stdin.flush()
        line = client.stdout.readline().decode()
        if not line.startswith("sent "):
            client.wait(30)
            err = client.stderr.read().decode()[-3000:] if client.stderr else ""
            raise AssertionError(f"client {offset:+d} failed: {err}")
        sent[offset] = (go, time.time(), float(line.split()[1]))
        assert client.wait(30) == 0
    for offset, (_, done, own) in sent.items():
        # the skew is real: the client's own clock read off by the offset
        assert abs(own - done - offset) < 5, f"client {offset:+d} s is not skewed: {own - done:+.1f} s"
    world.wait(lambda: world.pending() == 0, DELAY + 30, "every scheduled key performed")
    ran = effect_times(world)
    lateness: dict[int, list[float]] = {}
    bound: dict[int, float] = {}
    for offset, keys in ((+SKEW, fast_keys), (-SKEW, slow_keys)):
        go, done, _ = sent[offset]
        lateness[offset] = [ran[k] - (go + DELAY) for k in keys]
        bound[offset] = POLL * 1.5 + (done - go) + SLACK
    f = world.figures()
    late = max(max(v) for v in lateness.values())
    record("14", f"clock skew: perform_in({DELAY:.0f} s) from clients {SKEW} s fast and {SKEW} s slow, "
           f"{2 * KEYS} keys, workers {SKEW} s fast and slow", f,
           heal=f"latest job {late:.2f} s after its due time", heal_seconds=late,
           target=f"no job early; each within poll interval x 1.5 + {SLACK:.1f} s of due",
           notes=f"lateness against the due time (the test's clock at send + {DELAY:.0f} s): fast client "
                 f"{spread(lateness[+SKEW])}, slow client {spread(lateness[-SKEW])}; send windows "
                 f"{sent[+SKEW][1] - sent[+SKEW][0]:.2f} s / {sent[-SKEW][1] - sent[-SKEW][0]:.2f} s; "
                 "skew by libfaketime",
           lateness_fast=lateness[+SKEW], lateness_slow=lateness[-SKEW])
    for offset, values in lateness.items():
        early = [round(v, 3) for v in values if v < 0]
        assert not early, f"client {offset:+d} s: jobs ran early by {early[:5]} s (a host-clock run-at)"
        assert max(values) <= bound[offset], f"client {offset:+d} s: jobs ran late: {spread(values)}"
    assert f.lost == 0
    assert f.dup_effects == 0
    assert set(f.per_key_performs.values()) == {1}, "every key performed exactly once"


def test_retries_and_pass_jitter_run_on_time_whatever_the_workers_clock(world: World) -> None:
    world.seed(KEYS)
    world.worker(concurrency=4, FAULT_FAIL_TIMES=1, FAULT_RETRY_IN=RETRY_DELAY, **skewed(+SKEW))
    world.worker(concurrency=4, FAULT_FAIL_TIMES=1, FAULT_RETRY_IN=RETRY_DELAY, **skewed(-SKEW))
    world.scheduler(FAULT_EVERY=1, FAULT_JITTER=JITTER, **skewed(+SKEW))
    keys = world.broker.keys
    seen: dict[int, tuple[float, float]] = {}  # key -> (seen in the retry set, the worker's failed_at)
    deadline = time.monotonic() + JITTER + RETRY_DELAY + 60
    while world.pending() > 0:
        assert time.monotonic() < deadline, f"retries did not settle: {world.pending()} keys pending"
        world.check_procs()
        now = time.time()
        for member in world.redis.zrange(keys.retry, 0, -1):
            p: dict[str, Any] = orjson.loads(member)
            key = int(p["args"][0])
            if key not in seen:
                seen[key] = (now, float(p["failed_at"]))
        time.sleep(0.02)
    ran = effect_times(world)
    assert len(seen) == KEYS, f"{KEYS - len(seen)} failures never sat in the retry set (retried at once?)"
    runs = world.runs()
    first_pass = runs[0]["started_at"].timestamp()
    first_pushed = runs[0]["finished_at"].timestamp()  # every key was pending: this pass pushed all
    lateness: dict[int, list[float]] = {+SKEW: [], -SKEW: []}
    for key, (at, failed_at) in seen.items():
        # which worker failed it: its (skewed) failed_at stamp says
        offset = +SKEW if failed_at - at > 0 else -SKEW
        assert abs(failed_at - at - offset) < 5, f"key {key}: failed_at {failed_at - at:+.1f} s off"
        lateness[offset].append(ran[key] - (at + RETRY_DELAY))
    first_seen = [at for at, _ in seen.values()]
    f = world.figures()
    late = max(max(v) for v in lateness.values() if v)
    fast, slow = (f"{spread(v)} ({len(v)} retries)" if v else "none"
                  for v in (lateness[+SKEW], lateness[-SKEW]))
    all_lateness = [x for v in lateness.values() for x in v]
    record("14b", f"clock skew: retries ({RETRY_DELAY:.0f} s) from workers {SKEW} s fast and {SKEW} s slow, "
           f"{KEYS} keys, enqueued by a scheduler {SKEW} s fast with a {JITTER:.0f} s jitter", f,
           heal=f"latest retry {late:.2f} s after its due time", heal_seconds=late,
           target=f"no retry early; each within poll interval x 1.5 + {SLACK:.1f} s of due",
           notes=f"retry lateness against the failure + {RETRY_DELAY:.0f} s: fast worker {fast}, "
                 f"slow worker {slow}; first attempts {min(first_seen) - first_pass:.2f}-"
                 f"{max(first_seen) - first_pass:.2f} s after the first pass started "
                 f"(jitter {JITTER:.0f} s); skew by libfaketime",
           lateness=all_lateness)
    assert all(lateness.values()), f"both skewed workers took failures: {[len(v) for v in lateness.values()]}"
    early = [round(v, 3) for v in all_lateness if v < -OBSERVE]
    assert not early, f"retries ran early by {early[:5]} s (a host-clock run-at)"
    assert late <= POLL * 1.5 + SLACK, f"retries ran late: {spread(all_lateness)}"
    # the pass's jitter is a window after the pass on Redis's clock, not 300 s later
    assert runs[0]["enqueued"] == KEYS
    spread_end = max(first_seen) - first_pushed
    assert spread_end <= JITTER + POLL * 1.5 + SLACK, f"jittered keys ran {spread_end:.2f} s after the pass"
    assert f.lost == 0
    assert f.dup_effects == 0
    assert set(f.per_key_performs.values()) == {2}, "one failure and one retry per key, no more"


def test_scenario_runs_skewed_processes_for_real() -> None:
    """The instrument itself: a process under :func:`skewed` reads a clock 300 s off,
    so the scenarios above can fail (they would pass trivially if the skew were lost)."""
    env = {**os.environ, **skewed(+SKEW)}
    out = subprocess.run([sys.executable, "-c", "import time; print(time.time())"], env=env,
                         capture_output=True, check=True, cwd=Path(ROOT))
    assert abs(float(out.stdout) - time.time() - SKEW) < 5
