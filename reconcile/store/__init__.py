"""PostgreSQL side of reconcile: every framework table and every SQL statement.

One module per concern, each a handful of functions over SQLAlchemy Core:

* ``tables``: the four framework tables (``metadata``), unbound to any schema so
  they live in the first schema of the connection's ``search_path``;
* ``engine``: one pooled :class:`~sqlalchemy.engine.Engine` per database URL;
* ``schedules``: tick claims, exactly once across any number of schedulers;
* ``runs``: the history of reconcile passes;
* ``quarantine``: keys a reconcile pass must not enqueue again;
* ``switches``: per-job kill switches and their per-process cache;
* ``pending``: paging a job's ``pending()`` query and the per-key advisory lock;
* ``migrate``: ``reconcile db upgrade|downgrade|current`` (alembic).

Functions that write take a ``bind``: an :class:`Engine` (the function runs its own
short transaction and commits) or a :class:`Connection` (the statement joins the
caller's transaction; the caller commits).
"""
