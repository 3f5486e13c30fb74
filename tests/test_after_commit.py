"""Work after a commit has two ways in, both in tasks/: the outbox and the drain.

An app that publishes a task itself (`.delay`, `.apply_async`, `send_task`) or hangs work
on `transaction.on_commit` bypasses both: a crash between the commit and the hook loses
that work, and the next app copies the pattern. This reads every module of apps/ and
config/ with `ast` (nothing is imported) and refuses those calls; tasks/ is where the two
mechanisms (and the live-event helper) are allowed to make them.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("apps", "config")
# Attribute calls that publish a message or defer work to the end of a transaction.
FORBIDDEN = {"delay", "apply_async", "send_task", "on_commit"}


def _offences(source: str, filename: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in FORBIDDEN:
            found.append(f"{filename}:{node.lineno}: {name}(...)")
    return found


def test_no_app_publishes_or_defers_work_itself() -> None:
    offences = []
    for package in SCANNED:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            offences += _offences(path.read_text(), rel)
    assert not offences, (
        "work after a commit goes through tasks.outbox or tasks.drain "
        "(docs/architecture.md, 'Which mechanism when'):\n" + "\n".join(offences)
    )


def test_the_scan_sees_each_form() -> None:
    source = """
from django.db import transaction
from django.db.transaction import on_commit
def view(task, app):
    task.delay(1)
    task.apply_async(args=[1], countdown=2)
    app.send_task("x.y")
    transaction.on_commit(lambda: None)
    on_commit(print)
"""
    assert [line.rsplit(": ", 1)[1] for line in _offences(source, "m.py")] == [
        "delay(...)",
        "apply_async(...)",
        "send_task(...)",
        "on_commit(...)",
        "on_commit(...)",
    ]
