"""The faces: the `oversight` command, terminal rendering, progress, signals."""

from .app import app, main

__all__ = ["app", "main"]
