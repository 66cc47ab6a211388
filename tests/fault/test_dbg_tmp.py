import time
from reconcile import config
from tests.fault.harness import World
from tests.fault.oracle_app import Oracle

def test_dbg(make_world) -> None:
    world = make_world(maxmemory="3mb", policy="allkeys-lru")
    world.seed(20000)
    world.scheduler(FAULT_EVERY=2)
    t0 = time.monotonic()
    for _ in range(2):
        world.worker(concurrency=6)
    try:
        world.wait(lambda: world.pending() == 0, 200, "every key done")
    finally:
        print("took", time.monotonic() - t0, "evicted", world.redis.info("stats")["evicted_keys"])
        for r in world.runs()[-8:]:
            print(r["trigger"], r["started_at"].time(), r["found"], r["enqueued"], r["already_queued"], r["error"])
        for p in world.procs:
            print(p.kind, p.tail(1500))
        print(world.figures())
