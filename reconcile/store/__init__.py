"""PostgreSQL side of reconcile: every framework table and every SQL statement.

One module per concern, each a handful of functions over SQLAlchemy Core:

* ``tables``: the four framework tables (``metadata``), unbound to any schema so
  they live in the first schema of the connection's ``search_path``;
* ``engine``: one pooled :class:`~sqlalchemy.engine.Engine` per database URL;
* ``schedules``: tick claims, exactly once across any number of schedulers;
* ``runs``: the history of reconcile passes;
* ``quarantine``: keys a reconcile pass must not enqueue again;
* ``switches``: per-job kill switches and their per-process cache;
* ``pending``: the protocol's SQL in plain SQLAlchemy: paging a job's ``pending()``
  query, the one-key check, the per-key advisory lock (the reference forms);
* ``keyset``, ``key_check``, ``prepared``, ``driver_tx``: their fast forms (pages and
  checks compiled once, checks prepared, the protocol in two simple queries);
* ``delivery``: the delivery transaction ``ReconciledJob._execute`` drives, reference
  and fast;
* ``_sqlalchemy_private``, ``_psycopg_private``: every use of a dependency's internals;
* ``migrate``: ``reconcile db upgrade|downgrade|current`` (alembic).

Functions that write take a ``bind``: an :class:`Engine` (the function runs its own
short transaction and commits) or a :class:`Connection` (the statement joins the
caller's transaction; the caller commits).
"""
