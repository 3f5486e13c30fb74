"""The Celery app: queues, routes and the delivery guarantees every Surge task relies on."""

from __future__ import annotations

import os

from celery import Celery
from kombu import Exchange, Queue
from kombu.transport import TRANSPORT_ALIASES

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# redis:// means kombu's Redis transport with one shared client per connection pool instead
# of a new client object per write (tasks/broker.py). An alias rather than the
# `broker_transport` setting, so the broker URL Celery and Flower show stays redis://.
TRANSPORT_ALIASES["redis"] = "tasks.broker:Transport"

app = Celery("surge")
# Lazy: CELERY_* Django settings (broker URL and transport options, worker concurrency and
# events: every knob, read in config/settings.py) are read on first use, so importing
# `config` stays cheap and free of side effects. What this module sets is structure: it
# does not change per deployment.
app.config_from_object("django.conf:settings", namespace="CELERY")

# Saga turns spend most of their time waiting on other services (the payment gateway):
# they have a queue of their own, consumed by a worker with a threads pool that waits on many
# calls at once (Procfile `worker_saga`), so a slow gateway never holds the prefork workers'
# processes, and bulk work never delays a saga (nor the other way round).
SAGA_QUEUE = "saga"
QUEUES = ("high", "default", "bulk", SAGA_QUEUE)

# The longest hard time limit of any queue. The Redis transport re-delivers an unacked
# message after `visibility_timeout` (CELERY_BROKER_TRANSPORT_OPTIONS in config/settings.py,
# twice this by default), so it must be longer than any task may run, or a slow task would
# be handed to a second worker while the first is still at it.
LONGEST_HARD_LIMIT_S = 600

app.conf.update(
    broker_connection_retry_on_startup=True,
    # Only JSON crosses the broker: never pickle.
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    # At-least-once delivery: ack after the task ran, and re-queue it when the worker
    # process dies under it. Every consumer is idempotent to make that safe.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue="default",
    # Each queue on its own exchange and key, so a route by exchange/key reaches one queue.
    task_queues=[Queue(name, Exchange(name), routing_key=name) for name in QUEUES],
    task_routes={"tasks.saga_advance": {"queue": SAGA_QUEUE}},
    task_default_exchange="default",
    task_default_routing_key="default",
    task_create_missing_queues=False,
    task_soft_time_limit=LONGEST_HARD_LIMIT_S - 30,
    task_time_limit=LONGEST_HARD_LIMIT_S,
    # Keep Django's LOGGING (structured lines with request ids) in the worker too.
    worker_hijack_root_logger=False,
    # Worker events (CELERY_WORKER_SEND_TASK_EVENTS) feed Flower's task views. "sent" events
    # would add a second broker write to every publish, so they stay off.
    task_send_sent_event=False,
    beat_scheduler="django_celery_beat.schedulers:DatabaseScheduler",
    beat_schedule={
        # Outbox rows left unsent, or published into a Redis that has since lost its data.
        "outbox-sweep": {
            "task": "tasks.outbox_sweep",
            "schedule": 2.0,
            "options": {"queue": "high", "expires": 10},
        },
        "outbox-prune": {
            "task": "tasks.outbox_prune",
            "schedule": 3600.0,
            "options": {"queue": "bulk"},
        },
        "purge-idempotency-records": {
            "task": "core.purge_idempotency_records",
            "schedule": 3600.0,
        },
        "prune-trace-events": {"task": "tasks.trace_prune", "schedule": 3600.0},
        # Accepted coupon requests whose drain message was lost; gates Redis forgot.
        "coupons-sweep": {"task": "coupons.sweep", "schedule": 5.0},
        "coupons-reconcile": {"task": "coupons.reconcile", "schedule": 10.0},
        # Wallets with pending transactions whose drain wake was lost.
        "wallets-sweep": {
            "task": "wallets.sweep",
            "schedule": 2.0,
            "options": {"queue": "high", "expires": 10},
        },
        # Web Push deliveries due (a retry, a lost wake, a dead worker's lapsed claim).
        "notifications-webpush-sweep": {
            "task": "notifications.webpush_sweep",
            "schedule": 2.0,
            "options": {"queue": "high", "expires": 10},
        },
        # Mails due (a lost wake, a retry whose backoff passed, a dead worker's lease).
        "emails-sweep": {
            "task": "emails.sweep",
            "schedule": 2.0,
            "options": {"queue": "high", "expires": 10},
        },
        # Sagas due for a retry, whose advance message was lost, or whose runner died.
        "saga-wake": {"task": "tasks.saga_wake", "schedule": 2.0},
    },
    timezone="UTC",
)

app.autodiscover_tasks()
