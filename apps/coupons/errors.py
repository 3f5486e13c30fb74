from enum import StrEnum


class CouponError(StrEnum):
    ALREADY_ISSUED = "already_issued"
    SOLD_OUT = "sold_out"
    CAMPAIGN_NOT_ACTIVE = "campaign_not_active"
    CAMPAIGN_RUNNING = "campaign_running"
    TRY_AGAIN = "try_again"
    RATE_LIMITED = "throttled"
