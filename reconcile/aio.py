"""``async def perform``: coroutines of plain jobs, run on one event loop per process.

The worker's executor threads run jobs; a job whose ``perform`` is a coroutine
function hands its coroutine to this process's event loop (a daemon thread, started
on the first async job) and waits for it. So:

* ``concurrency`` bounds async and sync jobs alike: each running job holds one
  executor thread, which waits without using the CPU. Raise ``-c`` for many slow
  async jobs (a waiting thread costs memory, not CPU);
* the async jobs of a process share one loop, so their awaits overlap; a job that
  blocks (CPU-bound code, a blocking call) blocks the others, as in any asyncio
  program;
* a job given up by the worker's watchdog (``timeout``) is cancelled in the loop
  (``CancelledError`` inside the coroutine) and its thread is freed at once, unlike
  a sync job, which Python cannot stop;
* loop-bound resources (an ``asyncpg`` pool, an ``httpx.AsyncClient``) must be made
  inside the loop that uses them: create them lazily in the job, not at import.

The test modes (:mod:`reconcile.testing`) run async performs the same way; an async
job that an async job enqueues in inline mode runs on a loop of its own in a helper
thread (the process loop cannot wait for itself). After ``fork()``, the child starts
its own loop on first use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def loop() -> asyncio.AbstractEventLoop:
    """This process's event loop for async jobs (started on first use)."""
    global _loop
    current = _loop
    if current is not None:
        return current
    with _lock:
        if _loop is None:
            new = asyncio.new_event_loop()
            threading.Thread(target=new.run_forever, name="reconcile-asyncio", daemon=True).start()
            _loop = new
        return _loop


def submit(coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
    """Schedule ``coro`` on the process loop; its future, which ``cancel()`` cancels
    in the loop. The coroutine runs with a copy of the caller's context variables
    (``call_soon_threadsafe`` copies the calling thread's context, and the task starts
    from it), so the running job's :data:`reconcile.logs.job_context` reaches the log
    calls of an async ``perform`` (tests/integration/test_banner_and_job_lines.py)."""
    return asyncio.run_coroutine_threadsafe(coro, loop())


def run(coro: Coroutine[Any, Any, Any], owner: Any = None) -> Any:
    """Run ``coro`` on the process loop and wait for its result (its exception is
    raised here). ``owner`` (the job) keeps the future as ``_future`` while it runs,
    so that the watchdog can cancel it."""
    if _in_loop_thread():
        # an async job run from inside another (inline test mode: one job's enqueue
        # runs the next at once): the loop cannot wait for itself, so this one gets
        # a loop of its own in a helper thread, and the caller blocks as inline does
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="reconcile-inline") as pool:
            return pool.submit(asyncio.run, coro).result()
    future = submit(coro)
    if owner is not None:
        owner._future = future
    try:
        return future.result()
    finally:
        if owner is not None:
            owner._future = None


def _in_loop_thread() -> bool:
    current = _loop
    if current is None:
        return False
    try:
        return asyncio.get_running_loop() is current
    except RuntimeError:
        return False


def _after_fork_in_child() -> None:
    global _loop, _lock
    # the loop's thread did not survive the fork: the child makes its own on first use
    _loop = None
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
