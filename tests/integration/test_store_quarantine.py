"""Quarantine: keys a pass must skip until an operator releases them.

Keys are JSON arrays of JSON-native values; they come back as tuples.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from reconcile.store import quarantine
from reconcile.store.tables import quarantine as quarantine_table


def test_quarantined_keys_come_back_as_tuples_per_job(engine: Engine) -> None:
    quarantine.add(engine, "SendInvoice", [42], "retries_exhausted", "SMTPError", "refused")
    quarantine.add(engine, "Sync", [7, "eu"], "poison_pill")

    assert quarantine.keys(engine, "SendInvoice") == {(42,)}
    assert quarantine.keys(engine, "Sync") == {(7, "eu")}
    assert quarantine.keys(engine, "Other") == set()


def test_the_latest_failure_wins(engine: Engine) -> None:
    quarantine.add(engine, "J", [1], "retries_exhausted", "KeyError", "first",
                   payload={"jid": "a"})
    [first] = quarantine.list_entries(engine)

    quarantine.add(engine, "J", [1], "poison_pill", "WorkerCrashed", "second")

    [entry] = quarantine.list_entries(engine)
    assert (entry.job, entry.key, entry.reason) == ("J", (1,), "poison_pill")
    assert (entry.error_class, entry.error_message) == ("WorkerCrashed", "second")
    assert entry.payload is None
    assert entry.quarantined_at >= first.quarantined_at


def test_the_payload_is_kept_and_a_missing_one_is_sql_null(engine: Engine) -> None:
    quarantine.add(engine, "J", [1], "r", payload={"jid": "abc", "args": [1], "retry_count": 25})
    quarantine.add(engine, "J", [2], "r")

    entries = {e.key: e for e in quarantine.list_entries(engine, "J")}
    assert entries[(1,)].payload == {"jid": "abc", "args": [1], "retry_count": 25}
    with engine.connect() as conn:
        nulls = conn.execute(
            sa.select(sa.func.count()).where(quarantine_table.c.payload.is_(None))
        ).scalar_one()
    assert nulls == 1


def test_list_entries_filters_by_job(engine: Engine) -> None:
    quarantine.add(engine, "A", [1], "r")
    quarantine.add(engine, "B", [1], "r")

    assert {e.job for e in quarantine.list_entries(engine)} == {"A", "B"}
    assert [e.job for e in quarantine.list_entries(engine, "B")] == ["B"]


def test_release_frees_only_the_given_keys(engine: Engine) -> None:
    for key in ([1], [2], [3]):
        quarantine.add(engine, "A", key, "r")
    quarantine.add(engine, "B", [1], "r")

    assert quarantine.release(engine, "A", [[1], (3,), [99]]) == 2

    assert quarantine.keys(engine, "A") == {(2,)}
    assert quarantine.keys(engine, "B") == {(1,)}
    assert quarantine.release(engine, "A", []) == 0


def test_composite_keys_match_value_for_value(engine: Engine) -> None:
    quarantine.add(engine, "Sync", [7, "eu"], "r")

    assert quarantine.release(engine, "Sync", [[7, "us"], ["7", "eu"]]) == 0
    assert quarantine.release(engine, "Sync", [(7, "eu")]) == 1


def test_release_all_per_job_or_everything(engine: Engine) -> None:
    quarantine.add(engine, "A", [1], "r")
    quarantine.add(engine, "A", [2], "r")
    quarantine.add(engine, "B", [1], "r")

    assert quarantine.release_all(engine, "A") == 2
    assert quarantine.keys(engine, "B") == {(1,)}
    assert quarantine.release_all(engine) == 1
    assert quarantine.list_entries(engine) == []


def test_is_quarantined_reads_in_the_callers_transaction(engine: Engine) -> None:
    with engine.connect() as conn:
        assert quarantine.is_quarantined(conn, "A", [1]) is False
        quarantine.add(conn, "A", [1], "r")
        assert quarantine.is_quarantined(conn, "A", [1]) is True
        assert quarantine.is_quarantined(conn, "A", [2]) is False
        assert quarantine.is_quarantined(conn, "B", [1]) is False
        conn.rollback()

    with engine.connect() as conn:
        assert quarantine.is_quarantined(conn, "A", [1]) is False
