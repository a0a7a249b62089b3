"""The settings module: each concern lives in its own file; this one only composes them."""

from .core import *  # noqa: F403
from .integrations import *  # noqa: F403
from .security import *  # noqa: F403
from .services import *  # noqa: F403
