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
import traceback
from importlib.metadata import entry_points
from pathlib import Path

from ..errors import OversightError
from .prompts import PromptLibrary
from .registry import REGISTRY, ProtocolConflict, ProtocolDef, _loading_source, frame_in, shown

ENTRY_POINT_GROUP = "oversight.protocols"
_PACKAGE = Path(__file__).resolve().parents[1]  # the oversight package


class PluginError(OversightError):
    """A protocol or prompt source cannot be loaded: names the file (and line) and why."""

    def __init__(self, file: str, message: str, line: int | None = None):
        self.file, self.line, self.message = file, line, message
        super().__init__(f"{file}{f':{line}' if line else ''}: {message}")


def _folder(directory: Path, option: str, what: str) -> Path:
    """An existing folder given on the command line, else a PluginError naming it."""
    directory = Path(directory)
    if not directory.exists():
        raise PluginError(str(directory), f"{option}: {what} not found")
    if not directory.is_dir():
        raise PluginError(str(directory), f"{option}: expected a folder of {what.split()[0]} "
                                          "files, not a file")
    return directory


def _import_failed(exc: BaseException, source: str, path: Path | None) -> PluginError:
    """The file and line where importing a protocol module failed, without a traceback."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return PluginError(shown(exc.filename), f"cannot load protocols: {type(exc).__name__}: "
                                                f"{exc.msg}", exc.lineno)
    what = str(exc) if isinstance(exc, ProtocolConflict) else f"{type(exc).__name__}: {exc}"
    # The user's file if it is on the stack, else the deepest frame outside oversight itself.
    where = frame_in(exc, {str(path)}) if path else None
    if where is None:
        tb = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")
              and not f.filename.startswith(str(_PACKAGE))]
        where = (tb[-1].filename, tb[-1].lineno) if tb else None
    if where is None:
        return PluginError(source, f"cannot load protocols: {what}")
    also = "" if path is None or Path(where[0]) == path else f" (importing {shown(path)})"
    return PluginError(shown(where[0]), f"cannot load protocols: {what}{also}", where[1])


def _forget(source: str, before: dict[str, ProtocolDef]) -> None:
    """Undo what a module that failed to import registered."""
    for name in [n for n, p in REGISTRY.items() if p.source == source]:
        if name in before:
            REGISTRY[name] = before[name]
        else:
            del REGISTRY[name]


def builtin_dirs() -> tuple[Path, Path]:
    """(protocols, prompts): inside the wheel, else the checkout root."""
    installed = _PACKAGE / "_builtin"
    root = installed if (installed / "protocols").is_dir() else _PACKAGE.parent
    return root / "protocols", root / "prompts"


def load_protocol_dir(directory: Path) -> list[str]:
    """Import every *.py in a folder (not starting with '_'); returns protocol names added.
    A module that fails to import is a PluginError naming its file and line."""
    directory = _folder(directory, "--protocols", "protocol folder").resolve()
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
        registered = dict(REGISTRY)
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            sys.modules.pop(mod_name, None)
            _forget(str(path), registered)
            raise _import_failed(exc, str(path), path) from None
        finally:
            _loading_source.pop()
    return sorted(set(REGISTRY) - before)


def load_entry_points() -> list[Path]:
    """Import installed plugin modules; returns their prompt folders."""
    prompt_dirs = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        source = f"entry point {ep.name} ({ep.value})"
        _loading_source.append(source)
        registered = dict(REGISTRY)
        try:
            module = importlib.import_module(ep.module)
        except (Exception, SystemExit) as exc:
            _forget(source, registered)
            raise _import_failed(exc, source, None) from None
        finally:
            _loading_source.pop()
        folder = Path(module.__file__).resolve().parent / "prompts"
        if folder.is_dir():
            prompt_dirs.append(folder)
    return prompt_dirs


def load_all(protocol_dirs: list[Path] = (), prompt_dirs: list[Path] = ()) -> tuple[dict[str, ProtocolDef], PromptLibrary]:
    """Load every source; return the registry and a prompt library (user folders first).
    Raises PluginError for a missing folder or a module that cannot be imported."""
    for d in prompt_dirs:
        _folder(d, "--prompts", "prompt folder")
    for d in protocol_dirs:
        _folder(d, "--protocols", "protocol folder")
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
