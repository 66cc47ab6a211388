"""Job payloads: strict JSON with Sidekiq's field names.

A payload is a JSON object, encoded compactly (orjson), never pickled::

    {"class": "myapp.jobs.HardWork", "args": [42, "sync"], "queue": "default",
     "jid": "b4a577edbccf1d805744efa9", "created_at": 1732357077.123,
     "enqueued_at": 1732357077.123, "retry": 5}

Fields written by the engine as a job moves: ``retry_count``, ``error_class``,
``error_message``, ``failed_at``, ``retried_at``, ``at`` (scheduled run time),
``lock`` (uniqueness lock digest), ``unique_until``, ``recovered`` (times the reaper
returned it from a crashed worker; such a job is leased alone), and ``traceparent``
(the W3C trace context of the span that enqueued it, with the setting ``tracing =
"otel"``; see :mod:`reconcile.tracing`). ``traceparent`` is not checked here: a
malformed one is ignored by the worker, never a reason to dead-letter a job.

Contracts:

* :func:`check_args` accepts only JSON-native values (``str``, ``int`` within 64 bits,
  finite ``float``, ``bool``, ``None``, ``list`` and ``dict`` with ``str`` keys) and
  names the offending argument and its type otherwise. Subclasses (enums, tuples,
  ``datetime``) are refused because they would not survive the round trip.
  A string (or dict key) orjson cannot encode, such as a lone surrogate
  (``"\\ud800"``), is refused the same way, naming its path (``args[1]['name']``).
* :func:`check_args` given ``arity`` (``Job.arity()``) also refuses a count of
  positional arguments ``perform`` does not accept, naming the expected parameters.
* :func:`valid_queue` is the one rule for queue names (:data:`QUEUE_NAME_RULE`).
* :func:`encode` refuses payloads larger than the configured limit.
* :func:`decode` never raises anything but :class:`PayloadError`, whose message is
  the reason recorded in the dead set.
"""

from __future__ import annotations

import math
import os
import re
import sys
from typing import Any

import orjson

from .errors import ArgumentError, PayloadError, PayloadTooLarge

Payload = dict[str, Any]

MAX_ARG_DEPTH = 64
"""Nesting depth allowed in enqueue arguments."""

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
_ALLOWED = "str, int, float, bool, None, list, dict with str keys"


QUEUE_NAME_RULE = "1 to 128 characters among A-Z a-z 0-9 _ . : -"
"""Allowed queue names, as error messages state it. Braces would break the Redis hash
tag, ``|`` separates fields in lease entries, and whitespace or other characters make
names that CLI flags and dashboards cannot show unambiguously."""

_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")


def is_queue_name(queue: Any) -> bool:
    """Whether ``queue`` is a valid queue name (:data:`QUEUE_NAME_RULE`)."""
    return type(queue) is str and _QUEUE_NAME.fullmatch(queue) is not None


def valid_queue(job: str, queue: Any) -> str:
    """``queue`` if it is a valid queue name (:data:`QUEUE_NAME_RULE`); otherwise
    :class:`ArgumentError` naming ``job`` (the class, or where the name came from)."""
    if not is_queue_name(queue):
        raise ArgumentError(f"{job}: queue {queue!r} is not a valid queue name ({QUEUE_NAME_RULE})")
    return str(queue)


def new_jid() -> str:
    """A job id: 12 random bytes as 24 hex characters (Sidekiq's format)."""
    return os.urandom(12).hex()


def _describe(value: Any) -> str:
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _encodable(text: str) -> bool:
    """Whether orjson can encode ``text``: UTF-8 has no lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check(value: Any, path: str, depth: int, job: str) -> None:
    kind = type(value)
    if kind is str:
        if not value.isascii() and not _encodable(value):
            raise ArgumentError(
                f"{job}: argument {path} is a string with a lone surrogate, which JSON "
                f"(UTF-8) cannot carry: {value!r}"[:500]
            )
        return
    if kind is bool or value is None:
        return
    if kind is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise ArgumentError(f"{job}: argument {path} is an int outside 64 bits ({value})")
        return
    if kind is float:
        if not math.isfinite(value):
            raise ArgumentError(f"{job}: argument {path} is {value!r}, which JSON cannot carry")
        return
    if depth >= MAX_ARG_DEPTH:
        raise ArgumentError(f"{job}: argument {path} is nested deeper than {MAX_ARG_DEPTH} levels")
    if kind is list:
        for i, item in enumerate(value):
            _check(item, f"{path}[{i}]", depth + 1, job)
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise ArgumentError(
                    f"{job}: argument {path} has a key {key!r} of type {_describe(key)}; "
                    "dict keys must be str"
                )
            if not key.isascii() and not _encodable(key):
                raise ArgumentError(
                    f"{job}: argument {path} has a key with a lone surrogate, which JSON "
                    f"(UTF-8) cannot carry: {key!r}"[:500]
                )
            _check(item, f"{path}[{key!r}]", depth + 1, job)
        return
    raise ArgumentError(
        f"{job}: argument {path} is {_describe(value)}, which is not JSON-native "
        f"(allowed: {_ALLOWED})"
    )


Arity = tuple[int, int, str]
"""``Job.arity()``: (fewest, most) positional arguments ``perform`` accepts (most is
:data:`UNBOUNDED` for ``*args``) and the parameters as messages show them."""

UNBOUNDED = sys.maxsize
"""The most of an arity whose ``perform`` takes ``*args``."""


def check_args(
    args: list[Any] | tuple[Any, ...], job: str, names: list[str] | None = None,
    arity: Arity | None = None,
) -> None:
    """Raise :class:`ArgumentError` unless every argument is JSON-native and, given
    ``arity``, their count is one ``perform`` accepts.

    ``names`` (the perform parameter names) make messages read ``user_id`` rather
    than ``args[0]``.
    """
    if arity is not None and not arity[0] <= len(args) <= arity[1]:
        raise ArgumentError(arity_message(job, arity, len(args)))
    for i, value in enumerate(args):
        kind = type(value)
        if kind is str:
            if value.isascii():
                continue  # else the full check looks for lone surrogates
        elif kind is bool or value is None or (kind is int and _INT_MIN <= value <= _INT_MAX):
            continue
        label = f"{names[i]!r} (args[{i}])" if names and i < len(names) else f"args[{i}]"
        _check(value, label, 0, job)


def arity_message(job: str, arity: Arity, count: int) -> str:
    """The error for ``count`` positional arguments where ``arity`` says otherwise."""
    lo, hi, params = arity
    if lo == hi:
        want = f"{lo}"
    elif hi >= UNBOUNDED:
        want = f"at least {lo}"
    else:
        want = f"{lo} to {hi}"
    noun = "argument" if want == "1" else "arguments"
    return (
        f"{job}: perform({params}) takes {want} positional {noun}, got {count} "
        "(keyword arguments are not supported: job arguments are a positional JSON list)"
    )


def encode(payload: Payload, limit: int) -> bytes:
    """Compact JSON bytes of ``payload``; :class:`PayloadTooLarge` above ``limit`` bytes."""
    try:
        data = orjson.dumps(payload)
    except TypeError as exc:  # only reachable if a middleware put a non-JSON value in
        args = payload.get("args")
        if type(args) is list:
            check_args(args, f"{payload.get('class')}")  # names the argument if it is one
        raise PayloadError(f"payload of {payload.get('class')!r} is not JSON: {exc}") from None
    if len(data) > limit:
        raise PayloadTooLarge(
            f"payload of {payload.get('class')!r} is {len(data)} bytes, over the "
            f"max_payload_bytes limit of {limit}"
        )
    return data


class PayloadTemplate:
    """What the payloads of one enqueue call, or of one reconcile pass, share, and the
    two ways of building a payload from it.

    A job's payload is ``{"queue", "jid", "class", "args", "created_at", "retry"
    [, "unique_until"] [, "traceparent"], "enqueued_at" | "at" [, "lock"]}``, fields in
    that order ("queue" then "jid" first: the Lua scripts read them with an anchored
    match). Jobs of one call differ only in jid, args, timestamps and lock digest; the
    ``traceparent`` (tracing on) is the call's, or the pass's: one per template, so
    stamping it costs the fast paths nothing per job.

    * :meth:`reference` builds the dict (the specification; what client middleware
      and the testing interceptor receive), encoded by :func:`encode`;
    * :meth:`assemble` builds the same bytes from parts encoded once per call
      (:attr:`head`, :attr:`mid`, :meth:`created`, :meth:`ready`, :meth:`at_field`,
      :meth:`lock_field`), without a dict: the fast path of ``client.enqueue`` and,
      joined for a whole page at once, of the reconcile pass.

    ``orjson.dumps(template.reference(...)) == template.assemble(...)`` for the same
    values (``tests/unit/test_payload.py`` checks it over generated arguments); setting
    ``fast_paths = false`` makes enqueue and passes build every payload with
    :meth:`reference`.
    """

    __slots__ = ("head", "locked", "mid", "name", "options", "queue", "retry", "traceparent",
                 "unique_until")

    LOCK_OPEN = b',"lock":"'

    def __init__(self, name: str, queue: str, retry: Any, unique_until: str | None,
                 traceparent: str | None = None) -> None:
        """``unique_until`` None: the jobs take no uniqueness lock (no ``unique_until``
        nor ``lock`` field); ``traceparent`` None: no ``traceparent`` field."""
        dumps = orjson.dumps
        self.name, self.queue, self.retry, self.unique_until = name, queue, retry, unique_until
        self.traceparent = traceparent
        self.locked = unique_until is not None
        self.head = b'{"queue":' + dumps(queue) + b',"jid":"'
        """Everything before the jid."""
        self.mid = b'","class":' + dumps(name) + b',"args":'
        """From the end of the jid to the args JSON."""
        options = b',"retry":' + dumps(retry)
        if unique_until is not None:
            options += b',"unique_until":' + dumps(unique_until)
        if traceparent is not None:
            options += b',"traceparent":' + dumps(traceparent)
        self.options = options
        """The fields after ``created_at``: ``retry``, for a locked job ``unique_until``,
        and the ``traceparent`` if any."""

    @classmethod
    def of(cls, name: str, queue: str, opts: dict[str, Any], locked: bool,
           traceparent: str | None = None) -> PayloadTemplate:
        """The template of class ``name``'s jobs on ``queue`` with options ``opts``
        (``Job.options()`` and the call's overrides; ``unique_until`` defaults to
        ``"success"``); ``locked``: whether they take a uniqueness lock; ``traceparent``:
        the trace context every payload carries (None: none)."""
        return cls(name, queue, opts["retry"], opts.get("unique_until", "success") if locked else None,
                   traceparent)

    def reference(self, jid: str, args: list[Any], created_at: float, at: float = 0.0,
                  lock: str = "") -> Payload:
        """The payload dict: run at ``at`` (an epoch after ``created_at``; 0 means now,
        and the job gets ``enqueued_at`` instead); ``lock`` the uniqueness digest of a
        locked job."""
        payload: Payload = {"queue": self.queue, "jid": jid, "class": self.name, "args": args,
                            "created_at": created_at, "retry": self.retry}
        if self.unique_until is not None:
            payload["unique_until"] = self.unique_until
        if self.traceparent is not None:
            payload["traceparent"] = self.traceparent
        if at:
            payload["at"] = at
        else:
            payload["enqueued_at"] = created_at
        if lock:
            payload["lock"] = lock
        return payload

    def created(self, created_at: float) -> bytes:
        """``,"created_at":...`` and the options: the part after the args."""
        return b',"created_at":' + orjson.dumps(created_at) + self.options

    def ready(self, created_at: float) -> bytes:
        """:meth:`created` of a job that runs now (``enqueued_at`` is ``created_at``)."""
        return self.created(created_at) + b',"enqueued_at":' + orjson.dumps(created_at)

    @staticmethod
    def at_field(at: float) -> bytes:
        """``,"at":...``: follows :meth:`created` for a job that runs later."""
        return b',"at":' + orjson.dumps(at)

    def lock_field(self, lock: str) -> bytes:
        """``,"lock":"<digest>"`` (the digest is hex: no escaping), or nothing."""
        return self.LOCK_OPEN + lock.encode() + b'"' if lock else b""

    def assemble(self, jid: str, args_json: bytes, stamps: bytes, lock: str = "") -> bytes:
        """The payload bytes: ``stamps`` is :meth:`ready`, or :meth:`created` then
        :meth:`at_field`; ``args_json`` is ``orjson.dumps(args)``."""
        return self.head + jid.encode() + self.mid + args_json + stamps + self.lock_field(lock) + b"}"


PASS_LOCKED = "pl"
"""Field of a compact pass payload whose job holds a pass lock: the enqueue time."""
PASS_UNLOCKED = "p"
"""Field of a compact pass payload whose job holds no lock: the enqueue time."""


def pass_lock_member(args: Any) -> bytes:
    """A key's member in its class's pass-lock sets: its canonical args as JSON, object
    keys sorted (the bytes a pass writes as the compact payload's ``args``)."""
    return orjson.dumps(list(args), option=orjson.OPT_SORT_KEYS)


def pass_lock(name: str, args_json: bytes) -> str:
    """The pass lock of class ``name``'s key whose canonical args JSON is
    ``args_json``, as settle ops and ``unlock()`` in the Lua prelude take it:
    ``@<name>\n<args JSON>`` (member ``args_json`` of ``{ns}:plocks:<name>``)."""
    return "@" + name + "\n" + args_json.decode()


def expand_pass_payload(payload: Payload, unique_until: str) -> None:
    """Give a compact pass payload (``{"queue", "jid", "class", "args", "pl" | "p"}``,
    written by reconcile passes; see docs/redis-layout.md) the fields the engine reads
    from a full one, in place: ``created_at`` and ``enqueued_at`` (the pass's time),
    and for a locked one (``pl``) its ``lock`` (:func:`pass_lock`) and
    ``unique_until`` (the class's, given). Any other payload is left as it is."""
    stamp = payload.pop(PASS_LOCKED, None)
    locked = stamp is not None
    if not locked:
        if PASS_UNLOCKED not in payload:
            return
        stamp = payload.pop(PASS_UNLOCKED)
    payload.setdefault("created_at", stamp)
    payload.setdefault("enqueued_at", stamp)
    if locked:
        # the args as the pass wrote them: canonical, object keys sorted
        args_json = orjson.dumps(payload["args"], option=orjson.OPT_SORT_KEYS)
        payload["lock"] = pass_lock(str(payload["class"]), args_json)
        payload["unique_until"] = unique_until


def decode(raw: bytes | str, limit: int) -> Payload:
    """Parse and validate a payload read from Redis; :class:`PayloadError` says why not."""
    if len(raw) > limit:
        raise PayloadError(f"payload is {len(raw)} bytes, over the max_payload_bytes limit of {limit}")
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"payload is not valid JSON: {exc}") from None
    if type(payload) is not dict:
        raise PayloadError(f"payload is JSON {type(payload).__name__}, not an object")
    cls = payload.get("class")
    if type(cls) is not str or not cls:
        raise PayloadError("payload has no 'class' string")
    if type(payload.get("args")) is not list:
        raise PayloadError("payload has no 'args' list")
    if type(payload.get("jid")) is not str:
        raise PayloadError("payload has no 'jid' string")
    if type(payload.get("queue")) is not str:
        raise PayloadError("payload has no 'queue' string")
    # fields the engine acts on (settle ops, retry rules): a wrong type would break them
    for field, kinds, want in _TYPED_FIELDS:
        if field in payload and type(payload[field]) not in kinds:
            raise PayloadError(
                f"payload field {field!r} must be {want}, got {_describe(payload[field])}"
            )
    return payload


_TYPED_FIELDS: tuple[tuple[str, tuple[type, ...], str], ...] = (
    ("lock", (str,), "a string"),
    ("unique_until", (str,), "a string"),
    ("retry", (bool, int), "true, false or an int"),
    ("retry_count", (int,), "an int"),
)


def loads_lenient(raw: bytes | str) -> dict[str, Any]:
    """Best-effort parse for inspection (status, the sets); never raises. Always a
    dict: a payload, or ``{"raw": ...}`` holding other JSON or the text (cut at 2,000
    characters) of what is not JSON."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        return {"raw": text[:2000]}
    return value if isinstance(value, dict) else {"raw": value}


def dumps(value: Any) -> bytes:
    """orjson.dumps for engine-built records (dead-set wrappers, status)."""
    return orjson.dumps(value)
