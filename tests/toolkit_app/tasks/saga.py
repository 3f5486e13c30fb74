"""The "toolkit.demo" saga: reserve -> charge -> confirm (the point of no return) over a
SagaLedger row, its behaviour scripted by the saga context:

    {"ledger_id": 1, "amount": 5,
     "fail_at": "charge",                  # StepFailed("charge_refused") at that step
     "bug_at": "charge",                   # an unexpected error (KeyError) at that step
     "transient": {"reserve": 2},          # the first 2 attempts raise StepRetry
     "sleep_ms": {"reserve": 300},         # the step takes this long (inside its transaction)
     "hold": {"charge": "switch-name"},    # the step waits until that SagaSwitch is on
     "compensation_fails": {"release": "switch-name"}}  # that compensation fails while off

Compensations: reserve -> "release", charge -> "refund"; confirm has none. Effects are
recorded under the row's name (step or compensation).

Defined here (imported by the worker's task autodiscovery and by the tests); an app would
define its sagas in `apps/<app>/sagas.py`, imported from its AppConfig.ready().
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from django.db.models import F

from tasks.saga import Step, StepContext, StepFailed, StepRetry, define_saga
from tests.toolkit_app.models.saga import SagaEffect, SagaLedger, SagaSwitch

__all__ = ["DEMO"]

HOLD_LIMIT_S = 30.0


def _switch_on(name: str) -> bool:
    return SagaSwitch.objects.filter(name=name, on=True).exists()


def _script(ctx: StepContext, name: str) -> None:
    script = ctx.context
    hold = script.get("hold", {}).get(name)
    if hold:
        deadline = time.monotonic() + HOLD_LIMIT_S
        while not _switch_on(hold):
            if time.monotonic() > deadline:
                raise StepRetry(f"{name} held too long by {hold}")
            time.sleep(0.05)
    sleep_ms = script.get("sleep_ms", {}).get(name, 0)
    if sleep_ms:
        time.sleep(sleep_ms / 1000)
    if ctx.attempt <= script.get("transient", {}).get(name, 0):
        raise StepRetry(f"{name} attempt {ctx.attempt} timed out")
    if script.get("fail_at") == name:
        raise StepFailed(f"{name}_refused", f"{name} refused by script")
    if script.get("bug_at") == name:
        raise KeyError(f"{name} has a bug")


def _effect(ctx: StepContext, **changes: Any) -> None:
    ledger_id = ctx.context["ledger_id"]
    SagaLedger.objects.filter(pk=ledger_id).update(**changes)
    SagaEffect.objects.create(
        ledger_id=ledger_id,
        saga_id=ctx.saga_id,
        step=ctx.step,
        direction=ctx.direction,
        attempt=ctx.attempt,
    )


def _forward(name: str, **changes: Any) -> Any:
    def run(ctx: StepContext) -> Mapping[str, Any]:
        _script(ctx, name)
        _effect(ctx, **changes)
        return {f"{name}_attempts": ctx.attempt}

    return run


def _compensate(**changes: Any) -> Any:
    def undo(ctx: StepContext) -> None:
        switch = ctx.context.get("compensation_fails", {}).get(ctx.step)
        if switch and not _switch_on(switch):
            raise StepRetry(f"{ctx.step}: switch {switch} is off")
        _effect(ctx, **changes)

    return undo


# Fast backoff so retries take milliseconds, not seconds.
FAST = {"backoff_base": 0.05, "backoff_max": 0.5}

DEMO = define_saga(
    "toolkit.demo",
    steps=[
        Step(
            "reserve",
            forward=_forward("reserve", reserved=F("reserved") + 1),
            compensate=_compensate(reserved=F("reserved") - 1),
            compensate_name="release",
            max_attempts=4,
            compensate_max_attempts=3,
            **FAST,
        ),
        Step(
            "charge",
            forward=_forward("charge", charged=F("charged") + 1),
            compensate=_compensate(charged=F("charged") - 1),
            compensate_name="refund",
            max_attempts=4,
            compensate_max_attempts=3,
            **FAST,
        ),
        Step(
            "confirm",
            forward=_forward("confirm", confirmed=True),
            point_of_no_return=True,
            max_attempts=4,
            **FAST,
        ),
    ],
)
