"""Test-only Celery tasks, one module per toolkit part (autodiscovered as `<app>.tasks`)."""

from .connections import *  # noqa: F403
from .ordering import *  # noqa: F403
from .outbox import *  # noqa: F403
from .saga import *  # noqa: F403
