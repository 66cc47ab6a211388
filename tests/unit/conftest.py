"""Unit tests need no service: none of them may ask for Redis or PostgreSQL.

A test here that requests ``redis_url`` or ``database_url`` (directly or through a
fixture built on them, such as ``settings``, ``broker`` or ``engine``) is a collection
error naming it: move it to ``tests/integration``. ``pytest tests/unit`` therefore runs
on a machine with neither server.
"""

from __future__ import annotations

import pytest

SERVICES = frozenset({"redis_url", "database_url"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = __file__.rsplit("/", 1)[0]
    wrong = [
        item.nodeid for item in items
        if str(item.path).startswith(here) and SERVICES & set(getattr(item, "fixturenames", ()))
    ]
    if wrong:
        raise pytest.UsageError(
            "unit tests must not use Redis or PostgreSQL (move them to tests/integration): "
            + ", ".join(wrong))
