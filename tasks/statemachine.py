"""Explicit state machines: one table of allowed moves per flow, and the two safe ways to
make a move (a conditional UPDATE, or a change to a row the caller holds FOR UPDATE).

    ORDER = StateMachine("order", {
        "pending": {"paid", "cancelled"},
        "paid": {"shipped", "refunded"},
    })
    ORDER.check(order.status, "paid")                      # raises IllegalTransition
    ORDER.update(Order.objects.filter(pk=pk), current="pending", target="paid")
    ORDER.move(order_locked_for_update, "shipped", fields={"shipped_at": now})

A state missing from the table's keys has no way out (it is terminal).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django.db import models

from .errors import IllegalTransition

__all__ = ["StateMachine"]


class StateMachine:
    """The allowed `from -> to` moves of one flow's status field."""

    def __init__(self, name: str, transitions: Mapping[str, Iterable[str]]) -> None:
        self.name = name
        self.transitions: dict[str, frozenset[str]] = {
            str(current): frozenset(str(target) for target in targets)
            for current, targets in transitions.items()
        }

    @property
    def states(self) -> frozenset[str]:
        targets = (t for ts in self.transitions.values() for t in ts)
        return frozenset([*self.transitions, *targets])

    @property
    def terminal(self) -> frozenset[str]:
        return frozenset(s for s in self.states if not self.transitions.get(s))

    def allows(self, current: str, target: str) -> bool:
        return str(target) in self.transitions.get(str(current), frozenset())

    def check(self, current: str, target: str) -> None:
        """Raises IllegalTransition unless the table allows `current -> target`."""
        if not self.allows(current, target):
            raise IllegalTransition(self.name, str(current), str(target))

    def move(
        self,
        instance: models.Model,
        target: str,
        *,
        field: str = "status",
        fields: Mapping[str, Any] | None = None,
        save: bool = True,
    ) -> str:
        """Moves a row the caller has locked (`select_for_update`) inside its transaction.

        Checks the table against the row's current value, sets the target and `fields`, and
        saves only those columns (plus any `auto_now` column). Returns the previous state.
        """
        current = str(getattr(instance, field))
        self.check(current, target)
        setattr(instance, field, target)
        for name, value in (fields or {}).items():
            setattr(instance, name, value)
        if save:
            auto_now = [
                f.name
                for f in instance._meta.concrete_fields
                if getattr(f, "auto_now", False) and f.name not in (fields or {})
            ]
            instance.save(update_fields=[field, *(fields or {}), *auto_now])
        return current

    def update(
        self,
        queryset: models.QuerySet[Any],
        *,
        current: str | Iterable[str],
        target: str,
        field: str = "status",
        strict: bool = True,
        **fields: Any,
    ) -> int:
        """`UPDATE … SET field = target WHERE field IN (current) AND <queryset filter>`.

        The table is checked for every expected `current` before any SQL runs. The WHERE on
        the current state makes a concurrent mover lose cleanly instead of overwriting: with
        `strict` (the default) a queryset that matched rows but none in an expected state
        raises IllegalTransition naming the state actually found; without it the caller gets
        0 and decides. Returns the number of rows moved.
        """
        expected = [current] if isinstance(current, str) else list(current)
        for state in expected:
            self.check(state, target)
        moved = queryset.filter(**{f"{field}__in": expected}).update(**{field: target}, **fields)
        if moved == 0 and strict:
            found = queryset.values_list(field, flat=True).first()
            if found is not None:
                raise IllegalTransition(self.name, str(found), str(target))
        return moved
