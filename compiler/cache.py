"""The build cache: a compile is done once per content, then reused.

An entry's key is the sha256 of everything that decides the program's bytes: the model's content
(the ONNX or IR file's bytes: its graph, inline weights and the references of external data, never
its path; with weights compiled in, the external data's bytes too), the input shapes given, the
compile options (`driver.cache_options`: all but the solver's thread count), where a partner program keeps
the resident state (a prefill compiled beside its decode step), whether weights are compiled in, the machine file's text, and lpuc's version with a digest of its own source
(a changed compiler never reuses an old program). An entry holds the .lpu, the compile's report and,
once a sweep has run it, the timing-only run's findings, each written atomically: `KEY.lpu`, then
`KEY.json` (its presence marks the entry complete), then `KEY.run.json`.

The directory: `--cache-dir`, else $LPUC_CACHE_DIR, else the platform's cache directory
($XDG_CACHE_HOME or ~/.cache on Linux, ~/Library/Caches on macOS, %LOCALAPPDATA% on Windows) + lpuc.
`--no-cache` bypasses it; so does $LPUC_NO_CACHE, unless `--cache-dir` is given (the test suite sets it:
a test compiling twice must compile twice).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..ir.files import atomic_write, atomic_write_with, blob_path, read_bytes

ENV = "LPUC_CACHE_DIR"
OFF = "LPUC_NO_CACHE"  # set (non-empty): no cache unless a directory is given explicitly
_CHUNK = 1 << 24


def cache_dir(option: str | Path | None = None) -> Path:
    """Where the cache lives: the option, else $LPUC_CACHE_DIR, else the platform's convention."""
    if option:
        return Path(option)
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "lpuc"
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA", home / "AppData" / "Local")) / "lpuc" / "Cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "lpuc"


def chosen_dir(no_cache: bool, option: str | Path | None = None) -> Path | None:
    """The cache a command uses: none with --no-cache, nor under $LPUC_NO_CACHE unless --cache-dir names one."""
    if no_cache or (os.environ.get(OFF) and not option):
        return None
    return cache_dir(option)


@functools.cache
def tool_identity() -> str:
    """lpuc's version and a digest of its installed source: a compiler whose code changed keys anew."""
    from .. import backends, compiler, ir
    from ..backends.lpu import _tool_version

    digest = hashlib.sha256()
    for package in (ir, compiler, backends):
        root = Path(package.__file__).parent
        for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".lark", ".toml")
                           and "__pycache__" not in p.parts):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{_tool_version()}+{digest.hexdigest()[:16]}"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError:  # absent or unreadable: the compile itself says so, in its words
        return "unreadable"
    return digest.hexdigest()


def _weight_files(model: Path) -> list[tuple[str, Path]]:
    """The files a model's weights are read from, by the name the model gives them (sorted); an
    ONNX model's external data checked as the importer checks it (inside the model's directory)."""
    if model.suffix == ".ir":
        blobs = blob_path(model)
        return [(blobs.name, blobs)] if blobs.exists() else []
    import onnx

    from .frontend.onnx_import import external_files

    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception:  # not ONNX: the compile itself says why, in its words
        return []
    return sorted(external_files(proto, model.parent).items())


def compile_key(model: str | Path, machine_text: str, options: dict, shapes: dict, weights: bool,
                state_layout: dict | None = None) -> str:
    """The cache key (sha256 hex) of compiling `model` so: see the module's docstring. `state_layout`: where
    a partner program keeps the resident state this compile must keep there too (a prefill's)."""
    model = Path(model)
    parts = {
        "tool": tool_identity(),
        "model": hashlib.sha256(read_bytes(model)).hexdigest(),
        "model_kind": model.suffix,
        "weights": weights,
        "weight_files": {name: _file_digest(path) for name, path in _weight_files(model)} if weights else {},
        "shapes": sorted((name, list(dims)) for name, dims in shapes.items()),
        "options": options,
        "machine": hashlib.sha256(machine_text.encode()).hexdigest(),
        **({"state_layout": state_layout} if state_layout else {}),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Entry:
    key: str
    program: Path      # KEY.lpu
    report: dict       # the compile's --json report, as when it was compiled
    run: dict | None   # a timing-only run's findings (a sweep's), when one was recorded

    @property
    def bytes(self) -> int:
        return self.program.stat().st_size


def lookup(directory: Path, key: str) -> Entry | None:
    """The complete entry for `key`, or None."""
    program, report, run = (directory / f"{key}{suffix}" for suffix in (".lpu", ".json", ".run.json"))
    try:
        found = json.loads(report.read_text())
        ran = json.loads(run.read_text()) if run.exists() else None
    except (OSError, ValueError):  # absent, or torn by another process's clear: a miss
        return None
    return Entry(key, program, found, ran) if program.exists() else None


def store(directory: Path, key: str, program: Path | bytes, report: dict) -> Entry:
    """Record a compile (its .lpu file, or its bytes): the program first, the report last (an entry is
    complete once its report is)."""
    directory.mkdir(parents=True, exist_ok=True)
    copy_file(program, directory / f"{key}.lpu") if isinstance(program, Path) \
        else atomic_write(directory / f"{key}.lpu", program)
    atomic_write(directory / f"{key}.json", json.dumps(report, sort_keys=True).encode())
    return Entry(key, directory / f"{key}.lpu", report, None)


def copy_file(source: Path, target: str | Path) -> None:
    """Copy `source` to `target` atomically, piece by piece (a program may be hundreds of MB)."""
    with open(source, "rb") as f:
        atomic_write_with(target, lambda out: shutil.copyfileobj(f, out, _CHUNK))


def store_run(directory: Path, key: str, run: dict) -> None:
    atomic_write(directory / f"{key}.run.json", json.dumps(run, sort_keys=True).encode())


def entries(directory: Path) -> list[Entry]:
    """Every complete entry, by key."""
    if not directory.is_dir():
        return []
    keys = sorted(p.name.removesuffix(".json") for p in directory.glob("*.json") if not p.name.endswith(".run.json"))
    return [e for e in (lookup(directory, k) for k in keys) if e is not None]


def clear(directory: Path) -> tuple[int, int]:
    """Remove every entry (and any half-written file); (entries removed, bytes freed)."""
    if not directory.is_dir():
        return 0, 0
    count, freed = len(entries(directory)), 0
    for path in sorted(directory.iterdir()):
        if path.is_file() and (path.suffix in (".lpu", ".json") or ".tmp" in path.name):
            freed += path.stat().st_size
            path.unlink()
    return count, freed
