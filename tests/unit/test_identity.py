"""Job identities (``reconcile/identity.py``) and the import graph they untangle.

The digests are stored in Redis (uniqueness locks) and handed to other systems
(idempotency keys), so their values are part of the contract: the fixed values below
fail if an edit changes how any of them is computed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from reconcile.identity import DIGEST_WIDTH, idempotency_key, key_digest, unique_digest
from reconcile.jobclass import JobClass
from tests.jobs_core import Record
from tests.reconciled_app import ProcessItem

PACKAGE = Path(__file__).resolve().parents[2] / "reconcile"


def test_unique_digest_is_blake2b_of_sorted_key_json() -> None:
    assert unique_digest("app.Mail", "default", [1, {"b": 2, "a": 1}]) == "f5e90f601a57f4212dd686d4c6cfe348"
    assert unique_digest("app.Mail", "default", [1, {"a": 1, "b": 2}]) == unique_digest(
        "app.Mail", "default", (1, {"b": 2, "a": 1})), "object key order and sequence type do not matter"
    assert unique_digest("app.Mail", "low", [1]) != unique_digest("app.Mail", "default", [1])
    assert len(unique_digest("x", "", [])) == DIGEST_WIDTH


def test_a_keys_digest_ignores_the_queue() -> None:
    assert key_digest("app.Sync", [7, "eu"]) == "833939904a3f279129e2f269f5b3864f"
    assert key_digest("app.Sync", [7, "eu"]) == unique_digest("app.Sync", "", [7, "eu"])


def test_idempotency_key_is_stable_for_class_and_key() -> None:
    assert idempotency_key("app.Sync", [7, "eu"]) == "rc-bf379ac34fbdf2471f46896f8a6e6fd8baa6eb75"
    assert idempotency_key("app.Sync", (7, "eu")) == idempotency_key("app.Sync", [7, "eu"])


def test_job_classes_take_their_identities_from_the_identity_module() -> None:
    assert Record.lock_digest("low", [1]) == unique_digest(Record.job_name, "low", [1])
    assert ProcessItem.lock_digest("any-queue", [3]) == key_digest(ProcessItem.job_name, [3])
    job = ProcessItem()
    job.payload = {"args": [3]}
    assert job.idempotency_key == idempotency_key(ProcessItem.job_name, [3])


def test_job_classes_are_job_class_protocol_objects() -> None:
    def name_of(job_class: JobClass) -> str:
        return job_class.job_name

    assert name_of(Record) == Record.job_name and name_of(ProcessItem) == ProcessItem.job_name


def _imports(path: Path) -> tuple[list[str], list[tuple[int, str]]]:
    """(modules imported at the top level, (line, module) of imports inside functions);
    imports under ``if TYPE_CHECKING:`` count as neither (types only)."""
    tree = ast.parse(path.read_text())
    top: list[str] = []
    nested: list[tuple[int, str]] = []

    def name(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        return [("." * node.level) + (node.module or "")]

    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            top += name(node)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    nested += [(inner.lineno, n) for n in name(inner)]
    return top, nested


def test_the_protocol_module_imports_nothing_of_reconciles() -> None:
    top, nested = _imports(PACKAGE / "jobclass.py")
    assert not [m for m in top if m.startswith(".") or m.startswith("reconcile")]
    assert not nested


@pytest.mark.parametrize("module", ["client.py", "after_commit.py", "middleware.py", "registry.py",
                                    "identity.py"])
def test_the_enqueue_side_does_not_import_job(module: str) -> None:
    top, nested = _imports(PACKAGE / module)
    assert ".job" not in top and "reconcile.job" not in top, f"{module} imports reconcile.job"
    assert not nested, f"{module} imports inside functions: {nested}"


MINE = ["job.py", "options.py", "identity.py", "jobclass.py", "cli.py", "control.py", "registry.py",
        "middleware.py", "after_commit.py", "client.py",
        *(f"broker/{p.name}" for p in sorted((PACKAGE / "broker").glob("*.py")))]


@pytest.mark.parametrize("module", MINE)
def test_imports_are_at_the_top_unless_a_comment_says_why(module: str) -> None:
    path = PACKAGE / module
    lines = path.read_text().splitlines()
    _, nested = _imports(path)
    unexplained = [(n, m) for n, m in nested
                   if "#" not in lines[n - 1] and not lines[n - 2].strip().startswith("#")]
    assert not unexplained, f"{module}: imports inside functions without a comment saying why: {unexplained}"
