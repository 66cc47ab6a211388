"""Identities of a job, in one place: what dedupes, locks and names one piece of work.

Every identity is a hash of JSON (orjson), so it must be computed from one form of the
arguments: for a ReconciledJob the key's canonical (wire) form, :mod:`reconcile.keys`
(enqueue canonicalises before any identity is made of a key).

* :func:`unique_digest`: the uniqueness lock of an enqueue, ``{ns}:unique:<digest>``;
  (class, queue, args) for a plain job;
* :func:`key_digest`: a ReconciledJob's uniqueness lock, (class, key) whatever the
  queue, so that a key is queued once however it was enqueued;
* :func:`idempotency_key`: stable for (class, key), for external APIs.

Twins kept elsewhere, each checked against these by tests: the reconcile pass's fast
digest (``scheduler/passes.py``, which hashes the shared prefix of
:func:`key_digest`'s input once per page) and the advisory-lock id of a key
(``store/pending.py``: ``lock_id``, a 64-bit hash that PostgreSQL takes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import orjson

DIGEST_WIDTH = 32
"""Hex characters of a :func:`unique_digest` (blake2b, 16 bytes)."""


def unique_digest(name: str, queue: str, args: Sequence[Any]) -> str:
    """Uniqueness identity of a job: class, queue and arguments (object key order
    ignored): the blake2b-128 hex digest of ``[name, queue, args]`` as sorted-key JSON."""
    body = orjson.dumps([name, queue, list(args)], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(body, digest_size=16).hexdigest()


def key_digest(name: str, key: Sequence[Any]) -> str:
    """Uniqueness identity of a ReconciledJob's key, whatever its queue:
    :func:`unique_digest` with the queue ``""``. ``key`` is in canonical form."""
    return unique_digest(name, "", key)


def idempotency_key(name: str, key: Sequence[Any]) -> str:
    """``rc-`` and 40 hex characters of the SHA-256 of ``[name, key]`` as JSON: stable
    for (class, key), to pass to external APIs so that a retried side effect is
    recognised by the other side (Stripe's ``Idempotency-Key``)."""
    body = orjson.dumps([name, list(key)])
    return "rc-" + hashlib.sha256(body).hexdigest()[:40]
