"""reconcile against dramatiq, huey, rq, arq, celery and saq (docs/benchmarks.md)."""
