"""Jobs for the structured-log test: one logs through the application's own logger,
one fails for good (its ERROR line carries the traceback)."""

from __future__ import annotations

import logging

from reconcile import Job

app_log = logging.getLogger("app.mail")


class SendMail(Job):
    queue = "jsonlog"

    def perform(self, to: str) -> None:
        app_log.info("sending to %s", to)


class AlwaysFails(Job):
    queue = "jsonlog"
    retry = 0

    def perform(self, n: int) -> None:
        raise RuntimeError(f"broken {n}\nforged line")
