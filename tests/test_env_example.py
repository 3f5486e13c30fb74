""".env.example lists exactly the environment variables the project reads, and no others.

"Reads" is found in the code, not kept in a list here: every `env.<cast>("NAME")` (the one
`environ.Env` of config/settings.py), `os.environ.get("NAME")`, `os.environ["NAME"]`,
`os.getenv("NAME")` and `"NAME" in os.environ` in apps/, tasks/ and config/ (settings,
management commands, config/devrun.py, the fake gateway, config/devservices.py), a helper
that passes its own parameter to one of those (then each call of it with a literal name
counts), and every `${NAME}` of the Procfile. tests/ and bench/ set variables for the
processes they start: they are not the project's configuration.

A name counts as listed when .env.example has a `NAME=` line, commented out or not (a
commented line is a variable with no development value, such as DJANGO_SECRET_KEY).
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("apps", "config", "tasks")

# Read by the code, but the conventions of other tools, honoured as those tools honour
# them: not Surge's settings, so not Surge's to list.
NOT_OURS = {
    "PATH": "the shell's search path (config/devrun.py puts the venv first)",
    "REQUESTS_CA_BUNDLE": "the HTTP client convention for a CA bundle (apps/orders/payments.py)",
    "CURL_CA_BUNDLE": "the same convention, curl's spelling",
}

_LISTED = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=", re.MULTILINE)
_PROCFILE_VAR = re.compile(r"\$\{?([A-Z_][A-Z0-9_]*)")


def _is_os_environ(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def _read_name(node: ast.AST) -> ast.expr | None:
    """The name argument of an environment read, if `node` is one."""
    if isinstance(node, ast.Call) and node.args:
        func = node.func
        if isinstance(func, ast.Attribute):
            if func.attr == "get" and _is_os_environ(func.value):
                return node.args[0]
            if func.attr == "getenv" and isinstance(func.value, ast.Name):
                return node.args[0] if func.value.id == "os" else None
            if isinstance(func.value, ast.Name) and func.value.id == "env":
                return node.args[0]  # env.str("NAME"), env.int("NAME"), ...
        if isinstance(func, ast.Name) and func.id == "env":
            return node.args[0]
    if (
        isinstance(node, ast.Subscript)
        and isinstance(node.ctx, ast.Load)
        and _is_os_environ(node.value)
    ):
        return node.slice
    if (
        isinstance(node, ast.Compare)
        and len(node.ops) == 1
        and isinstance(node.ops[0], ast.In)
        and _is_os_environ(node.comparators[0])
    ):
        return node.left
    return None


def _literal(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def variables_read(root: Path = ROOT) -> dict[str, set[str]]:
    """Every variable the project under `root` reads -> where (file:line)."""
    trees = {
        path: ast.parse(path.read_text(), filename=str(path))
        for package in SCANNED
        for path in sorted((root / package).rglob("*.py"))
    }
    found: dict[str, set[str]] = defaultdict(set)
    readers: set[str] = set()  # helpers that read the variable their parameter names
    for path, tree in trees.items():
        for node in ast.walk(tree):
            name_arg = _read_name(node)
            name = _literal(name_arg)
            if name:
                found[name].add(f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}")
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                params = {a.arg for a in node.args.args + node.args.kwonlyargs}
                for inner in ast.walk(node):
                    arg = _read_name(inner)
                    if isinstance(arg, ast.Name) and arg.id in params:
                        readers.add(node.name)
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            name = _literal(node.args[0])
            if called in readers and name:
                found[name].add(f"{path.relative_to(root)}:{node.lineno}")
    for line_no, line in enumerate((root / "Procfile").read_text().splitlines(), start=1):
        for name in _PROCFILE_VAR.findall(line):
            found[name].add(f"Procfile:{line_no}")
    return dict(found)


def variables_listed() -> set[str]:
    return set(_LISTED.findall((ROOT / ".env.example").read_text()))


def test_env_example_lists_exactly_what_the_project_reads() -> None:
    read = {name: where for name, where in variables_read().items() if name not in NOT_OURS}
    listed = variables_listed()
    missing = {name: sorted(read[name]) for name in sorted(set(read) - listed)}
    unread = sorted(listed - set(read))
    assert not missing and not unread, (
        f"read but not in .env.example: {missing}\nin .env.example but read nowhere: {unread}"
    )


def test_the_scan_finds_every_kind_of_read(tmp_path: Path) -> None:
    """The scan itself, on a small tree with one read of each kind (so a variable read any
    of these ways cannot slip past the test above), and the writes it must not count."""
    (tmp_path / "config").mkdir()
    (tmp_path / "apps").mkdir()
    (tmp_path / "config" / "settings.py").write_text(
        "import environ\nenv = environ.Env()\n"
        'A = env.str("BY_ENV_CAST", default="x")\nB = env("BY_ENV_CALL")\n'
    )
    (tmp_path / "apps" / "reads.py").write_text(
        "import os\n"
        'a = os.environ.get("BY_GET")\nb = os.environ["BY_SUBSCRIPT"]\n'
        'c = os.getenv("BY_GETENV")\nd = "BY_IN" in os.environ\n'
        'os.environ.setdefault("SET_DEFAULT", "x")\nos.environ["ASSIGNED"] = "x"\n'
        "def _knob(name, default):\n    return os.environ.get(name) or default\n"
        'e = _knob("BY_HELPER", 1)\n'
    )
    (tmp_path / "Procfile").write_text("web: run --port ${BY_PROCFILE:-8000} $BARE\n")
    assert set(variables_read(tmp_path)) == {
        "BY_ENV_CAST",
        "BY_ENV_CALL",
        "BY_GET",
        "BY_SUBSCRIPT",
        "BY_GETENV",
        "BY_IN",
        "BY_HELPER",
        "BY_PROCFILE",
        "BARE",
    }
    assert variables_read(tmp_path)["BY_HELPER"] == {"apps/reads.py:10"}
    assert not set(NOT_OURS) & variables_listed()
