"""Worker side: fetch loop and threads (``process``), one job (``executor``), failures (``retry``)."""

from .process import Worker
from .queues import QueueSpec, parse_queue
from .retry import death_handlers, default_delay

__all__ = ["QueueSpec", "Worker", "death_handlers", "default_delay", "parse_queue"]
