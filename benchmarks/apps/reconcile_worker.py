"""The benchmark's reconcile settings, and a fallback worker runner.

``settings_for`` is what the driver enqueues with. ``main`` runs one worker exactly
like ``reconcile worker --app benchmarks.jobs -q default -c 10``; the benchmark uses
it only if the installed reconcile has no ``worker`` command.
"""

from __future__ import annotations

import argparse
import logging

from reconcile.config import Settings, load_settings, use_settings
from reconcile.worker import QueueSpec, Worker

from .. import jobs  # noqa: F401  (registers the job classes)
from ..common import DBS, url


def settings_for(concurrency: int = 10, prefetch: int = 0, database_url: str | None = None,
                 db: int = DBS["reconcile"]) -> Settings:
    """Settings on the harness's Redis (``BENCH_REDIS``), database ``db``."""
    return load_settings(
        {"redis_url": url(db), "namespace": "bench", "concurrency": concurrency,
         "prefetch": prefetch, "log_level": "WARNING", "database_url": database_url},
        env={}, pyproject=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-c", "--concurrency", type=int, default=10)
    parser.add_argument("--prefetch", type=int, default=0, help="0: equal to concurrency")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = settings_for(args.concurrency, args.prefetch)
    use_settings(settings)
    Worker(settings, [QueueSpec("default")]).run()


if __name__ == "__main__":
    main()
