"""Finding protocols and prompts. Built-ins take exactly the path a user's folder takes.

Sources, in order (later ones may not redefine an earlier protocol's name):
  1. the built-in folders (protocols/ and prompts/ in a checkout; oversight/_builtin/ in a wheel)
  2. installed plugins: entry points in group "oversight.protocols" (a module; a sibling
     "prompts" folder of that module, if present, joins the prompt path)
  3. the user's --protocols DIR / --prompts DIR (a protocols folder's sibling "prompts" too)
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path

from .prompts import PromptLibrary
from .registry import REGISTRY, ProtocolDef, _loading_source

ENTRY_POINT_GROUP = "oversight.protocols"
_PACKAGE = Path(__file__).resolve().parent


def builtin_dirs() -> tuple[Path, Path]:
    """(protocols, prompts): inside the wheel, else the checkout root."""
    installed = _PACKAGE / "_builtin"
    root = installed if (installed / "protocols").is_dir() else _PACKAGE.parent
    return root / "protocols", root / "prompts"


def load_protocol_dir(directory: Path) -> list[str]:
    """Import every *.py in a folder (not starting with '_'); returns protocol names added."""
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise FileNotFoundError(f"protocol folder not found: {directory}")
    before = set(REGISTRY)
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        # A stable, unique module name per file, so two folders may both have debate.py.
        mod_name = f"oversight_plugin_{abs(hash(str(path))):x}_{path.stem}"
        if mod_name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        _loading_source.append(str(path))
        try:
            spec.loader.exec_module(module)
        except Exception:
            sys.modules.pop(mod_name, None)
            raise
        finally:
            _loading_source.pop()
    return sorted(set(REGISTRY) - before)


def load_entry_points() -> list[Path]:
    """Import installed plugin modules; returns their prompt folders."""
    prompt_dirs = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _loading_source.append(f"entry point {ep.name} ({ep.value})")
        try:
            module = importlib.import_module(ep.module)
        finally:
            _loading_source.pop()
        folder = Path(module.__file__).resolve().parent / "prompts"
        if folder.is_dir():
            prompt_dirs.append(folder)
    return prompt_dirs


def load_all(protocol_dirs: list[Path] = (), prompt_dirs: list[Path] = ()) -> tuple[dict[str, ProtocolDef], PromptLibrary]:
    """Load every source; return the registry and a prompt library (user folders first)."""
    builtin_protocols, builtin_prompts = builtin_dirs()
    load_protocol_dir(builtin_protocols)
    plugin_prompts = load_entry_points()
    user_prompts: list[Path] = [Path(p) for p in prompt_dirs]
    for d in protocol_dirs:
        load_protocol_dir(Path(d))
        sibling = Path(d).resolve().parent / "prompts"
        if sibling.is_dir() and sibling != builtin_prompts.resolve():
            user_prompts.append(sibling)
    return dict(REGISTRY), PromptLibrary([*user_prompts, *plugin_prompts, builtin_prompts])
