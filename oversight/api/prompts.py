"""Jinja2 prompt templates: prompts/<protocol>/<role>.j2, with shared partials.

A role template extends "_base.j2" and fills two blocks, `system` and `user`. The user's own
prompt folders come first on the search path, so a user overrides a built-in template by
writing one at the same relative path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from ..tasks.items import letter

SPLIT = "\n<<<oversight:user>>>\n"  # written by _base.j2 between the two blocks


class TemplateMissing(jinja2.TemplateNotFound):
    """No template for a role: `tried` names the relative paths looked for, in `dirs`."""

    def __init__(self, tried: list[str], dirs: list[Path]):
        self.tried, self.dirs = tried, dirs
        super().__init__(tried[0], f"none of {tried} in {[str(d) for d in dirs]}")


class PromptLibrary:
    def __init__(self, dirs: list[Path]):
        self.dirs = [Path(d) for d in dirs]
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader([str(d) for d in self.dirs]),
            undefined=jinja2.StrictUndefined,  # a typo in a template fails loudly, not silently
            trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False,
            autoescape=False,  # prompts are plain text, not HTML
            auto_reload=False,  # no stat() of the template file on every call of a run
        )
        self._found: dict[tuple[str, str, str | None], str] = {}
        self.env.filters["letter"] = letter

    def find(self, protocol: str, role: str, purpose: str | None = None) -> str:
        """The template for a role: <protocol>/<role>[_<purpose>].j2, else the role family
        (debater_a -> debater), else an error listing what was tried."""
        key = (protocol, role, purpose)
        if key in self._found:
            return self._found[key]
        family = role.rsplit("_", 1)[0] if role.rsplit("_", 1)[-1] in ("a", "b", "c", "d") else role
        suffix = f"_{purpose}" if purpose else ""
        tried = [f"{protocol}/{role}{suffix}.j2", f"{protocol}/{family}{suffix}.j2"]
        for name in tried:
            try:
                self.env.get_template(name)
                self._found[key] = name
                return name
            except jinja2.TemplateNotFound:
                continue
        raise TemplateMissing(list(dict.fromkeys(tried)), self.dirs)

    def overlay(self, protocol: str, disposition: str) -> str:
        """The disposition overlay a role gets: the protocol's own, else the shared one (what
        _base.j2 includes); TemplateMissing when neither exists."""
        tried = [f"{protocol}/_dispositions/{disposition}.j2", f"_dispositions/{disposition}.j2"]
        for name in tried:
            try:
                self.env.get_template(name)
                return name
            except jinja2.TemplateNotFound:
                continue
        raise TemplateMissing(tried, self.dirs)

    def render(self, name: str, **variables: Any) -> tuple[str, str]:
        """(system, user) text of a template."""
        text = self.env.get_template(name).render(**variables)
        system, sep, user = text.partition(SPLIT)
        if not sep:
            raise ValueError(f"template {name} must extend '_base.j2' (no user block found)")
        return system.strip(), user.strip()
