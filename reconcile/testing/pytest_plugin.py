"""pytest fixtures for applications (loaded automatically: a ``pytest11`` entry point).

``reconcile_fake`` collects enqueued jobs instead of sending them to Redis::

    def test_signup_sends_mail(reconcile_fake):
        signup("ann@example.com")
        assert reconcile_fake.args_for(WelcomeMail) == [["ann@example.com"]]
        reconcile_fake.drain_all()

``reconcile_inline`` runs each job inside its enqueue call::

    def test_signup_mail_is_sent(reconcile_inline, outbox):
        signup("ann@example.com")
        assert outbox == ["ann@example.com"]

See :mod:`reconcile.testing` for the semantics of both modes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import FakeMode, InlineMode


@pytest.fixture
def reconcile_fake() -> Iterator[FakeMode]:
    """Fake mode for the test: enqueues are collected, not pushed to Redis."""
    with FakeMode() as mode:
        yield mode


@pytest.fixture
def reconcile_inline() -> Iterator[InlineMode]:
    """Inline mode for the test: each job runs inside its enqueue call."""
    with InlineMode() as mode:
        yield mode
