"""``python -m reconcile`` is the ``reconcile`` command."""

from .cli import run

run()
