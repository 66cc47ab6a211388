"""Requests to the dashboard through its WSGI interface, shared by the web tests."""

from __future__ import annotations

import io
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import orjson

from reconcile.broker import Broker
from reconcile.web import Dashboard

HOST = "localhost:8181"


def call(app: Dashboard, path: str, method: str = "GET", form: dict[str, Any] | None = None,
         **headers: str) -> tuple[int, dict[str, str], str]:
    """One request through the WSGI interface: (status code, headers, body)."""
    query = ""
    if "?" in path:
        path, query = path.split("?", 1)
    body = urlencode(form or {}, doseq=True).encode()
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
        "SCRIPT_NAME": "/admin/jobs", "SERVER_NAME": "localhost", "SERVER_PORT": "8181",
        "HTTP_HOST": HOST, "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/x-www-form-urlencoded", "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        **{"HTTP_" + k.upper(): v for k, v in headers.items()},
    }
    seen: dict[str, Any] = {}

    def start_response(code: str, hdrs: list[tuple[str, str]]) -> None:
        seen["code"], seen["headers"] = int(code.split()[0]), dict(hdrs)

    out = b"".join(app(environ, start_response))
    return seen["code"], seen["headers"], out.decode()


def same_site(**extra: str) -> dict[str, str]:
    return {"ORIGIN": f"http://{HOST}", **extra}


def add_dead(broker: Broker, text: str) -> str:
    """A dead job (as a worker leaves it) put in the dead set directly; returns its jid."""
    jid = uuid.uuid4().hex[:24]
    job = {"class": "web.Doomed", "args": [text], "jid": jid, "queue": "default",
           "error_class": "RuntimeError", "error_message": f"cannot handle {text}"}
    broker.redis.zadd(broker.keys.dead, {orjson.dumps(job): time.time()})
    return jid
