"""Every Redis key name reconcile uses. No other Python module builds a key; the Lua
scripts in ``lua/`` build the same names from the ``{namespace}`` prefix of the real
key they receive as KEYS[1] (:attr:`Keys.script_key`), each documenting the keys it
touches in its header.

All keys start with the hash tag ``{namespace}`` so that every key one Lua call
touches lives in one Redis Cluster slot. The layout is documented in
``docs/redis-layout.md`` and in the header of each script in ``broker/lua/``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key names for one namespace."""

    namespace: str

    @property
    def tag(self) -> str:
        """``{ns}``: the hash tag every key starts with (no key by itself)."""
        return "{" + self.namespace + "}"

    @property
    def script_key(self) -> str:
        """KEYS[1] of every Lua script: ``{ns}:queues``, a real key of the namespace's
        slot, so that ACL key patterns (``~{ns}:*``) and Redis Cluster routing apply to
        it (the bare tag ``{ns}`` is no key and matches no such pattern). The scripts
        strip its ``:queues`` suffix to build the other keys."""
        return self.queues

    @property
    def pattern(self) -> str:
        """SCAN pattern matching every key of the namespace (braces escaped for glob)."""
        return "\\{" + self.namespace + "\\}:*"

    def queue(self, name: str) -> str:
        return f"{self.tag}:queue:{name}"

    def wake(self, name: str) -> str:
        return f"{self.tag}:wake:{name}"

    @property
    def queues(self) -> str:
        return f"{self.tag}:queues"

    @property
    def schedule(self) -> str:
        return f"{self.tag}:schedule"

    @property
    def retry(self) -> str:
        return f"{self.tag}:retry"

    @property
    def dead(self) -> str:
        return f"{self.tag}:dead"

    @property
    def procs(self) -> str:
        return f"{self.tag}:procs"

    @property
    def beats(self) -> str:
        """Registered processes scored by when their heartbeat lapses (Redis server
        time, ms): the reaper reads only the lapsed head of it (reap.lua)."""
        return f"{self.tag}:beats"

    @property
    def reaper(self) -> str:
        """The fleet-wide reaper's turn (``SET NX PX``, holds the taker's id): one
        process reaps per interval, whatever the fleet's size."""
        return f"{self.tag}:reaper"

    def proc(self, proc_id: str) -> str:
        return f"{self.tag}:proc:{proc_id}"

    def alive(self, proc_id: str) -> str:
        return f"{self.tag}:alive:{proc_id}"

    def lease(self, proc_id: str) -> str:
        return f"{self.tag}:lease:{proc_id}"

    def claim(self, proc_id: str) -> str:
        """Jobs an idle single-queue process moved out of its queue with BLMOVE and has
        not yet adopted into its lease hash (reaped and released like leases)."""
        return f"{self.tag}:claim:{proc_id}"

    def unique(self, digest: str) -> str:
        return f"{self.tag}:unique:{digest}"

    @property
    def jobs(self) -> str:
        """The jid index: jid -> where the job is (its member, ``D<score>`` once dead,
        ``L...`` while leased); the format is in ``lua/prelude.lua``. Plain jobs from
        their enqueue, every job while leased, retried or dead; a ReconciledJob that
        waits after a pass is not in it (it is found by its key)."""
        return f"{self.tag}:jobs"

    def plocks(self, job: str) -> str:
        """Pass locks of class ``job``, the current generation (SET of the keys' args
        JSON; see ``pass_enqueue.lua``)."""
        return f"{self.tag}:plocks:{job}"

    def plocks_prev(self, job: str) -> str:
        """Pass locks of class ``job``, the previous generation (still held)."""
        return f"{self.tag}:plocks_prev:{job}"

    def plocks_gen(self, job: str) -> str:
        """Exists (PX half of ``unique_for``) while the current generation of
        ``job``'s pass locks is too young to be turned."""
        return f"{self.tag}:plocks_gen:{job}"

    def recoveries(self, jid: str) -> str:
        """How often a job was recovered from crashed workers (written by reap.lua)."""
        return f"{self.tag}:recov:{jid}"

    def stat(self, name: str) -> str:
        return f"{self.tag}:stat:{name}"

    @property
    def switches(self) -> str:
        """Mirror of disabled job classes (name -> reason); PostgreSQL is the truth."""
        return f"{self.tag}:switches"

    @property
    def schedulers(self) -> str:
        """Every scheduler seen in the last day: owner id -> its last beat (JSON), so
        ``reconcile status`` shows the dead ones too (written by the schedulers)."""
        return f"{self.tag}:schedulers"

    def scheduler_alive(self, owner: str) -> str:
        """Exists while scheduler ``owner`` beats (``SCHEDULER_TTL``)."""
        return f"{self.tag}:sched_alive:{owner}"

    @property
    def incident(self) -> str:
        """Held briefly by the scheduler handling a Redis loss, so that schedulers seeing
        the same loss at once do not each trigger every pass."""
        return f"{self.tag}:incident"

    @property
    def epoch(self) -> str:
        """Sentinel whose disappearance means Redis lost our data."""
        return f"{self.tag}:epoch"
