"""Scheduling: reconcile passes (``passes``), cron ticks (``cron``) and the scheduler
process (``service``). Promotion and reaping run in workers (``reconcile.worker.maintenance``;
``poller`` re-exports it)."""
