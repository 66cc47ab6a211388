"""Alembic environment of reconcile's own tables.

Thin on purpose: the behaviour (own version table ``reconcile_alembic_version``, the
schema taken from the URL's search_path, an advisory lock against concurrent
upgrades, autogenerate limited to ``reconcile_*`` tables) lives in
``reconcile.store.migrate``, where it is typed and tested.
"""

from alembic import context

from reconcile.store.migrate import run_env

run_env(context)
