"""Admin for the toolkit: one module per part."""

from . import deadletter, outbox, saga, trace  # noqa: F401
