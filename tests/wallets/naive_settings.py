"""Settings of the processes the naive-mode live test starts: the test settings with the
wallets' naive apply mode (whatever the environment says)."""

from tests.settings import *  # noqa: F403

WALLETS_APPLY_MODE = "naive"
