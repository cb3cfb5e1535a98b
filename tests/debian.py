"""Debian packages the slow tests need (postgresql, chromium), installed with apt-get when
missing and the tests run as root; otherwise the error says what to install."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable


class PackageMissing(RuntimeError):
    pass


def ensure(package: str, find: Callable[[], Path | None], needed_for: str) -> Path:
    """What `find` finds, after `apt-get install -y PACKAGE` (and an `apt-get update` first if
    the lists are stale) when it finds nothing and we are root."""
    if (found := find()) is not None:
        return found
    if os.geteuid() != 0:
        raise PackageMissing(f"{needed_for}: install Debian's `{package}` package "
                             f"(apt-get install {package}), or run the tests as root to have "
                             "them install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", package]
    tried = []
    for steps in ([install], [["apt-get", "update", "-q"], install]):  # stale lists: update
        for step in steps:
            done = subprocess.run(step, env=env, capture_output=True, text=True, timeout=900)
            tried.append(f"$ {' '.join(step)} -> exit {done.returncode}\n{done.stderr[-1500:]}")
            if done.returncode != 0:
                break
        if (found := find()) is not None:
            return found
    raise PackageMissing(f"{needed_for}: installing Debian's `{package}` package failed:\n"
                         + "\n".join(tried))
