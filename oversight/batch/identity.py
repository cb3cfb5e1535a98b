"""What produced a run: the source of each protocol it uses and the templates they can render.

A run's identity (its id) covers these, so editing a prompt or a protocol starts a new run
instead of silently mixing old and new transcripts under one id. Templates counted for a
protocol: every file in a `<protocol>/` folder of any prompt folder on the search path (a
user's override included), and the shared ones at the top of each prompt folder (`_*.j2`,
`_dispositions/`), which every protocol may include.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

from ..api.prompts import PromptLibrary
from ..api.registry import ProtocolDef


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def code_identity(protocols: list[ProtocolDef], prompts: PromptLibrary) -> dict:
    """{"protocols": {name: sha256 of its source file}, "templates": {"<n>:<path>": sha256}}
    where <n> is the template's folder's place on the search path (0 searched first)."""
    out: dict = {"protocols": {}, "templates": {}}
    for proto in sorted(protocols, key=lambda p: p.name):
        source = inspect.getsourcefile(proto.fn)
        out["protocols"][proto.name] = _sha(Path(source)) if source and Path(source).is_file() else None
    names = {p.name for p in protocols}
    for n, folder in enumerate(prompts.dirs):
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            shared = rel.parts[0] == "_dispositions" or (len(rel.parts) == 1 and rel.name.startswith("_"))
            if path.is_file() and (shared or rel.parts[0] in names):
                out["templates"][f"{n}:{rel.as_posix()}"] = _sha(path)
    return out


def changed(old: dict | None, new: dict) -> list[str]:
    """What differs between two identities: protocol names and template paths."""
    old = old or {}
    diffs = []
    for section in ("protocols", "templates"):
        a, b = old.get(section) or {}, new.get(section) or {}
        diffs += [name.partition(":")[2] or name for name in sorted(set(a) | set(b))
                  if a.get(name) != b.get(name)]
    return diffs
