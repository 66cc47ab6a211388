"""Fault-injection suite (issue 4): real processes, private servers, an oracle, figures.

Run it and write ``docs/reliability.md`` with ``python -m tests.fault.report``.
"""
