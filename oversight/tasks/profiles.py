"""The built-in datasets (shipped in oversight/data/) and the profile of each: how its rows
become items (profiles.toml)."""

from __future__ import annotations

import tomllib
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

_PROFILES = Path(__file__).with_name("profiles.toml")


@cache
def _profiles() -> dict[str, dict[str, Any]]:
    return tomllib.loads(_PROFILES.read_text(encoding="utf-8"))


BUILTIN_DATASETS: tuple[str, ...] = tuple(_profiles())


def profile(name: str) -> dict[str, Any]:
    """{"fields": {...}, "constants": {...}} of a built-in dataset (empty tables if none)."""
    return _profiles().get(name, {})


def builtin_path(name: str) -> Path:
    return Path(str(files("oversight").joinpath("data", f"{name}.jsonl")))
