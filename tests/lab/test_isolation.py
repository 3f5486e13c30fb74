"""The lab stays out of the real code: nothing outside apps/lab imports it, and with
`LAB_ENABLED` off (the default) it is neither installed, nor routed, nor imported, nor are
its tasks registered; with it on, all of that holds the other way round."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest
from rest_framework.test import APIClient

from ..harness import ROOT

# Every route of apps/lab/urls.py, as a request would reach it.
LAB_ROUTES = (
    "/bench/noop/",
    "/api/bench/noop/",
    "/api/bench/noop-auth/",
    "/api/bench/noop-stock-auth/",
    "/api/bench/one-query/",
    "/api/bench/coupons/1/naive-issue/",
    "/api/bench/coupons/1/gate-only-issue/",
    "/api/bench/orders/synchronous/",
    "/api/bench/wallets/1/naive-transactions/",
)
LAB_TASKS = ("lab.wallets_apply_naive", "ops.bench_ack", "ops.bench_ack_surge", "ops.noop")
# Where the production code lives: every package of the project but the lab (and tests).
PRODUCTION = ("apps", "config", "tasks")


def lab_imports(source: str, module: str) -> list[str]:
    """The imports of `source` (the module `module`, dotted) that reach apps.lab, counting
    relative ones and imports inside functions."""
    package = module.split(".")
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level]
                base = ".".join([*parent, base] if base else parent)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [t for t in targets if t == "apps.lab" or t.startswith("apps.lab.")]
    return found


def test_the_import_finder_sees_every_form() -> None:
    for source in (
        "import apps.lab",
        "import apps.lab.api as x",
        "from apps.lab import services",
        "from apps import lab",
        "from apps.lab.services import coupon_code_new",
        "def f():\n    from ..lab import api",
    ):
        assert lab_imports(source, "apps.coupons.services"), source
    assert not lab_imports("from apps import labels\nimport apps.laboratory", "config.urls")
    assert not lab_imports("from . import api", "apps.wallets.services")


def test_production_code_imports_nothing_from_the_lab() -> None:
    offenders = {}
    for top in PRODUCTION:
        for path in sorted((ROOT / top).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative.parts[:2] == ("apps", "lab"):
                continue
            # "apps.x.__init__" for a package: its relative imports start at apps.x too.
            module = ".".join(relative.with_suffix("").parts)
            found = lab_imports(path.read_text(), module)
            if found:
                offenders[str(relative)] = found
    assert offenders == {}


@pytest.mark.django_db
def test_with_the_lab_off_its_routes_are_the_apis_404(django_user_model) -> None:
    """By default the naive issue, the gate-only ablation (which drops the durable record),
    the synchronous checkout, the naive wallet variant and the no-op baselines are unknown
    routes: JSON 404s under /api/, and the lab app is not installed."""
    from django.apps import apps
    from django.conf import settings

    assert settings.LAB_ENABLED is False
    assert not apps.is_installed("apps.lab")
    client = APIClient()
    client.force_authenticate(django_user_model.objects.create_user("bench-probe"))
    for path in LAB_ROUTES:
        response = client.post(path, {}, format="json")
        assert response.status_code == 404, path
        if path.startswith("/api/"):
            assert response.json()["code"] == "not_found"
    # The API itself is routed, so the 404s are the lab's absence, not a broken URLconf.
    assert client.get("/api/ops/pings/").status_code == 200


# Run in a fresh interpreter, so that neither this test session's imports (tests/lab
# imports the lab) nor its settings decide what a process with the switch as given sees.
PROBE = f"""
import json, sys
import django
from django.core.management import call_command
django.setup()
from django.apps import apps
from django.urls import Resolver404, resolve
from config.celery import app
call_command("check", fail_level="ERROR")
app.loader.import_default_modules()
resolved = {{}}
for path in {LAB_ROUTES!r}:
    try:
        match = resolve(path)
    except Resolver404:
        continue
    resolved[path] = match.func.__module__
print(json.dumps({{
    "installed": apps.is_installed("apps.lab"),
    "imported": sorted(m for m in sys.modules if m == "apps.lab" or m.startswith("apps.lab.")),
    "resolved": resolved,
    "tasks": sorted(t for t in app.tasks if t in {LAB_TASKS!r}),
}}))
"""


def _probe(lab_enabled: str | None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "LAB_ENABLED"}
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    if lab_enabled is not None:
        env["LAB_ENABLED"] = lab_enabled
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_switch_installs_routes_and_registers_the_lab_or_none_of_it() -> None:
    assert (
        _probe(None)
        == _probe("false")
        == {
            "installed": False,
            "imported": [],
            "resolved": {},
            "tasks": [],
        }
    )
    on = _probe("true")
    assert on["installed"] is True
    assert on["resolved"] == {path: "apps.lab.api" for path in LAB_ROUTES}
    assert on["tasks"] == sorted(LAB_TASKS)
