"""`make run`, after the services are up: migrate, bootstrap, print the URLs, start the
Procfile with honcho. Ctrl-C reaches honcho, which stops every process it started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent


def _manage(*args: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], check=True, cwd=ROOT)


def _urls() -> list[tuple[str, str]]:
    host = os.environ.get("PUBLIC_HOST", "localhost")
    web = f"http://{host}:{os.environ.get('WEB_PORT', '8000')}"
    ws = f"ws://{host}:{os.environ.get('WS_PORT', '8001')}"
    flower = f"http://{host}:{os.environ.get('FLOWER_PORT', '5555')}"
    return [
        ("home", f"{web}/"),
        ("API docs", f"{web}/api/docs/"),
        ("OpenAPI", f"{web}/api/schema/"),
        ("admin", f"{web}/admin/"),
        ("readiness", f"{web}/readyz"),
        ("WebSockets", f"{ws}/ws/"),
        ("Flower", f"{flower}/ (basic auth {os.environ.get('FLOWER_BASIC_AUTH', 'admin:admin')})"),
        ("gateway", f"http://{host}:{os.environ.get('FAKE_GATEWAY_PORT', '8010')}/v1/stats"),
        ("caught mail", f"{web}/emails/dev/caught/ (staff; the development SMTP sink)"),
    ]


def _align_gateway_port() -> None:
    """The bundled gateway must listen where Surge will call it: a loopback
    PAYMENT_GATEWAY_URL decides its port, else FAKE_GATEWAY_PORT decides the URL."""
    url = os.environ.get("PAYMENT_GATEWAY_URL")
    if url:
        parts = urlsplit(url)
        if parts.hostname in {"127.0.0.1", "localhost", "::1"} and parts.port:
            os.environ.setdefault("FAKE_GATEWAY_PORT", str(parts.port))
    else:
        port = os.environ.get("FAKE_GATEWAY_PORT", "8010")
        os.environ["PAYMENT_GATEWAY_URL"] = f"http://127.0.0.1:{port}"


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _processes() -> list[str]:
    """The Procfile's processes to start: all of them, except the development SMTP sink
    when EMAIL_HOST names a real relay (a loopback host, or none, means the sink)."""
    names = []
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, sep, _ = line.partition(":")
        if sep and name.strip() and not name.startswith("#"):
            names.append(name.strip())
    if os.environ.get("EMAIL_HOST", "127.0.0.1") not in LOOPBACK:
        names.remove("smtp")
    return names


def main() -> None:
    _align_gateway_port()
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    _manage("migrate", "--noinput", "-v", "0")
    if os.environ.get("DJANGO_DEBUG", "true").lower() in {"0", "false", "no", "off"}:
        _manage("collectstatic", "--noinput", "-v", "0")
    _manage("bootstrap")
    operator = os.environ.get("DJANGO_SUPERUSER_USERNAME", "admin")
    print(
        "\nSurge is starting. Operator account:",
        operator,
        "(password from DJANGO_SUPERUSER_PASSWORD,",
    )
    print("'admin' in development). URLs:")
    for name, url in _urls():
        print(f"  {name:<11} {url}")
    print("Ctrl-C stops every process.\n", flush=True)
    os.chdir(ROOT)
    os.execvp("honcho", ["honcho", "start", "-f", str(ROOT / "Procfile"), *_processes()])


if __name__ == "__main__":
    main()
