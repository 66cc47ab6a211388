"""A streaming-replication standby of a private :class:`~tests.fault.servers.PgCluster`.

:func:`start_standby` takes a base backup of the primary with ``pg_basebackup -R``
(which writes ``standby.signal`` and ``primary_conninfo``) into a cluster of its own on
a free port, starts it and waits until it accepts connections. ``initdb -A trust``
already allows replication connections from 127.0.0.1, and ``wal_level`` is
``replica`` by default, so the primary needs no change.
"""

from __future__ import annotations

from tests.fault.servers import PgCluster, _deadline_loop, _pg_bin


def start_standby(primary: PgCluster) -> PgCluster:
    """A running standby streaming from ``primary`` (destroy it when done)."""
    standby = PgCluster()
    standby._run(_pg_bin("pg_basebackup"), "-D", str(standby.data), "-R", "-X", "stream",
                 "-h", "127.0.0.1", "-p", str(primary.port), "-U", primary.user, "--no-sync")
    standby.start()
    standby.wait_ready()
    return standby


def wait_caught_up(primary: PgCluster, standby: PgCluster, timeout: float = 30) -> None:
    """Wait until ``standby`` has replayed everything ``primary`` has written so far."""
    with primary.connect() as c:
        target = c.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
    for _ in _deadline_loop(timeout, "the standby to replay the primary's WAL", 0.02):
        with standby.connect() as c:
            row = c.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [target]).fetchone()
        if row and row[0]:
            return


def set_replay_paused(standby: PgCluster, paused: bool) -> None:
    """Pause or resume WAL replay on ``standby`` (it keeps receiving), so that it lags."""
    with standby.connect() as c:
        c.execute("SELECT pg_wal_replay_pause()" if paused else "SELECT pg_wal_replay_resume()")
        if paused:
            for _ in _deadline_loop(10, "replay to pause", 0.02):
                state = c.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()
                if state and state[0] == "paused":
                    return


