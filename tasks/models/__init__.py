"""The toolkit's tables, one module per part."""

from .deadletter import *  # noqa: F403
from .ordering import *  # noqa: F403
from .outbox import *  # noqa: F403
from .saga import *  # noqa: F403
from .trace import *  # noqa: F403
