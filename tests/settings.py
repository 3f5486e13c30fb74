"""Settings for the test session and the processes it starts: the real settings plus
test-only apps (concrete models that exercise the generic toolkit in tasks/)."""

from config.settings import *  # noqa: F403
from config.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.toolkit_app"]
