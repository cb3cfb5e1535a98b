"""Reading a spec file before it is parsed: size, encoding, and no secrets anywhere in it.

Runs before anything else looks at a spec, so no later error message can echo a key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import SpecError
from ..models.base import _KEY_VALUE, _walk

MAX_SPEC_BYTES = 16 * 2**20


def read_spec(path: Path) -> str:
    """The text of a spec file, or a SpecError saying why it cannot be one."""
    if path.is_dir():
        raise SpecError(str(path), "<file>", "is a folder; expected a TOML spec file")
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(str(path), "<file>", f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(str(path), "<file>", f"larger than {MAX_SPEC_BYTES // 2**20} MB; "
                        "expected a TOML spec (put questions in a JSONL dataset)")
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark from a Windows editor is fine
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise SpecError(str(path), "<file>", f"not UTF-8 text (byte 0x{data[exc.start]:02x} at "
                        f"line {line}, column {column}); save the spec as UTF-8") from None
    if not text.strip():
        raise SpecError(str(path), "<file>", "is empty; expected TOML with name, [data] and "
                        "[[protocols]]")
    return text


_NO_KEYS = ("a spec is stored with its run, so a key must never be written in it: put the key "
            "in an environment variable and name that variable with api_key_env")


def refuse_secrets(path: Path, raw: dict[str, Any], text: str) -> None:
    """Key-shaped text (and NUL characters, which PostgreSQL refuses) anywhere in the spec:
    values, table names, and comments (the text is stored too). The value is never echoed."""
    for where, name, value in _walk(raw, ""):
        where = where.removeprefix(".")
        if name is not None and (_KEY_VALUE.search(name) or "\x00" in name):
            parent = where[:-len(name) - 1] or "<top level>"
            what = "contains a NUL character" if "\x00" in name else f"looks like a key; {_NO_KEYS}"
            raise SpecError(str(path), parent, f"a table key {what}")
        if isinstance(value, str) and _KEY_VALUE.search(value):
            if name == "api_key_env":
                raise SpecError(str(path), where, "expected the NAME of an environment variable "
                                "holding the key (such as OPENAI_API_KEY), not the key itself")
            raise SpecError(str(path), where, f"looks like an API key or token; {_NO_KEYS}")
        if isinstance(value, str) and "\x00" in value:
            raise SpecError(str(path), where, "contains a NUL character (\\u0000)")
    for number, line in enumerate(text.splitlines(), start=1):
        if _KEY_VALUE.search(line):
            raise SpecError(str(path), f"line {number}", "looks like an API key or token (the "
                            f"spec's text, comments included, is stored with the run); {_NO_KEYS}")


def env_name(name: str) -> str:
    """An environment variable's name fit to print: only a conventional one (OPENAI_API_KEY),
    never something that might be a key written in the wrong field."""
    return name if len(name) <= 64 and name.upper() == name else "named in api_key_env"
