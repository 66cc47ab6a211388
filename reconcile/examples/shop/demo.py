"""``reconcile demo``: the shop end to end, with a Redis flush in the middle.

Seeds orders and invoices in a schema of its own (``reconcile_demo``), starts one
``reconcile scheduler`` and two ``reconcile worker`` processes, flushes the demo's
Redis namespace while work is in flight, and checks the outcome against the tables:
every order shipped exactly once, every invoice mailed exactly once.

It ships inside the package (``reconcile.examples.shop``), so ``reconcile demo`` runs
from an installed wheel as well as from a checkout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.orm import Session

from reconcile.broker import get_broker
from reconcile.config import Settings
from reconcile.store import migrate

from .models import Base, Invoice, Order

SCHEMA = "reconcile_demo"


def _say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def schema_url(url: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={SCHEMA},public')}"


def prepare(settings: Settings, orders: int, invoices: int) -> sa.Engine:
    admin = sa.create_engine(settings.database_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE'))
        conn.execute(sa.text(f'CREATE SCHEMA "{SCHEMA}"'))
    admin.dispose()
    url = schema_url(settings.database_url)
    migrate.upgrade(url)
    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    now = datetime.now(UTC)
    with Session(engine) as s, s.begin():
        s.execute(sa.insert(Order), [
            {"id": i, "customer": f"c{i % 97}", "paid_at": now} for i in range(1, orders + 1)
        ])
        s.execute(sa.insert(Invoice), [
            {"id": i, "email": f"c{i}@example.com", "finalized": True} for i in range(1, invoices + 1)
        ])
    return engine


def remaining(engine: sa.Engine) -> int:
    with engine.connect() as c:
        return int(c.execute(sa.text(
            "SELECT (SELECT count(*) FROM shop_orders WHERE shipped_at IS NULL)"
            " + (SELECT count(*) FROM shop_invoices WHERE sent_at IS NULL)")).scalar() or 0)


def verify(engine: sa.Engine) -> dict[str, int]:
    q = {
        "orders": "SELECT count(*) FROM shop_orders",
        "orders_not_shipped": "SELECT count(*) FROM shop_orders WHERE shipped_at IS NULL",
        "orders_without_shipment": "SELECT count(*) FROM shop_orders o WHERE NOT EXISTS"
                                   " (SELECT 1 FROM shop_shipments s WHERE s.order_id = o.id)",
        "duplicate_shipments": "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) n"
                               " FROM shop_shipments GROUP BY order_id) t",
        "invoices": "SELECT count(*) FROM shop_invoices",
        "invoices_not_sent": "SELECT count(*) FROM shop_invoices WHERE sent_at IS NULL",
        "mails_delivered": "SELECT count(*) FROM shop_mail_outbox",
        "mail_requests_deduplicated": "SELECT coalesce(sum(requests - 1), 0) FROM shop_mail_outbox",
    }
    with engine.connect() as c:
        return {k: int(c.execute(sa.text(v)).scalar() or 0) for k, v in q.items()}


def run_demo(settings: Settings, orders: int = 3000, invoices: int = 1000, timeout: float = 180) -> int:
    """The whole demo; returns the process exit code (0 when nothing was lost or doubled).
    Both servers of ``settings`` must answer (``reconcile demo`` sees to it, starting
    private ones if needed: :func:`reconcile.embedded.servers_for`)."""
    ns = settings.namespace + "-demo"
    demo_settings = settings.with_overrides(namespace=ns, database_url=schema_url(settings.database_url))
    _say(f"seeding {orders} paid orders and {invoices} finalized invoices in schema {SCHEMA}")
    engine = prepare(settings, orders, invoices)
    broker = get_broker(demo_settings)
    broker.flush_namespace()

    env = dict(os.environ, RECONCILE_REDIS_URL=settings.redis_url, RECONCILE_NAMESPACE=ns,
               RECONCILE_DATABASE_URL=demo_settings.database_url, RECONCILE_LOG_LEVEL="WARNING",
               RECONCILE_LEASE_SECONDS="5", RECONCILE_POLL_INTERVAL="1")
    app = ["--app", "reconcile.examples.shop.jobs"]
    cmds = [
        [sys.executable, "-m", "reconcile", "scheduler", *app],
        [sys.executable, "-m", "reconcile", "worker", *app, "-q", "default,2", "-q", "mailers", "-c", "8"],
        [sys.executable, "-m", "reconcile", "worker", *app, "-q", "default", "-q", "mailers", "-c", "8"],
    ]
    procs = [subprocess.Popen(c, env=env) for c in cmds]
    _say("started 1 scheduler and 2 workers (pids " + ", ".join(str(p.pid) for p in procs) + ")")
    total = orders + invoices
    started = time.monotonic()
    flushed_at = None
    try:
        while True:
            left = remaining(engine)
            if flushed_at is None and left <= total * 0.6:
                deleted = broker.flush_namespace()
                flushed_at = time.monotonic()
                _say(f"FLUSHING Redis mid-run: {deleted} keys deleted with {left} rows still pending")
            if left == 0:
                break
            if time.monotonic() - started > timeout:
                _say(f"timed out with {left} rows pending")
                break
            if any(p.poll() is not None for p in procs):
                _say("a demo process exited early")
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - started
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    v = verify(engine)
    heal = f"{time.monotonic() - flushed_at:.1f}s after the flush" if flushed_at else "no flush"
    _say(f"done in {elapsed:.1f}s ({heal})")
    lost = v["orders_not_shipped"] + v["orders_without_shipment"] + v["invoices_not_sent"] + (
        v["invoices"] - v["mails_delivered"])
    dup = v["duplicate_shipments"]
    print(f"orders:   {v['orders']} shipped, {v['orders_not_shipped']} not shipped, "
          f"{dup} duplicate shipments")
    print(f"invoices: {v['invoices']} mailed, {v['invoices_not_sent']} not sent, "
          f"{v['mails_delivered']} mails delivered, {v['mail_requests_deduplicated']} repeated "
          "requests absorbed by the idempotency key")
    ok = lost == 0 and dup == 0 and v["mails_delivered"] == v["invoices"]
    print("OK: every row was processed exactly once despite the Redis flush" if ok
           else f"FAILED: {lost} lost, {dup} duplicated")
    engine.dispose()
    return 0 if ok else 1
