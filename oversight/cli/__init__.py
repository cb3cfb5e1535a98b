"""The faces: the `oversight` command, terminal rendering, progress, signals."""

from . import (
    review,  # noqa: F401 - its commands join `app`
    scale,  # noqa: F401
    view,  # noqa: F401
)
from .app import app, main

__all__ = ["app", "main"]
