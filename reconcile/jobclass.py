"""``JobClass``: what the enqueue side needs of a job class, as a Protocol.

The client (:mod:`reconcile.client`), :mod:`reconcile.after_commit` and the
test-mode interceptors take a job *class* and read its name, options, parameters and
identities; :class:`~reconcile.job.Job` subclasses are such classes, but those modules
do not need ``Job`` itself. Typing them against this Protocol, in a module that
imports nothing of reconcile's, keeps the import graph one-way: ``job`` imports
``client`` and ``after_commit``, never the reverse, so every import is at the top of
its module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

Arity = tuple[int, int, str]
"""(fewest, most) positional arguments of ``perform`` after the injected ones, and its
parameters as text (:data:`reconcile.payload.Arity`, spelled out here so that this
module imports nothing of reconcile's)."""


class JobClass(Protocol):
    """A job class as the enqueue side uses it (the class object itself implements it:
    its members are class attributes and classmethods of :class:`~reconcile.job.Job`)."""

    @property
    def job_name(self) -> str:
        """The registry name payloads carry."""
        ...

    @property
    def keyed(self) -> bool:
        """Whether arguments are a key with a canonical form (ReconciledJob)."""
        ...

    def options(self) -> dict[str, Any]:
        """The class's enqueue options: ``queue``, ``retry``, ``unique_for``, ``unique_until``."""
        ...

    def arg_names(self) -> list[str]:
        """Parameter names of ``perform`` (for error messages)."""
        ...

    def arity(self) -> Arity:
        """See :meth:`reconcile.job.Job.arity`."""
        ...

    def canonical_args(self, args: Sequence[Any]) -> list[Any]:
        """The one form of ``args`` identities are computed from."""
        ...

    def enqueue_allowed(self) -> bool:
        """False makes every job of an enqueue call return None (a kill switch)."""
        ...

    def lock_digest(self, queue: str, args: list[Any]) -> str:
        """The uniqueness identity of one enqueue (:mod:`reconcile.identity`)."""
        ...

    def pass_lock_name(self) -> str:
        """The class whose pass-lock set a key of this class may be in ("" for none)."""
        ...
