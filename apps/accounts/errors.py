from enum import StrEnum


class AccountError(StrEnum):
    USERNAME_TAKEN = "username_taken"
    INVALID_CREDENTIALS = "invalid_credentials"
