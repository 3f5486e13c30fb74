from enum import StrEnum


class OrderError(StrEnum):
    NOT_CANCELLABLE = "not_cancellable"


class FailureReason(StrEnum):
    OUT_OF_STOCK = "out_of_stock"
    PAYMENT_DECLINED = "payment_declined"
    PAYMENT_TIMEOUT = "payment_timeout"
    CAPTURE_FAILED = "capture_failed"
    COUPON_UNAVAILABLE = "coupon_unavailable"
    CANCELLED = "cancelled"
