"""reconcile's benchmarks against dramatiq, huey, rq, arq, celery and saq (see docs/benchmarks.md)."""
