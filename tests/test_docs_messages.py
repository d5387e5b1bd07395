"""Every message gputime logs is explained in docs/troubleshooting.md.

The messages are found in the source, not listed by hand: the format string of
every ``log_once(kind, level, message, ...)`` call (and the NVML backend's
``_log_once``), and every fault kind given to a tracker's fault log
(``faults.report(kind, ...)``, ``_report_fault(kind, ...)``, the Celery
integration's ``_report(kind, ...)``, the listeners' ``_notify(..., kind)``).
A message is found on the page by the start (up to 50 characters, whole words)
of its longest literal stretch between ``%`` placeholders, so the page may
shorten a long message; a kind as `` `kind` ``.
A new warning without its line in the page's table fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "troubleshooting.md"
SOURCES = sorted((ROOT / "gputime").rglob("*.py"))

PLACEHOLDER = re.compile(r"%[-+ #0]*\d*(?:\.\d+)?[sdrfi]|%%")


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def _string(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def logged() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(where, message format) of every log-once call; (where, kind) of every fault kind."""
    messages, kinds = [], []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            name = _name(node.func)
            if name in ("log_once", "_log_once") and len(node.args) >= 3:
                message = _string(node.args[2])
                assert message is not None, f"{where}: a message that is not a literal"
                messages.append((where, message))
            elif name in ("report", "_report", "_report_fault") and node.args:
                kind = _string(node.args[0])
                if kind is not None:
                    kinds.append((where, kind))
            elif name == "_notify" and len(node.args) >= 3:
                kind = _string(node.args[2])
                if kind is not None:
                    kinds.append((where, kind))
    return messages, kinds


MESSAGES, KINDS = logged()


def normalised(text: str) -> str:
    return " ".join(text.replace("`", "").split())


def longest_literal(message: str, limit: int = 50) -> str:
    chunks = [chunk.strip(" :;,") for chunk in PLACEHOLDER.split(message.removeprefix("gputime:"))]
    literal = normalised(max(chunks, key=len))
    if len(literal) > limit:
        literal = literal[: literal.rfind(" ", 0, limit)]
    return literal


def test_the_source_is_scanned() -> None:
    # A refactoring that renamed the logging helpers would make the checks below vacuous.
    assert len(MESSAGES) >= 10, MESSAGES
    assert {"read", "otel.span", "on_task_end"} <= {kind for _, kind in KINDS}, KINDS


@pytest.mark.parametrize(("where", "message"), MESSAGES, ids=[w for w, _ in MESSAGES])
def test_message_is_explained(where: str, message: str) -> None:
    literal = longest_literal(message)
    assert literal in normalised(PAGE.read_text(encoding="utf-8")), (
        f"{where} logs {message!r}: add it to the table in docs/troubleshooting.md "
        f"(looked for {literal!r})"
    )


@pytest.mark.parametrize(
    "kind", sorted({kind for _, kind in KINDS}), ids=sorted({kind for _, kind in KINDS})
)
def test_fault_kind_is_explained(kind: str) -> None:
    assert f"`{kind}`" in PAGE.read_text(encoding="utf-8"), (
        f"fault kind {kind!r} is not in the kinds table of docs/troubleshooting.md"
    )
