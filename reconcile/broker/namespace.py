"""The namespace as a whole: flushing it, and the signals of a Redis loss (the epoch
sentinel, the incident claim, Redis's run id, replication ids and eviction counter)
that the scheduler watches."""

from __future__ import annotations

from .base import BrokerBase


class NamespaceOps(BrokerBase):
    def flush_namespace(self, batch: int = 1000, keep_epoch: bool = False) -> int:
        """Delete every key of this namespace (SCAN + UNLINK); returns how many.

        Keys of other namespaces or applications in the same database are untouched.
        ``keep_epoch`` leaves the epoch sentinel in place (``reconcile flush``, which
        makes every pass due itself): running schedulers then do not take the planned
        flush for a Redis loss. Without it (tests, simulated loss) it goes too.
        """
        deleted = 0
        chunk: list[bytes] = []
        epoch = self.keys.epoch.encode()
        for key in self.redis.scan_iter(match=self.keys.pattern, count=batch):
            if keep_epoch and key == epoch:
                continue
            chunk.append(key)
            if len(chunk) >= batch:
                deleted += int(self.redis.unlink(*chunk))
                chunk = []
        if chunk:
            deleted += int(self.redis.unlink(*chunk))
        return deleted

    def run_id(self) -> str:
        """Redis's ``run_id``: changes when the server restarts."""
        info = self.redis.info("server")
        return str(info.get("run_id", ""))

    def replication_ids(self) -> tuple[str, str]:
        """Redis's ``master_replid`` and ``master_replid2`` (INFO replication): a replica
        promoted to primary takes a new replication id and keeps its old primary's as
        ``master_replid2``, which tells a failover from a restart."""
        info = self.redis.info("replication")
        return str(info.get("master_replid", "")), str(info.get("master_replid2", ""))

    def evicted_keys(self) -> int:
        """Redis's ``evicted_keys`` counter (server-wide; reset by a restart)."""
        return int(self.redis.info("stats").get("evicted_keys", 0))

    def claim_incident(self, ttl_ms: int = 1000) -> bool:
        """True for the one caller that handles a Redis loss seen now (``SET NX PX``)."""
        return bool(self.redis.set(self.keys.incident, b"1", nx=True, px=ttl_ms))

    def release_incident(self) -> None:
        """Give the claim back when handling failed, so the loss is handled again."""
        self.redis.delete(self.keys.incident)

    def epoch(self) -> bytes | None:
        """The namespace's epoch sentinel, or None if Redis lost it."""
        return self.redis.get(self.keys.epoch)  # type: ignore[return-value]

    def set_epoch(self, value: str) -> bool:
        """Create the sentinel if absent; True if this call created it."""
        return bool(self.redis.set(self.keys.epoch, value, nx=True))
