"""The web dashboard: queues, sets, processes, dead jobs, quarantine and passes.

``Dashboard`` is a WSGI application (mount it behind your own authentication);
``reconcile web`` serves it alone. See ``docs/web.md``.
"""

from .app import Dashboard, serve

__all__ = ["Dashboard", "serve"]
