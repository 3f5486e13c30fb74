"""Transactional outbox: a task is published only after the transaction that created its
work commits, and never lost after that.

    with transaction.atomic():
        thing = Thing.objects.create(...)
        outbox_enqueue("things.process", args=[thing.pk], key=f"process-{thing.pk}")

1. `outbox_enqueue` writes an `OutboxMessage` row in the caller's transaction (in autocommit
   the row commits at once).
2. After the commit a relay publishes every row of that transaction in one batch (Redis
   pipelines: one round trip per up to 500 messages), then marks them sent with one
   UPDATE. A crash (or a broker error) in between leaves rows unsent.
3. A beat sweeper (`tasks.outbox_sweep`, every ~2 s) republishes, in batches claimed with
   `SELECT … FOR UPDATE SKIP LOCKED` (so sweepers on several hosts never take the same
   rows), every row that may have been lost:
   - unsent rows older than `OUTBOX_SWEEP_UNSENT_AFTER_S` (crash between commit and relay);
   - sent rows not yet done that were published in an older *broker epoch* (below);
   - sent rows not done after `OUTBOX_REPUBLISH_UNCONFIRMED_AFTER_S` (any other loss).
4. The worker marks a row done when its task finished for good (success, dead letter,
   ignored): a `task_postrun` receiver, keyed by the `outbox_id` header.

The hard case is a row marked sent whose message was still in Redis when Redis lost its
data (restart without persistence, failover to a lagging replica, a flush): the row looks
sent, the message is gone. Rows therefore stay "in flight" until the worker confirms them,
and every publication is stamped with the epoch of the broker's data it went into. The
epoch is a number kept in a Redis key on the broker itself and allocated from PostgreSQL
(`OutboxEpoch`, ids only grow) whenever that key is missing, which is exactly when Redis
has lost its data. So "in flight and stamped with an epoch below the current one" means
"its message may have been lost": the sweeper publishes those again at once. The epoch is
read *before* publishing, so a stamp can only be too old (a needless second publication,
harmless: consumers are idempotent), never too new (a loss nobody notices). The long
unconfirmed timeout is the net under everything else, set well above the visibility
timeout plus the longest hard limit so normal redelivery has had its chance first, and
republishing at most once per window so a backlog cannot snowball.

Every message carries `task_id = "outbox-<row id>"` and the headers `outbox_id` and
`message_id` (the logical id consumers dedupe on, tasks/consumers.py), so every publication
of one row is the same message to its consumer. Rows done for longer than
`OUTBOX_RETENTION_DAYS` are pruned (`tasks.outbox_prune`, hourly); the dedupe window of
`key` is that retention.

The package, and what its modules give each other (everything else is the package's own
interface, imported from `tasks.outbox`):
- `enqueue`: the row, in the caller's transaction;
- `relay`: `transaction_batch()` (the rows of the open transaction, published by one
  `on_commit` hook) and `relay_rows(rows)` (publish committed rows now, never raises);
- `publish`: `publish_rows(producer, rows, attempts=)` (to the broker, pipelined; a row that
  can never be published is reported to `tasks.failures` and marked done) and
  `mark_sent(rows, epoch, only_unsent=)`;
- `epoch`: `broker_epoch(producer, fresh=)`, the broker's epoch (cached for a second);
- `sweeper`: the sweeper and the pruning; `jobs`: the beat's Celery tasks;
- `confirm`: done, from the worker's `task_postrun` or `tasks.failures.message_done`.
The package imports nothing from the rest of the toolkit but its models, context, tracing
and `tasks.failures`: SurgeTask and the dead letters use the outbox, never the reverse.
"""

from __future__ import annotations

from .confirm import outbox_confirm, outbox_id_of  # and its task_postrun receiver
from .enqueue import enqueue_message, outbox_enqueue
from .epoch import outbox_broker_epoch
from .jobs import prune, sweep  # the Celery tasks, registered on import
from .publish import TASK_ID_PREFIX
from .sweeper import outbox_prune, outbox_sweep

__all__ = [
    "TASK_ID_PREFIX",
    "enqueue_message",
    "outbox_broker_epoch",
    "outbox_confirm",
    "outbox_enqueue",
    "outbox_id_of",
    "outbox_prune",
    "outbox_sweep",
    "prune",
    "sweep",
]
