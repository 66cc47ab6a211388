import time
from .harness import World

def test_throughput(world: World) -> None:
    world.seed(5000)
    s = world.scheduler(FAULT_EVERY=2)
    ws = [world.worker(concurrency=8) for _ in range(2)]
    t0 = time.monotonic()
    world.wait(lambda: world.pending() == 0, 120, "all done")
    dt = time.monotonic() - t0
    f = world.figures()
    print("\nTHROUGHPUT", 5000 / dt, dt, f)
    assert f.lost == 0
