"""Settings for the test session and the processes it starts: the real settings plus
test-only apps (concrete models that exercise the generic toolkit in tasks/)."""

from config.settings import *  # noqa: F403
from config.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.toolkit_app"]

# The test process writes trace events at once, inside the test's transaction; processes
# started by the live fixtures get TRACE_FLUSH=thread from their environment.
TRACE_FLUSH = env.str("TRACE_FLUSH", default="sync")  # noqa: F405
