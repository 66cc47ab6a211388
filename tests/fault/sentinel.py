"""A private Redis Sentinel group for tests: one primary, one replica, three Sentinels.

Every process is a private ``redis-server`` on a free port (:class:`~tests.fault.servers.RedisServer`
for the data nodes, ``--save "" --appendonly no``; ``redis-server <conf> --sentinel``
for the Sentinels), so only this object ever kills or fails them over. The Sentinels
take a primary for down after ``down_after_ms`` (default 1000) and need 2 of 3 to agree.

* :meth:`SentinelGroup.url` -- the ``redis+sentinel://`` URL of the group;
* :meth:`SentinelGroup.failover` -- ``SENTINEL FAILOVER`` (a planned promotion);
* :meth:`SentinelGroup.kill_primary` -- SIGKILL of the primary's process;
* :meth:`SentinelGroup.wait_promoted` -- until the Sentinels name another primary and it
  answers as one.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import redis

from tests.fault.servers import RedisServer, _deadline_loop, free_port, spawn_redis

SERVICE = "faultmaster"
REPL = ("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")


class SentinelNode:
    """One ``redis-server --sentinel`` process."""

    def __init__(self, folder: Path, primary_port: int, down_after_ms: int, failover_timeout_ms: int) -> None:
        self.folder = folder
        self.port = free_port()
        self.primary_port = primary_port
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.proc: subprocess.Popen[bytes] | None = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, decode_responses=True)

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\n"
            f"dir {self.folder}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n")
        self.proc = spawn_redis(["redis-server", str(conf), "--sentinel"], self.folder / "sentinel.log",
                                f"redis sentinel on port {self.port}", self.client())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


class SentinelGroup:
    """1 primary, 1 replica, 3 Sentinels, in ``folder``; :meth:`stop` ends them all."""

    def __init__(self, folder: Path, down_after_ms: int = 1000, failover_timeout_ms: int = 5000) -> None:
        self.folder = folder
        self.nodes = [RedisServer(folder / "node0", extra=REPL)]
        self.nodes.append(RedisServer(folder / "node1", extra=(
            *REPL, "--replicaof", "127.0.0.1", str(self.nodes[0].port))))
        self.sentinels = [SentinelNode(folder / f"sentinel{i}", self.nodes[0].port, down_after_ms,
                                       failover_timeout_ms) for i in range(3)]

    def url(self, db: int = 0, **query: str) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return f"redis+sentinel://{hosts}/{SERVICE}/{db}" + (f"?{q}" if q else "")

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        self.wait_replica_synced(self.nodes[0], self.nodes[1])
        for s in self.sentinels:
            s.start()
        # ready: every Sentinel sees the replica and the two other Sentinels
        for s in self.sentinels:
            c = s.client()
            state: dict[str, object] = {}
            try:
                for _ in _deadline_loop(60, f"sentinel {s.port} to see the group", 0.05):
                    state = c.sentinel_master(SERVICE)
                    if int(state["num-slaves"]) >= 1 and int(state["num-other-sentinels"]) >= 2:  # type: ignore[call-overload]
                        break
            except RuntimeError as exc:
                log = (s.folder / "sentinel.log").read_text()[-1500:]
                raise RuntimeError(f"{exc}: {state}; log: {log}") from None
            finally:
                c.close()

    def wait_replica_synced(self, primary: RedisServer, replica: RedisServer, timeout: float = 30) -> None:
        c = replica.client()
        for _ in _deadline_loop(timeout, f"replica {replica.port} to sync from {primary.port}", 0.02):
            info = c.info("replication")
            if info.get("master_link_status") == "up" and int(info.get("master_port", 0)) == primary.port:
                break
        c.close()

    def primary_port(self) -> int:
        """The port the Sentinels name as the primary's now (the first that answers)."""
        for s in self.sentinels:
            try:
                c = s.client()
                addr = c.sentinel_get_master_addr_by_name(SERVICE)
                c.close()
                return int(addr[1])
            except redis.ConnectionError:
                continue
        raise RuntimeError("no sentinel answered")

    def primary_port_of_nodes(self) -> int:
        """The port of the node that answers ``role: master`` (asks the nodes, not the
        Sentinels: for when they are down)."""
        for node in self.nodes:
            try:
                if node.client().info("replication").get("role") == "master":
                    return node.port
            except redis.ConnectionError:
                continue
        raise RuntimeError("no node answers as the primary")

    def primary(self) -> RedisServer:
        port = self.primary_port()
        return next(n for n in self.nodes if n.port == port)

    def replica(self) -> RedisServer:
        port = self.primary_port()
        return next(n for n in self.nodes if n.port != port)

    def failover(self) -> None:
        """``SENTINEL FAILOVER``: promote the replica (the old primary is demoted later,
        when the Sentinels reconfigure it)."""
        c = self.sentinels[0].client()
        c.execute_command("SENTINEL", "FAILOVER", SERVICE)
        c.close()

    def kill_primary(self) -> RedisServer:
        """SIGKILL the primary's process; returns it (:meth:`restart_as_replica` brings
        it back)."""
        node = self.primary()
        node.kill()
        return node

    def restart_as_replica(self, node: RedisServer, primary: RedisServer) -> None:
        """Start a killed ``node`` again (empty: no persistence) as a replica of
        ``primary``, and wait until it has synced. Never start such a node empty as a
        primary: the Sentinels still list it as a replica and may elect it in the next
        failover, and every replica would then resync to its empty data set (seen under
        load: a spurious second failover 2 s after the first elected it)."""
        node.extra = (*REPL, "--replicaof", "127.0.0.1", str(primary.port))
        node.start()
        self.wait_replica_synced(primary, node)

    def wait_promoted(self, old_port: int, timeout: float = 30) -> RedisServer:
        """Until every Sentinel names a primary other than ``old_port`` and it answers
        ``role: master``; returns it."""
        for _ in _deadline_loop(timeout, f"a primary other than port {old_port}", 0.02):
            ports = set()
            for s in self.sentinels:
                try:
                    c = s.client()
                    ports.add(int(c.sentinel_get_master_addr_by_name(SERVICE)[1]))
                    c.close()
                except redis.ConnectionError:
                    ports.add(-1)
            if len(ports) == 1 and old_port not in ports and -1 not in ports:
                node = next(n for n in self.nodes if n.port in ports)
                try:
                    if node.client().info("replication").get("role") == "master":
                        return node
                except redis.ConnectionError:
                    pass
        raise AssertionError("unreachable")

    def failovers(self) -> int:
        """Failovers so far (``+switch-master`` events in the first Sentinel's log)."""
        return (self.sentinels[0].folder / "sentinel.log").read_text().count("+switch-master")

    def wait_settled(self, timeout: float = 40) -> RedisServer:
        """Until every Sentinel names one primary and every other node is its synced
        replica; returns the primary. (A loaded machine may see a second failover right
        after the first: this waits for whichever primary the group settles on.)"""
        for _ in _deadline_loop(timeout, "the Sentinel group to settle", 0.05):
            try:
                ports = {int(s.client().sentinel_get_master_addr_by_name(SERVICE)[1]) for s in self.sentinels}
                if len(ports) != 1:
                    continue
                (port,) = ports
                primary = next(n for n in self.nodes if n.port == port)
                if primary.client().info("replication").get("role") != "master":
                    continue
                if all(n.client().info("replication").get("master_link_status") == "up"
                       and int(n.client().info("replication").get("master_port", 0)) == port
                       for n in self.nodes if n is not primary):
                    return primary
            except (redis.ConnectionError, StopIteration):
                continue
        raise AssertionError("unreachable")

    def wait_demoted(self, node: RedisServer, timeout: float = 30) -> None:
        """Until ``node`` answers as a replica (the Sentinels reconfigured it)."""
        c = node.client()
        for _ in _deadline_loop(timeout, f"port {node.port} to become a replica", 0.05):
            try:
                if c.info("replication").get("role") == "slave":
                    break
            except redis.ConnectionError:
                pass
        c.close()

    def stop(self) -> None:
        for s in self.sentinels:
            s.stop()
        for node in self.nodes:
            node.stop()
