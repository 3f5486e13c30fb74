"""Applying the pending commands in seq order: of one key (`apply_pending`), or of many keys
in one transaction (`apply_pending_keys`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from django.db import models, router, transaction
from django.db.models import F, Q
from django.utils import timezone

from ..models.ordering import CommandStatus, OrderedCommand, OrderedKey
from ..outbox import outbox_enqueue
from .outcome import ApplyOutcome, ApplyReport, C, K, OrderingError
from .store import (
    command_extra_fields,
    command_key_fk,
    key_save_fields,
    write_decisions,
    write_keys,
)

logger = logging.getLogger(__name__)


def apply_pending(
    *,
    key_model: type[K],
    command_model: type[C],
    key_id: int,
    apply: Callable[[K, C], ApplyOutcome],
    batch_size: int = 200,
    command_fields: Sequence[str] = (),
    continue_task: str | None = None,
) -> ApplyReport:
    """Apply the pending commands of `key_id` in seq order, at most `batch_size` of them.

    Invariants, whoever runs it and however often:
    - commands are decided strictly as `last_applied_seq + 1, + 2, …`; the run stops at
      the first seq that is not visible (a gap) and never skips it;
    - each command is decided exactly once: the key row is locked (blocking), so a
      concurrent run waits and then starts from what this one applied;
    - all of a batch or nothing: the command statuses, the fields in `command_fields`,
      the key (every field the callback changed) and its `last_applied_seq` are written
      in one transaction, and an exception from `apply` rolls it all back and propagates.

    The callback sees `key.last_applied_seq == command.seq - 1`. When the batch was full
    and commands remain, `continue_task` (if given) is enqueued with `[key_id]` through
    the outbox in the same transaction. A missing key is a quiet no-op.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    fk, extra_fields, using = _bind(key_model, command_model, command_fields)

    with transaction.atomic(using=using):
        key = (
            key_model._default_manager.using(using)
            .select_for_update(no_key=True)
            .filter(pk=key_id)
            .first()
        )
        if key is None:
            logger.info("ordering: %s %s is gone, nothing to apply", key_model._meta.label, key_id)
            return ApplyReport(key_id=key_id, key_found=False)
        start = key.last_applied_seq
        if start >= key.last_seq:
            return ApplyReport(key_id=key_id, last_applied_seq=start)

        commands = list(
            command_model._default_manager.using(using)
            .filter(**{fk.attname: key_id, "seq__gt": start, "status": CommandStatus.PENDING})
            .order_by("seq")[:batch_size]
        )
        decided = _decide(key, commands, apply)
        applied = sum(1 for command in decided if command.status == CommandStatus.APPLIED)
        rejected = len(decided) - applied

        has_more, waiting_for = _progress(key, len(decided), batch_size)
        if waiting_for is not None:
            logger.info(
                "ordering: %s %s waits for seq %s", key_model._meta.label, key_id, waiting_for
            )
        if decided:
            write_decisions(command_model, decided, extra_fields, timezone.now(), using)
            key.save(using=using, update_fields=key_save_fields(key_model))
        if has_more and continue_task:
            outbox_enqueue(continue_task, args=[key_id])
    return ApplyReport(
        key_id=key_id,
        applied=applied,
        rejected=rejected,
        last_applied_seq=key.last_applied_seq,
        has_more=has_more,
        waiting_for_seq=waiting_for,
    )


def apply_pending_keys(
    *,
    key_model: type[K],
    command_model: type[C],
    apply: Callable[[K, C], ApplyOutcome],
    max_keys: int = 100,
    batch_size: int = 200,
    command_fields: Sequence[str] = (),
    exclude: Sequence[int] = (),
    on_decided: Callable[[K, list[C]], None] | None = None,
) -> list[ApplyReport]:
    """`apply_pending` for up to `max_keys` keys with pending commands at once, found by the
    database, in one transaction of four statements whatever the number of keys.

    Invariants: those of `apply_pending` for every key (strict seq order, stop at a gap,
    each command decided once, all or nothing). The keys are locked with SKIP LOCKED: a
    key another applier holds is left to it, and that applier took its lock after every
    accept that committed before this call (an accept holds the key's lock until it
    commits), so it sees their commands. The keys are found with `last_applied_seq <
    last_seq`: give the key model a partial index on that condition. An exception from
    `apply` rolls the whole pass back and propagates (callers that must isolate keys from
    each other fall back to `apply_pending` per key). `on_decided(key, commands)` runs
    after the commit for every key that decided something. Returns one report per key
    that was locked.
    """
    if batch_size < 1 or max_keys < 1:
        raise ValueError("batch_size and max_keys must be at least 1")
    fk, extra_fields, using = _bind(key_model, command_model, command_fields)
    reports: list[ApplyReport] = []
    done: list[tuple[K, list[C]]] = []
    with transaction.atomic(using=using):
        pending = key_model._default_manager.using(using).filter(last_applied_seq__lt=F("last_seq"))
        if exclude:
            pending = pending.exclude(pk__in=list(exclude))
        keys = list(
            pending.select_for_update(no_key=True, skip_locked=True).order_by("pk")[:max_keys]
        )
        if not keys:
            return reports
        # Seqs are gapless, so (start, start + batch_size] bounds each key's batch; the
        # unique (key, seq) index serves each range.
        window = Q()
        for key in keys:
            start = key.last_applied_seq
            window |= Q(**{fk.attname: key.pk, "seq__gt": start, "seq__lte": start + batch_size})
        by_key: dict[Any, list[C]] = {key.pk: [] for key in keys}
        for command in (
            command_model._default_manager.using(using)
            .filter(window, status=CommandStatus.PENDING)
            .order_by(fk.attname, "seq")
        ):
            by_key[getattr(command, fk.attname)].append(command)
        decided_all: list[C] = []
        changed: list[K] = []
        for key in keys:
            decided = _decide(key, by_key[key.pk], apply)
            has_more, waiting_for = _progress(key, len(decided), batch_size)
            reports.append(
                ApplyReport(
                    key_id=key.pk,
                    applied=sum(1 for c in decided if c.status == CommandStatus.APPLIED),
                    rejected=sum(1 for c in decided if c.status == CommandStatus.REJECTED),
                    last_applied_seq=key.last_applied_seq,
                    has_more=has_more,
                    waiting_for_seq=waiting_for,
                )
            )
            if decided:
                decided_all.extend(decided)
                changed.append(key)
                done.append((key, decided))
        if decided_all:
            now = timezone.now()
            write_decisions(command_model, decided_all, extra_fields, now, using)
            write_keys(key_model, changed, using)
    if on_decided:
        for key, decided in done:
            on_decided(key, decided)
    return reports


def _bind(
    key_model: type[OrderedKey], command_model: type[OrderedCommand], command_fields: Sequence[str]
) -> tuple[models.ForeignKey, tuple[models.Field[Any, Any], ...], str]:
    """Checks that `command_model` is ordered by `key_model`: (its ForeignKey to the key,
    the extra command fields an applier may write, the database alias to write to)."""
    fk_model, fk = command_key_fk(command_model)
    if fk_model is not key_model:
        raise OrderingError(
            f"{command_model._meta.label} is not ordered by {key_model._meta.label}"
        )
    extra_fields = command_extra_fields(command_model, tuple(command_fields))
    return fk, extra_fields, router.db_for_write(key_model)


def _progress(key: OrderedKey, decided: int, batch_size: int) -> tuple[bool, int | None]:
    """After a pass over `key`: (has_more, waiting_for_seq). Commands remain either because
    the batch was full (run again) or because the next seq is not visible yet (a gap)."""
    if key.last_applied_seq >= key.last_seq:
        return False, None
    if decided == batch_size:
        return True, None
    return False, key.last_applied_seq + 1


def _decide(key: K, commands: Sequence[C], apply: Callable[[K, C], ApplyOutcome]) -> list[C]:
    """Runs `apply` on `commands` (one key's, in seq order) while they follow on from
    `key.last_applied_seq`; returns the decided ones."""
    decided: list[C] = []
    for command in commands:
        if command.seq != key.last_applied_seq + 1:
            break  # a gap: a later seq is visible, the next one is not
        outcome = apply(key, command)
        if not isinstance(outcome, ApplyOutcome):
            raise OrderingError(f"apply returned {outcome!r}, not an ApplyOutcome")
        if outcome.status not in (CommandStatus.APPLIED, CommandStatus.REJECTED):
            raise OrderingError(f"apply decided {outcome.status!r} for seq {command.seq}")
        command.status = outcome.status
        command.reason = outcome.reason
        key.last_applied_seq = command.seq
        decided.append(command)
    return decided
