"""VAPID settings (development pair kept under the run folder, production without keys has
Web Push off) and the checks of a browser subscription's keys."""

from __future__ import annotations

import json
import multiprocessing
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.core.exceptions import ImproperlyConfigured

from apps.notifications.webpush.keys import (
    DEV_VAPID_SUBJECT,
    VAPID_KEY_FILE_NAME,
    InvalidSubscriptionKeys,
    b64url_decode,
    b64url_encode,
    subscription_keys_check,
    vapid_keys_generate,
    vapid_settings,
)


def resolve(run_dir: Path, *, debug: bool = True, **given: str) -> tuple[str, str, str]:
    options = {"public_key": "", "private_key": "", "subject": ""} | given
    return vapid_settings(debug=debug, run_dir=run_dir, **options)


def test_a_generated_pair_is_a_p256_pair_browsers_accept() -> None:
    pair = vapid_keys_generate()
    point = b64url_decode(pair.public_key)
    scalar = b64url_decode(pair.private_key)

    assert len(point) == 65 and point[0] == 4 and len(scalar) == 32
    assert "=" not in pair.public_key + pair.private_key
    derived = ec.derive_private_key(int.from_bytes(scalar, "big"), ec.SECP256R1()).public_key()
    assert (
        derived.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        == point
    )


def test_development_generates_a_pair_once_and_keeps_it(tmp_path: Path) -> None:
    first = resolve(tmp_path)
    second = resolve(tmp_path)

    assert first == second
    assert first[2] == DEV_VAPID_SUBJECT
    key_file = tmp_path / VAPID_KEY_FILE_NAME
    assert json.loads(key_file.read_text())["public_key"] == first[0]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [VAPID_KEY_FILE_NAME]  # no temp left


def _resolve_in_child(run_dir: str, results: multiprocessing.Queue) -> None:
    results.put(resolve(Path(run_dir))[:2])


def test_processes_starting_together_agree_on_one_pair(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue = context.Queue()
    children = [
        context.Process(target=_resolve_in_child, args=(str(tmp_path), results)) for _ in range(6)
    ]
    for child in children:
        child.start()
    pairs = {results.get(timeout=30) for _ in children}
    for child in children:
        child.join(timeout=30)

    assert len(pairs) == 1
    assert pairs == {resolve(tmp_path)[:2]}


def test_production_without_keys_has_web_push_off_and_keys_need_a_subject(
    tmp_path: Path,
) -> None:
    pair = vapid_keys_generate()
    # No keys: Web Push is off, nothing is generated, the rest of the system starts.
    assert resolve(tmp_path, debug=False) == ("", "", "")
    assert resolve(tmp_path, debug=False, subject="mailto:ops@example.com")[:2] == ("", "")
    with pytest.raises(ImproperlyConfigured, match="VAPID_SUBJECT"):
        resolve(tmp_path, debug=False, public_key=pair.public_key, private_key=pair.private_key)
    assert not (tmp_path / VAPID_KEY_FILE_NAME).exists()


def test_configured_keys_are_used_as_given(tmp_path: Path) -> None:
    pair = vapid_keys_generate()

    public_key, private_key, subject = resolve(
        tmp_path,
        debug=False,
        public_key=pair.public_key + "=",  # padding is tolerated and dropped
        private_key=pair.private_key,
        subject="mailto:ops@example.com",
    )

    assert (public_key, private_key, subject) == (*pair, "mailto:ops@example.com")
    assert not (tmp_path / VAPID_KEY_FILE_NAME).exists()


@pytest.mark.parametrize(
    "given",
    [
        {"public_key": "only-one"},
        {"public_key": vapid_keys_generate().public_key, "private_key": "not base64url!"},
        {"public_key": vapid_keys_generate().public_key, "private_key": b64url_encode(b"x" * 31)},
        # A valid pair's halves from two pairs.
        {"public_key": vapid_keys_generate().public_key, "private_key": vapid_keys_generate()[1]},
        {"subject": "ops@example.com"},
    ],
)
def test_bad_configuration_is_refused(tmp_path: Path, given: dict[str, str]) -> None:
    with pytest.raises(ImproperlyConfigured):
        resolve(tmp_path, **given)


def test_a_damaged_key_file_is_an_error_not_a_silent_new_pair(tmp_path: Path) -> None:
    (tmp_path / VAPID_KEY_FILE_NAME).write_text("{not json")

    with pytest.raises(ImproperlyConfigured, match="delete it"):
        resolve(tmp_path)


def _browser_keys() -> tuple[str, str]:
    private = ec.generate_private_key(ec.SECP256R1())
    point = private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return b64url_encode(point), b64url_encode(b"a" * 16)


def test_browser_subscription_keys_pass() -> None:
    p256dh, auth = _browser_keys()
    subscription_keys_check(p256dh=p256dh, auth=auth)


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("p256dh", lambda k: k.replace("-", "+").replace("_", "/") + "+/"),  # base64, not url
        ("p256dh", lambda k: k[:-4]),  # too short
        ("p256dh", lambda k: b64url_encode(b"\x02" + b64url_decode(k)[1:33])),  # compressed
        ("p256dh", lambda k: b64url_encode(b"\x04" + b"\x01" * 64)),  # not on the curve
        ("auth", lambda k: b64url_encode(b"a" * 15)),  # wrong length
        ("auth", lambda k: "not*base64"),
    ],
)
def test_malformed_subscription_keys_are_refused(field: str, change: object) -> None:
    keys = dict(zip(("p256dh", "auth"), _browser_keys(), strict=True))
    keys[field] = change(keys[field])  # type: ignore[operator]

    with pytest.raises(InvalidSubscriptionKeys) as raised:
        subscription_keys_check(**keys)
    assert raised.value.field == field
