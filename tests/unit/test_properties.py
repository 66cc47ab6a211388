"""Properties over untrusted input: random and adversarial values give either a valid
result or the documented error, never another exception (no services needed).

* payload decoding (bytes read from Redis): a payload dict, or PayloadError;
* settings parsing (environment variables, pyproject values): Settings, or ConfigError;
* key canonicalisation: see tests/unit/test_keys.py.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconcile.config import Settings, load_settings
from reconcile.errors import ConfigError, PayloadError
from reconcile.payload import decode

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=10,
)

payload_like = st.fixed_dictionaries(
    {}, optional={"queue": json_values, "jid": json_values, "class": json_values, "args": json_values,
                  "retry": json_values, "created_at": json_values, "at": json_values, "lock": json_values},
).map(orjson.dumps)

adversarial_bytes = st.one_of(
    st.binary(max_size=200),
    payload_like,
    payload_like.map(lambda b: b[: max(1, len(b) // 2)]),  # truncated
    st.integers(1, 400).map(lambda n: b'{"args":' + b"[" * n + b"]" * n + b"}"),  # deep
    st.just(b'{"class":"\xff\xfe","args":[]}'),
)


@given(adversarial_bytes)
def test_decoding_bytes_from_redis_gives_a_payload_or_payload_error(raw: bytes) -> None:
    try:
        payload = decode(raw, 1_000_000)
    except PayloadError as exc:
        assert str(exc), "the reason recorded in the dead set is never empty"
        return
    assert isinstance(payload, dict)
    assert isinstance(payload["args"], list) and isinstance(payload["class"], str)


NUMERIC = [f.name for f in dataclasses.fields(Settings) if f.type in ("int", "float")]
TEXT_SETTINGS = ["redis_url", "database_url", "namespace", "log_level"]

env_values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["nan", "inf", "-inf", "1e309", "-1", "0", "0.0", "1e-300", "10", "2.5", " 3 ",
                     "redis://h:6379/abc", "redis://h:6379/0", "redis://:secret@h:6379/99999999999999",
                     "postgresql://u:p@h/db", "http://x", "", "\x00"]),
)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(st.sampled_from(NUMERIC + TEXT_SETTINGS), env_values)
def test_an_environment_value_gives_settings_or_config_error(name: str, value: str) -> None:
    try:
        s = load_settings(env={f"RECONCILE_{name.upper()}": value}, pyproject=False)
    except ConfigError as exc:
        text = str(exc)
        assert name in text or f"RECONCILE_{name.upper()}" in text, f"the error names the setting: {text}"
        if name.endswith("_url"):
            assert "secret" not in text, "passwords are masked in configuration errors"
        return
    got = getattr(s, name)
    if isinstance(got, float):
        assert math.isfinite(got), f"{name}={value!r} accepted a non-finite number"


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=100)
@given(st.text(max_size=60))
def test_a_pyproject_file_gives_settings_or_config_error_naming_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text("[tool.reconcile]\n" + text, encoding="utf-8")
    try:
        load_settings(env={}, pyproject=path)
    except ConfigError as exc:
        assert "pyproject.toml" in str(exc)
