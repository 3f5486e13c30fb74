"""The emails pipeline on the real stack: Celery workers (and beat, for the sweep that
brings retries and a dead worker's rows back) sending to a real aiosmtpd server in this
process. Each assertion is on what the SMTP server logged, counted exactly."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from django.db.models import Sum

from apps.emails import services
from apps.emails.models import Email, EmailStatus, Suppression
from tests.conftest import LOG_DIR
from tests.harness import LiveProcess, beat_argv, wait_for

from .conftest import SmtpSink

pytestmark = pytest.mark.live

S = EmailStatus
StartWorkers = Callable[..., list[LiveProcess]]


def smtp_env(sink: SmtpSink) -> dict[str, str]:
    """The workers' SMTP settings: the test's server, and retries in fractions of a second
    (production waits minutes), leases of seconds so a dead worker's rows return soon."""
    return {
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(sink.port),
        "EMAIL_TIMEOUT": "1",
        "EMAIL_BATCH_SIZE": "20",
        "EMAIL_CLAIM_LEASE_S": "10",
        "EMAIL_RETRY_BACKOFF_BASE_S": "0.2",
        "EMAIL_RETRY_BACKOFF_MAX_S": "0.5",
    }


@pytest.fixture
def beat(
    live_env: dict[str, str],
    smtp_sink: SmtpSink,
    transactional_db: None,
    _session_worker: LiveProcess,
) -> Iterator[None]:
    """Celery beat as the Procfile runs it: `emails.sweep` every 2 s.

    The session's shared worker is stopped first: it serves every queue but was started
    without this test's SMTP settings, so it would claim mails and defer them for a
    minute against a server that is not there. A later test's `live_worker` starts it
    again."""
    if _session_worker.alive():
        _session_worker.stop()
    process = LiveProcess(
        "emails-beat",
        beat_argv(),
        env=live_env | smtp_env(smtp_sink),
        log_dir=LOG_DIR,
        ready=lambda p: "beat: Starting" in p.log_text(),
    )
    process.start()
    try:
        yield
    finally:
        process.stop()


def queue_many(addresses: list[str], *, priority: str) -> dict[str, Email]:
    return {
        address: services.email_queue(
            to=address,
            template="generic",
            context={"subject": f"For {address}", "body": "Hello"},
            priority=priority,
        )
        for address in addresses
    }


def settled(emails: dict[str, Email]) -> bool:
    open_ = Email.objects.filter(pk__in=[e.pk for e in emails.values()]).exclude(
        status__in=[S.SENT, S.BOUNCED, S.FAILED]
    )
    return not open_.exists()


def test_retries_bounces_and_counts_match_the_servers_log(
    smtp_sink: SmtpSink, worker_pool: StartWorkers, beat: None
) -> None:
    addresses = [f"r{i:03}@example.com" for i in range(200)]
    greylisted = {a for i, a in enumerate(addresses) if i % 20 == 3}
    unknown = {a for i, a in enumerate(addresses) if i % 50 == 7}
    for address in greylisted:
        smtp_sink.refuse_once[address] = "451 4.7.1 Greylisted, try again"
    for address in unknown:
        smtp_sink.refuse[address] = "550 5.1.1 No such mailbox"
    worker_pool(1, concurrency=2, env=smtp_env(smtp_sink))

    emails = queue_many(addresses, priority="bulk")
    wait_for(lambda: settled(emails), timeout=45, interval=0.3, what="every mail settled")

    rows = {e.to: e for e in Email.objects.filter(pk__in=[e.pk for e in emails.values()])}
    arrivals = smtp_sink.snapshot()
    per_recipient = Counter(a.to for a in arrivals)
    delivered = set(addresses) - unknown
    assert per_recipient == Counter({a: 1 for a in delivered})  # exactly once each
    assert {a.to: a.message_id for a in arrivals} == {a: rows[a].message_id for a in delivered}
    assert {rows[a].status for a in delivered} == {S.SENT}
    # The 451s arrived on their retry: one refusal each, then the message.
    refusals = Counter(smtp_sink.refusals)
    assert {a for (a, code) in refusals if code == 451} == greylisted
    assert all(refusals[(a, 451)] == 1 and rows[a].attempts == 2 for a in greylisted)
    # The 550s: bounced after one refusal each, and suppressed; nobody else suppressed.
    assert {a for (a, code) in refusals if code == 550} == unknown
    assert all(refusals[(a, 550)] == 1 for a in unknown)
    assert {rows[a].status for a in unknown} == {S.BOUNCED}
    assert set(Suppression.objects.values_list("address", flat=True)) == unknown
    # The database's counts are the server's.
    assert Email.objects.filter(status=S.SENT).count() == len(arrivals) == 196
    assert Email.objects.filter(status=S.BOUNCED).count() == 4
    attempts = Email.objects.filter(status=S.SENT).aggregate(n=Sum("attempts"))["n"]
    assert attempts == len(arrivals) + len(greylisted)


def test_a_high_mail_arrives_ahead_of_a_bulk_backlog(
    smtp_sink: SmtpSink, worker_pool: StartWorkers, beat: None
) -> None:
    smtp_sink.data_delay_s = 0.02  # a backlog that takes seconds to drain
    # As the Procfile's `worker` (every queue, more than one slot): a bulk drain holds one
    # slot at most, and the high drain has its own key and queue.
    worker_pool(1, concurrency=2, env=smtp_env(smtp_sink))
    backlog = [f"bulk{i:03}@example.com" for i in range(300)]
    bulk = queue_many(backlog, priority="bulk")
    wait_for(lambda: len(smtp_sink.snapshot()) >= 20, timeout=20, what="the backlog draining")

    [high] = queue_many(["vip@example.com"], priority="high").values()
    wait_for(lambda: smtp_sink.received_by("vip@example.com"), timeout=10, what="the high mail")
    wait_for(lambda: settled(bulk), timeout=45, interval=0.3, what="the backlog sent")

    order = [a.to for a in smtp_sink.snapshot()]
    position = order.index("vip@example.com")
    after = len(order) - position - 1
    # Sent while the backlog drained, it arrived with most of the backlog still behind it.
    assert after >= len(backlog) // 2, (position, after)
    assert Counter(order) == Counter([*backlog, "vip@example.com"])
    assert Email.objects.get(pk=high.pk).status == S.SENT


def test_a_worker_killed_mid_batch_loses_nothing_and_repeats_only_its_message_in_flight(
    smtp_sink: SmtpSink, worker_pool: StartWorkers, beat: None
) -> None:
    smtp_sink.data_delay_s = 0.03
    [first] = worker_pool(1, concurrency=1, env=smtp_env(smtp_sink))
    addresses = [f"k{i:03}@example.com" for i in range(150)]
    emails = queue_many(addresses, priority="bulk")
    wait_for(lambda: len(smtp_sink.snapshot()) >= 30, timeout=20, what="sending under way")
    first.kill()  # SIGKILL, mid-batch: rows claimed, some sent, their outcome unrecorded
    killed_at = len(smtp_sink.snapshot())
    assert killed_at < len(addresses)
    worker_pool(1, concurrency=1, env=smtp_env(smtp_sink))
    wait_for(lambda: settled(emails), timeout=50, interval=0.3, what="every mail sent")

    rows = {e.to: e for e in Email.objects.filter(pk__in=[e.pk for e in emails.values()])}
    assert {r.status for r in rows.values()} == {S.SENT}
    arrivals = smtp_sink.snapshot()
    per_recipient = Counter(a.to for a in arrivals)
    assert set(per_recipient) == set(addresses)  # none lost
    repeated = [a for a, n in per_recipient.items() if n > 1]
    # Only the message in flight when the worker died may come twice, with one Message-ID.
    assert len(repeated) <= 1 and all(per_recipient[a] == 2 for a in repeated)
    for address in repeated:
        ids = {a.message_id for a in arrivals if a.to == address}
        assert ids == {rows[address].message_id}
    assert len(arrivals) == len(addresses) + len(repeated)
