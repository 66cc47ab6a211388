"""Plain jobs used by the scheduler and kill-switch tests."""

from __future__ import annotations

from reconcile import Job

ran: list[str] = []


class Nightly(Job):
    cron = "0 3 * * *"
    tz = "Europe/Paris"
    queue = "periodic"
    cron_args = ("report",)

    def perform(self, kind: str) -> None:
        ran.append(kind)


class Mailer(Job):
    queue = "plain"

    def perform(self, to: str) -> None:
        ran.append(to)
