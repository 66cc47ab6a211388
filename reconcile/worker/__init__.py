"""Worker side: the process and its threads (``process`` and one module per thread
role, see its docstring), one job (``executor``), failures (``retry``), promotion and
reaping (``maintenance``), and the test signals (``testsignals``)."""

from .process import Worker
from .queues import QueueSpec, parse_queue
from .retry import death_handlers, default_delay
from .testsignals import TestSignal, WorkerSignals

__all__ = ["QueueSpec", "TestSignal", "Worker", "WorkerSignals", "death_handlers",
           "default_delay", "parse_queue"]
