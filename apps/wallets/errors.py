"""The wallets app's stable codes.

Rejection reasons are what a decided transaction carries in `reason`; they are business
outcomes of the applier, never exceptions (an exception would hold the wallet's queue).
"""

from enum import StrEnum


class RejectionReason(StrEnum):
    INSUFFICIENT_FUNDS = "insufficient_funds"
    # The balance would pass what the column can hold (MONEY_MAX_DIGITS).
    BALANCE_LIMIT = "balance_limit"
