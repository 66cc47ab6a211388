"""Scheduling: promotion and reaping in workers (``poller``), reconcile passes and cron ticks."""
