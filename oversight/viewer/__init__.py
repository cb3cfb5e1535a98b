"""`oversight view`: a small local web app on a store, read-only (Starlette, Jinja2 templates
rendered on the server, one small script). Layering: viewer -> store (read-only), analysis."""

from .app import create_app

__all__ = ["create_app"]
