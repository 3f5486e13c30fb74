"""Per-key ordering: commands get a gapless `seq` when accepted and are applied strictly in it.

Why: with at-least-once delivery and many workers, two commands for one key (a credit and a
debit) can run in either order, twice, or at the same time. Here the order is fixed when a
command is accepted (its `seq`, assigned in the accepting transaction) and enforced when it
is applied (the applier locks the key and takes `last_applied_seq + 1, + 2, …` only). Any
worker may run the applier, any number of times, in any order: the result is the same.
Unrelated keys never wait for each other: the only lock is the key's own row.

Models: a key model subclasses `OrderedKey`, a command model subclasses `OrderedCommand`
(see `tasks.models.ordering` for the exact recipe).

Accept (a service, in one transaction)::

    with transaction.atomic():
        # ... validate, authorise ...
        command = accept_command(
            command_model=AccountCommand,
            key_id=account_id,
            apply_task="<app>.apply",
            fields={"kind": kind, "amount": amount},
        )

`accept_command` is `assign_seq` + an insert + `outbox_enqueue("<app>.apply", args=[key_id])`;
an app needing more control calls the three itself, in one transaction. The key row stays
locked until that transaction ends, so accepts for one key queue up behind each other (and
behind a running applier) while other keys proceed.

Apply (a thin task)::

    @shared_task(name="<app>.apply", base=SurgeTask)
    def apply(key_id: int) -> None:
        apply_pending(
            key_model=Account,
            command_model=AccountCommand,
            key_id=key_id,
            apply=services.account_command_apply,   # (key, command) -> ApplyOutcome
            command_fields=["balance_after"],       # command fields the callback sets
            continue_task="<app>.apply",            # re-enqueued when a batch was full
        )

The callback mutates the key object (a balance) and the command object (only the fields
named in `command_fields`), and returns `ApplyOutcome.applied()` or
`ApplyOutcome.rejected(reason)`; a rejecting callback must leave the key untouched. The
library saves both. Business refusals are rejections, never exceptions: an exception rolls
the whole batch back and the key waits until a retry succeeds (strict order means a
command cannot be skipped).

Requires READ COMMITTED (Django's default on PostgreSQL): the applier's command query must
see what committed while it waited for the key lock.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from django.core.exceptions import ImproperlyConfigured
from django.db import connections, models, router, transaction
from django.db.models import F, Q
from django.utils import timezone

from .models.ordering import CommandStatus, OrderedCommand, OrderedKey
from .outbox import outbox_enqueue

__all__ = [
    "ApplyOutcome",
    "ApplyReport",
    "OrderingError",
    "PendingSignal",
    "accept_command",
    "apply_pending",
    "apply_pending_keys",
    "assign_seq",
]

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=OrderedKey)
C = TypeVar("C", bound=OrderedCommand)


class OrderingError(RuntimeError):
    """The ordering library was used against its contract: a bug in the caller."""


@dataclass(frozen=True, slots=True)
class ApplyOutcome:
    """What the apply callback decided for one command."""

    status: CommandStatus
    reason: str = ""

    @classmethod
    def applied(cls) -> ApplyOutcome:
        return cls(CommandStatus.APPLIED)

    @classmethod
    def rejected(cls, reason: str) -> ApplyOutcome:
        return cls(CommandStatus.REJECTED, reason)


@dataclass(frozen=True, slots=True)
class ApplyReport:
    """What one `apply_pending` run did.

    `has_more`: the batch was full and commands remain; run again (`continue_task` does).
    `waiting_for_seq`: the next seq is not visible (a gap); the accept that commits it
    enqueues the applier, so nothing is re-enqueued for it here.
    """

    key_id: int
    applied: int = 0
    rejected: int = 0
    last_applied_seq: int = 0
    has_more: bool = False
    waiting_for_seq: int | None = None
    key_found: bool = True

    @property
    def decided(self) -> int:
        return self.applied + self.rejected


def assign_seq(*, key_model: type[OrderedKey], key_id: int) -> int:
    """The next seq of `key_id`, taken in the caller's transaction.

    Invariants: seqs of one key are 1, 2, 3 … with no gap and no repeat, because the
    increment is part of the accepting transaction (a rollback gives the number back) and
    the row lock it takes serialises accepts of that key until the transaction ends. Other
    keys are not locked. Raises `OrderingError` outside a transaction (an autocommitted
    increment whose command insert then fails would leave a gap for ever), and
    `key_model.DoesNotExist` for an unknown key.
    """
    using = router.db_for_write(key_model)
    connection = connections[using]
    if not connection.in_atomic_block:
        raise OrderingError(
            "assign_seq must run inside transaction.atomic(), in the transaction that "
            "stores the command"
        )
    qn = connection.ops.quote_name
    meta = key_model._meta
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {qn(meta.db_table)} SET {qn('last_seq')} = {qn('last_seq')} + 1 "
            f"WHERE {qn(_column(meta.pk))} = %s RETURNING {qn('last_seq')}",
            [key_id],
        )
        row = cursor.fetchone()
    if row is None:
        raise key_model.DoesNotExist(f"{meta.label} {key_id} does not exist")
    return int(row[0])


def accept_command(
    *,
    command_model: type[C],
    key_id: int,
    apply_task: str | None,
    fields: Mapping[str, Any] | None = None,
    queue: str | None = None,
) -> C:
    """Store one command for `key_id` with the next seq, and have `apply_task` run after commit.

    Joins the caller's transaction if there is one (no savepoint), else opens its own: the
    seq, the command row and the outbox entry commit or vanish together, so an accepted
    command always has a seq and an applier on its way. `apply_task=None` leaves the
    enqueueing to the caller.
    """
    key_model, fk = _key_fk(command_model)
    using = router.db_for_write(command_model)
    with transaction.atomic(using=using, savepoint=False):
        seq = assign_seq(key_model=key_model, key_id=key_id)
        command = command_model(**{fk.attname: key_id, "seq": seq, **(fields or {})})
        command.save(using=using, force_insert=True)
        if apply_task:
            outbox_enqueue(apply_task, args=[key_id], queue=queue)
    return command


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
    fk_model, fk = _key_fk(command_model)
    if fk_model is not key_model:
        raise OrderingError(
            f"{command_model._meta.label} is not ordered by {key_model._meta.label}"
        )
    extra_fields = _command_extra_fields(command_model, tuple(command_fields))
    using = router.db_for_write(key_model)

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
        applied = rejected = 0
        decided: list[C] = []
        for command in commands:
            if command.seq != key.last_applied_seq + 1:
                break  # a gap: a later seq is visible, the next one is not
            outcome = apply(key, command)
            if not isinstance(outcome, ApplyOutcome):
                raise OrderingError(f"apply returned {outcome!r}, not an ApplyOutcome")
            command.status = outcome.status
            command.reason = outcome.reason
            if outcome.status == CommandStatus.APPLIED:
                applied += 1
            elif outcome.status == CommandStatus.REJECTED:
                rejected += 1
            else:
                raise OrderingError(f"apply decided {outcome.status!r} for seq {command.seq}")
            key.last_applied_seq = command.seq
            decided.append(command)

        has_more, waiting_for = _progress(key, len(decided), batch_size)
        if waiting_for is not None:
            logger.info(
                "ordering: %s %s waits for seq %s", key_model._meta.label, key_id, waiting_for
            )
        if decided:
            _write_decisions(command_model, decided, extra_fields, timezone.now(), using)
            key.save(using=using, update_fields=_key_save_fields(key_model))
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
    fk_model, fk = _key_fk(command_model)
    if fk_model is not key_model:
        raise OrderingError(
            f"{command_model._meta.label} is not ordered by {key_model._meta.label}"
        )
    extra_fields = _command_extra_fields(command_model, tuple(command_fields))
    using = router.db_for_write(key_model)
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
            _write_decisions(command_model, decided_all, extra_fields, now, using)
            _write_keys(key_model, changed, using)
    if on_decided:
        for key, decided in done:
            on_decided(key, decided)
    return reports


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


class PendingSignal:
    """Wakes one drain of keys with pending commands, without one message per command.

    Accepts call `notify()` after their commit; it returns True when the caller must
    publish a drain (none is on its way), else it asks the running drain for one more
    pass. The drain calls `begin_pass()` before each pass and, when a pass found nothing,
    `finish()`, which says whether to go again (someone notified since the pass began) or
    ends the drain (the next `notify()` returns True again). Both run as Redis scripts, so
    an accept's notify is seen either by a pass that begins after it (and therefore after
    its commit) or by `finish()`.

    The flag is a lease (`ttl_ms`, renewed by each pass): a drain that died holding it
    stops holding back new drains when it expires. Redis is a hint, never the truth: a
    notify lost with a crash or a Redis outage is the job of a sweeper that calls
    `notify()` while the database shows pending keys.
    """

    _NOTIFY = """
    if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 1 end
    redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
    return 0
    """
    _BEGIN = """
    redis.call('DEL', KEYS[2])
    redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
    return 1
    """
    _FINISH = """
    if redis.call('EXISTS', KEYS[2]) == 1 then return 1 end
    redis.call('DEL', KEYS[1])
    return 0
    """

    def __init__(self, name: str, *, ttl_ms: int = 10_000, client: Any = None) -> None:
        self.keys = [f"surge:ordering:{name}:drain", f"surge:ordering:{name}:again"]
        self.ttl_ms = ttl_ms
        self._client = client

    def _redis(self) -> Any:
        if self._client is not None:
            return self._client
        from apps.core.redis import get_redis

        return get_redis()

    def _run(self, script: str, *args: Any) -> int:
        client = self._redis()
        return int(client.eval(script, 2, *self.keys, *args))

    def notify(self) -> bool:
        return bool(self._run(self._NOTIFY, self.ttl_ms))

    def begin_pass(self) -> None:
        self._run(self._BEGIN, self.ttl_ms)

    def finish(self) -> bool:
        return bool(self._run(self._FINISH))


def _write_keys(key_model: type[OrderedKey], keys: Sequence[OrderedKey], using: str) -> None:
    """`key.save(update_fields=<all but last_seq>)` for every key, in one UPDATE."""
    connection = connections[using]
    qn = connection.ops.quote_name
    meta = key_model._meta
    pk = meta.pk
    assert pk is not None
    fields: list[models.Field[Any, Any]] = [pk]
    for name in _key_save_fields(key_model):
        field = meta.get_field(name)
        assert isinstance(field, models.Field)
        fields.append(field)
    row_sql = "(" + ", ".join(f"%s::{_cast_type(f, connection)}" for f in fields) + ")"
    params: list[Any] = []
    for key in keys:
        params.extend(f.get_db_prep_save(getattr(key, f.attname), connection) for f in fields)
    names = [qn(_column(f)) for f in fields]
    assignments = ", ".join(f"{name} = v.{name}" for name in names[1:])
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {qn(meta.db_table)} AS t SET {assignments} "
            f"FROM (VALUES {', '.join([row_sql] * len(keys))}) AS v({', '.join(names)}) "
            f"WHERE t.{names[0]} = v.{names[0]}",
            params,
        )


@functools.cache
def _key_fk(command_model: type[OrderedCommand]) -> tuple[type[OrderedKey], models.ForeignKey]:
    """The command model's one ForeignKey to an `OrderedKey` model, and that model."""
    if not issubclass(command_model, OrderedCommand):
        raise ImproperlyConfigured(f"{command_model!r} is not an OrderedCommand")
    found = [
        field
        for field in command_model._meta.concrete_fields
        if isinstance(field, models.ForeignKey)
        and isinstance(field.related_model, type)
        and issubclass(field.related_model, OrderedKey)
    ]
    if len(found) != 1:
        raise ImproperlyConfigured(
            f"{command_model._meta.label} needs exactly one ForeignKey to an OrderedKey model, "
            f"has {len(found)}"
        )
    fk = found[0]
    related = fk.related_model
    assert isinstance(related, type) and issubclass(related, OrderedKey)
    return related, fk


@functools.cache
def _command_extra_fields(
    command_model: type[OrderedCommand], names: tuple[str, ...]
) -> tuple[models.Field[Any, Any], ...]:
    reserved = {"seq", "status", "reason", "applied_at", _key_fk(command_model)[1].name}
    fields = []
    for name in names:
        field = command_model._meta.get_field(name)
        if (
            not isinstance(field, models.Field)
            or not field.concrete
            or field.primary_key
            or name in reserved
        ):
            raise ImproperlyConfigured(f"{command_model._meta.label}.{name} cannot be written")
        fields.append(field)
    return tuple(fields)


@functools.cache
def _key_save_fields(key_model: type[OrderedKey]) -> list[str]:
    # Every field but `last_seq`: the callback may change any of them, and `last_seq`
    # belongs to assign_seq (it cannot move while we hold the lock, but must never be
    # written from a stale copy either).
    return [
        field.name
        for field in key_model._meta.concrete_fields
        if not field.primary_key and field.name != "last_seq"
    ]


def _column(field: models.Field[Any, Any]) -> str:
    assert field.column is not None
    return field.column


def _cast_type(field: models.Field[Any, Any], connection: Any) -> str:
    db_type = field.db_type(connection) or "text"
    # An explicit cast to varchar(n) would silently truncate; text keeps the column's
    # length check (assignment raises on an overlong value).
    if re.match(r"^(varchar|character varying|char|character)\b", db_type):
        return "text"
    return db_type


def _write_decisions(
    command_model: type[OrderedCommand],
    commands: Sequence[OrderedCommand],
    extra_fields: Sequence[models.Field[Any, Any]],
    applied_at: datetime,
    using: str,
) -> None:
    """One UPDATE … FROM (VALUES …) for the whole batch, whatever its size."""
    connection = connections[using]
    qn = connection.ops.quote_name
    meta = command_model._meta
    pk = meta.pk
    assert pk is not None
    status = meta.get_field("status")
    reason = meta.get_field("reason")
    applied_at_field = meta.get_field("applied_at")
    assert isinstance(status, models.Field) and isinstance(reason, models.Field)
    assert isinstance(applied_at_field, models.Field)
    columns: list[models.Field[Any, Any]] = [pk, status, reason, *extra_fields]
    row_sql = "(" + ", ".join(f"%s::{_cast_type(f, connection)}" for f in columns) + ")"
    params: list[Any] = [applied_at_field.get_db_prep_save(applied_at, connection)]
    for command in commands:
        params.extend(f.get_db_prep_save(getattr(command, f.attname), connection) for f in columns)
    names = [qn(_column(f)) for f in columns]
    assignments = ", ".join(f"{name} = v.{name}" for name in names[1:])
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {qn(meta.db_table)} AS t "
            f"SET {assignments}, {qn(_column(applied_at_field))} = %s "
            f"FROM (VALUES {', '.join([row_sql] * len(commands))}) AS v({', '.join(names)}) "
            f"WHERE t.{names[0]} = v.{names[0]}",
            params,
        )
