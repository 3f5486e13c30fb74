"""Test-only concrete models, one module per toolkit part (no migrations: the test
database creates their tables directly)."""

from .connections import *  # noqa: F403
from .ordering import *  # noqa: F403
from .outbox import *  # noqa: F403
from .saga import *  # noqa: F403
