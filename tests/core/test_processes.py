"""Flower's basic auth and production mode's refusal to start half-configured."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests

from ..harness import LiveProcess, free_port, http_ready

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.live
def test_flower_requires_basic_auth(live_env: dict[str, str], tmp_path) -> None:
    port = free_port()
    flower = LiveProcess(
        "flower",
        [
            "celery",
            "-A",
            "config",
            "flower",
            "--address=127.0.0.1",
            f"--port={port}",
            "--basic-auth=ops:s3cret",
        ],
        env=live_env,
        log_dir=tmp_path,
        url=f"http://127.0.0.1:{port}",
        ready=lambda p: _answers(f"{p.url}/healthcheck"),
    )
    flower.start()
    try:
        for path in ("/", "/workers", "/tasks", "/api/workers", "/api/tasks"):
            response = requests.get(f"{flower.url}{path}", timeout=5)
            assert response.status_code == 401, path
        ok = requests.get(f"{flower.url}/", auth=("ops", "s3cret"), timeout=5)
        assert ok.status_code == 200
        assert requests.get(f"{flower.url}/", auth=("ops", "wrong"), timeout=5).status_code == 401
    finally:
        flower.stop()


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=1)
        return True
    except requests.RequestException:
        return False


def _django_setup(extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update(extra_env)
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('started')"],
        cwd=ROOT,
        env=env | {"DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_mode_refuses_the_development_secret() -> None:
    result = _django_setup({"DJANGO_DEBUG": "false", "DJANGO_ALLOWED_HOSTS": "surge.example"})
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_production_mode_refuses_without_allowed_hosts() -> None:
    result = _django_setup({"DJANGO_DEBUG": "false", "DJANGO_SECRET_KEY": "k" * 50})
    assert result.returncode != 0
    assert "DJANGO_ALLOWED_HOSTS" in result.stderr


def test_production_mode_starts_when_configured() -> None:
    result = _django_setup(
        {
            "DJANGO_DEBUG": "false",
            "DJANGO_SECRET_KEY": "k" * 50,
            "DJANGO_ALLOWED_HOSTS": "surge.example",
        }
    )
    assert result.returncode == 0, result.stderr
    assert "started" in result.stdout


__all__ = ["http_ready"]
