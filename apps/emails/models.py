"""Mail rows (each one the durable record of a message to send), campaigns and the
suppression list."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

# RFC 5321: a path is at most 256 octets, so an address at most 254.
ADDRESS_MAX_LENGTH = 254


class Priority(models.TextChoices):
    HIGH = "high"
    NORMAL = "normal"
    BULK = "bulk"


class EmailStatus(models.TextChoices):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    FAILED = "failed"
    SUPPRESSED = "suppressed"


class CampaignStatus(models.TextChoices):
    DRAFT = "draft"
    SENDING = "sending"
    PAUSED = "paused"
    DONE = "done"


class Campaign(models.Model):
    name = models.CharField(max_length=200)
    subject = models.CharField(max_length=998)
    template = models.CharField(max_length=100)
    context = models.JSONField(default=dict, blank=True)
    # {"all_users": true} | {"topic": "<slug>"} | {"user_ids": [...]} (docs/api.md).
    audience = models.JSONField()
    status = models.CharField(
        max_length=16, choices=CampaignStatus.choices, default=CampaignStatus.DRAFT
    )
    # The audience size, and the recipients skipped (no address, or suppressed); the other
    # counters of the API are counted from the campaign's mail rows.
    total = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Email(models.Model):
    to = models.CharField(max_length=ADDRESS_MAX_LENGTH)
    subject = models.CharField(max_length=998)
    text = models.TextField()
    html = models.TextField(blank=True)
    headers = models.JSONField(default=dict, blank=True)
    priority = models.CharField(max_length=8, choices=Priority.choices, default=Priority.NORMAL)
    status = models.CharField(
        max_length=16, choices=EmailStatus.choices, default=EmailStatus.QUEUED
    )
    # Claims so far (a claim counts as an attempt even if its worker died mid-send).
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    # Assigned once, when the row is created: a resend after a crash carries the same one.
    message_id = models.CharField(max_length=255, unique=True)
    campaign = models.ForeignKey(
        Campaign, null=True, blank=True, on_delete=models.PROTECT, related_name="emails"
    )
    request_id = models.CharField(max_length=64, blank=True)
    # While `sending`: the claim's lease; past it, another worker may claim the row again.
    lease_until = models.DateTimeField(null=True, blank=True)
    # While `queued` or `deferred`: not claimed before this.
    next_attempt_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["campaign", "to"],
                condition=Q(campaign__isnull=False),
                name="email_once_per_campaign_recipient",
            ),
        ]
        indexes = [
            # The claim: the due rows of one priority, oldest due first.
            models.Index(
                fields=["priority", "next_attempt_at", "id"],
                condition=Q(status__in=["queued", "deferred"]),
                name="email_due",
            ),
            # The claim's second half: rows whose worker's lease ran out.
            models.Index(
                fields=["priority", "lease_until"],
                condition=Q(status="sending"),
                name="email_leased",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.to}: {self.subject}"


class Suppression(models.Model):
    class Reason(models.TextChoices):
        BOUNCE = "bounce"
        UNSUBSCRIBE = "unsubscribe"
        COMPLAINT = "complaint"

    # Stored lower-cased (`address_normalize`): one row per mailbox however it is spelled.
    address = models.CharField(max_length=ADDRESS_MAX_LENGTH, unique=True)
    reason = models.CharField(max_length=16, choices=Reason.choices)
    at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.address} ({self.reason})"
