"""The SQL of the cluster gauges (reconcile/store/gauges.py) and the collector that
serves them: reconcile lag by ``pending_since``, quarantine sizes, last good pass."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from reconcile import ReconciledJob
from reconcile.config import Settings
from reconcile.errors import ConfigError, PendingQueryError
from reconcile.observe.cluster import ClusterCollector
from reconcile.store import gauges, quarantine, runs, schedules

meta = sa.MetaData()
tickets = sa.Table(
    "gauge_tickets", meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("opened_at", sa.DateTime(timezone=False), nullable=False),  # naive, UTC
    sa.Column("closed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("title", sa.Text, nullable=False, server_default=""),
)


def pending() -> Select[Any]:
    return sa.select(tickets.c.id).where(tickets.c.closed.is_(False)).order_by(tickets.c.id)


@pytest.fixture
def db(engine: sa.Engine) -> sa.Engine:
    meta.create_all(engine)
    return engine


def test_lag_is_the_age_of_the_oldest_pending_key_read_as_utc_when_naive(db: sa.Engine) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    with db.begin() as conn:
        conn.execute(tickets.insert(), [
            {"id": 1, "opened_at": now - timedelta(seconds=900), "closed": True},  # done: not counted
            {"id": 2, "opened_at": now - timedelta(seconds=300), "closed": False},
            {"id": 3, "opened_at": now - timedelta(seconds=30), "closed": False},
        ])
    age = gauges.oldest_pending_age(db, pending(), "opened_at")
    assert age is not None and 299 <= age < 330, age


def test_lag_reads_a_column_the_query_selects_or_one_of_its_tables(db: sa.Engine) -> None:
    with db.begin() as conn:
        conn.execute(tickets.insert().values(id=1, opened_at=sa.func.timezone("UTC", sa.func.now())
                                             - sa.text("interval '60 seconds'")))
    selected = sa.select(tickets.c.id, tickets.c.opened_at.label("since")).where(tickets.c.closed.is_(False))
    by_label = gauges.oldest_pending_age(db, selected, "since")
    by_table = gauges.oldest_pending_age(db, pending(), "opened_at")
    assert by_label is not None and by_table is not None and 59 <= by_label < 90 and 59 <= by_table < 90


def test_nothing_pending_is_no_lag_and_a_wrong_column_is_named(db: sa.Engine) -> None:
    assert gauges.oldest_pending_age(db, pending(), "opened_at") is None
    with pytest.raises(PendingQueryError, match=r"'openedat' is not a column .*opened_at"):
        gauges.oldest_pending_age(db, pending(), "openedat")
    with db.begin() as conn:
        conn.execute(tickets.insert().values(id=1, opened_at=datetime(2020, 1, 1)))
    with pytest.raises(PendingQueryError, match="not a timestamp column"):
        gauges.oldest_pending_age(db, pending(), "title")


def test_the_lag_query_reads_one_index_entry_when_the_index_exists(db: sa.Engine) -> None:
    with db.begin() as conn:
        # pending()'s condition as it compiles (closed IS false): the planner matches a
        # partial index by its predicate's text, and NOT closed is another predicate
        conn.execute(sa.text("CREATE INDEX ON gauge_tickets (opened_at) WHERE closed IS false"))
        conn.execute(sa.text("INSERT INTO gauge_tickets (id, opened_at, closed) SELECT g, "
                             "now() - g * interval '1 second', g % 10 <> 0 FROM generate_series(1, 20000) g"))
        conn.execute(sa.text("ANALYZE gauge_tickets"))
    sub = gauges.since_column(pending(), "opened_at").order_by(None).subquery("pending")
    since = sub.c[gauges.SINCE_LABEL]
    q = sa.select(since).where(since.is_not(None)).order_by(since).limit(1)
    with db.connect() as conn:
        plan = "\n".join(r[0] for r in conn.execute(sa.text(
            "EXPLAIN " + str(q.compile(db, compile_kwargs={"literal_binds": True})))))
    assert "Index" in plan and "Limit" in plan and "Sort" not in plan, plan


def test_quarantine_counts_and_last_good_pass_per_class(db: sa.Engine) -> None:
    quarantine.add(db, "a.Ship", [1], reason="died")
    quarantine.add(db, "a.Ship", [2], reason="died")
    quarantine.add(db, "b.Bill", [7], reason="died")
    assert gauges.quarantine_counts(db) == {"a.Ship": 2, "b.Bill": 1}
    schedules.ensure(db, [schedules.ScheduleSpec(name=n, kind="pass", spec="every 60s",
                                                 first_run_at=lambda now: now) for n in ("a.Ship", "b.Bill")])
    good = runs.start_run(db, "a.Ship", "tick", "s1")
    runs.finish_run(db, good)
    failed = runs.start_run(db, "a.Ship", "tick", "s1")  # later, failed: not a good pass
    runs.finish_run(db, failed, error="boom")
    bad_only = runs.start_run(db, "b.Bill", "tick", "s1")
    runs.finish_run(db, bad_only, error="boom")
    last = gauges.last_pass_times(db)
    [row] = [r for r in runs.recent_runs(db, "a.Ship") if r.id == good]
    assert set(last) == {"a.Ship"} and last["a.Ship"] == pytest.approx(row.finished_at.timestamp(), abs=0.01)


class LaggingTicket(ReconciledJob):
    name = "gauges.LaggingTicket"
    every = 3600
    pending_since = "opened_at"

    def pending(self) -> Select[Any]:
        return pending()

    def perform(self, session: Session, ticket_id: int) -> None:  # type: ignore[override]
        pass


class WrongColumn(LaggingTicket):
    name = "gauges.WrongColumn"
    pending_since = "nope"


def test_the_collector_serves_lag_and_leaves_a_failing_class_out(
    pg_settings: Settings, db: sa.Engine
) -> None:
    with db.begin() as conn:
        conn.execute(tickets.insert().values(id=1, opened_at=sa.func.timezone("UTC", sa.func.now())
                                             - sa.text("interval '120 seconds'")))
    registry = CollectorRegistry()
    registry.register(ClusterCollector(pg_settings, lambda: [LaggingTicket, WrongColumn]))
    text = generate_latest(registry).decode()
    [line] = [x for x in text.splitlines() if x.startswith("reconcile_lag_seconds{")]
    assert 'class="gauges.LaggingTicket"' in line and 119 <= float(line.split()[-1]) < 150
    assert 'reconcile_lag_seconds{class="gauges.WrongColumn"}' not in text
    assert 'reconcile_pass_interval_seconds{class="gauges.WrongColumn"} 3600.0' in text
    assert 'reconcile_metrics_source_up{source="postgresql"} 1.0' in text


def test_pending_since_must_name_a_column() -> None:
    with pytest.raises(ConfigError, match="pending_since"):
        type("BadSince", (LaggingTicket,), {"name": "gauges.BadSince", "pending_since": 5})
