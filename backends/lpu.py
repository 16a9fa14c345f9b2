"""The executable schedule: one `.lpu` file holding everything a run needs.

A `.lpu` file is a ZIP archive (stored, never compressed) written by our own
few lines of code below, so its bytes depend on its content only: members in
sorted order, a fixed timestamp, no extra fields, no pickle anywhere. Members:

  manifest.json  format and version, machine name, options, input/output
                 bindings (name -> type), cycles, whether the image holds the
                 weights, sha256 of every other part
  program.ir     the scheduled module as IR text (large constants by reference;
                 with weights, each mem.constant's `sha256` is that of its words
                 in the image, so a run can check the image against the program);
                 a repeated layer's part written once, as a template, and a
                 `stamp` line for each of its pieces (ir.pieces; format 4: a
                 program without pieces is written as format 3)
  machine.toml   the machine description's text (a run needs no local files)
  image.json     the initial SRAM image's index: [[chip, slice, first word, words], ...]
                 sorted; one entry per extent of every `mem.constant`
  image.bin      the image's bytes: those extents' words (vector.lanes bytes each), in index order

A file written with weights=False (`lpuc compile --no-weights`) has an empty
image: its constants keep their `out` extents but carry no data, so it can
only be run timing-only (every hazard checked, no numerics).

Loading checks the container byte for byte against what the writer would
produce from the same parts (no part is inflated: a compressed part is refused
from the archive's directory, before it is read), then the format version, the
part hashes, the machine, the program and the image; any problem is one
`LpuFormatError` line. The interpreter checks the rest before cycle 0: each
constant's words in the image against its `sha256`, and the manifest's facts
(cycles, instructions, ...) against what the program takes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain, islice
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

import numpy as np

from ..ir.attributes import AttrDict, Tensor
from ..ir.beside import Beside
from ..ir.collector import collector_paused
from ..ir.core import Module, Op
from ..ir.errors import LpucError
from ..ir.files import atomic_write_with, open_regular, read_bytes
from ..ir.layout import from_words, to_words, words
from ..ir.machine import Machine, parse_machine
from ..ir.machine_ops import chip_of, is_constant
from ..ir.parser import parse
from ..ir.printer import print_lines
from ..ir.schedule_facts import Facts, describe
from ..ir.target import Target
from ..ir.verifier import verify

from .state import State

FORMAT = "lpu"
FORMAT_VERSION = 4  # 4: program.ir may hold templates and their stamps (ir.pieces)
PLAIN_VERSION = 3   # what a program without them is written as: the oldest version that reads it
READS = (PLAIN_VERSION, FORMAT_VERSION)
PARTS = ("image.bin", "image.json", "machine.toml", "manifest.json", "program.ir")
HASHED = tuple(p for p in PARTS if p != "manifest.json")

Image = Mapping[tuple[int, int, int], np.ndarray]  # (chip, slice, first word) -> uint8 [words, lanes]


class LpuFormatError(LpucError):
    """A .lpu file that cannot be loaded: damaged, truncated, of another format version."""


@dataclass(frozen=True, eq=False)
class Program:
    """A loaded (or freshly built) executable schedule. Arrays are read-only."""

    module: Module
    target: Target     # the machine and the module's chips (`Target.of`)
    machine_text: str
    image: Image
    manifest: Mapping[str, Any]
    source: str = ""  # the file it was loaded from ("" when built in memory)
    # a stateful program's persistent buffers, kept from run to run (backends.state; reset() starts anew)
    state: State = field(default_factory=State, compare=False, repr=False)

    @property
    def machine(self) -> Machine:
        return self.target.machine

    @property
    def options(self) -> Mapping[str, Any]:
        return self.manifest["options"]

    @property
    def weights(self) -> bool:
        """False: compiled without weights (an empty SRAM image); it runs timing-only."""
        return self.manifest.get("weights", True)

    @property
    def cycles(self) -> int:
        return self.manifest["cycles"]

    @cached_property
    def facts(self) -> Facts:
        """The one description of the scheduled program (ir.schedule_facts), derived once per Program."""
        return describe(self.module, self.target)


# --- building ---------------------------------------------------------------

def _tool_version() -> str:
    try:
        from importlib.metadata import version

        return version("lpuc")
    except Exception:  # not installed: the version is unknown, not an error
        return "unknown"


def _canonical_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, indent=1, ensure_ascii=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise LpucError(f"{what} must be JSON data (str keys; str, number, bool, null, list, dict values): {e}") \
            from None


def _build_image(module: Module, lanes: int, weights: bool) -> tuple[Module, dict[tuple[int, int, int], np.ndarray]]:
    """The SRAM image: each mem.constant's words at its `out` extents (none without weights,
    but the extents are checked all the same); and the module with each constant's `sha256`
    (of its words, in `out` order) when it has weights."""
    image: dict[tuple[int, int, int], np.ndarray] = {}
    owner: dict[tuple[int, int, int], str] = {}
    ops = []
    for op in module.ops:
        if not is_constant(op.name):
            ops.append(op)
            continue
        value, t = op.attrs["value"], op.result.type
        out = op.attrs.get("out")
        if out is None:
            raise LpucError(f"cannot build the SRAM image: {op.label()} has no `out` extents")
        n = sum(e[2] for e in out)
        if n != words(t, lanes):
            raise LpucError(f"cannot build the SRAM image: {op.label()}: `out` spans {n} words, {t} takes "
                            f"{words(t, lanes)}")
        if not weights:
            ops.append(op)
            continue
        if not value.has_data:
            raise LpucError(f"cannot build the SRAM image: {op.label()}: constant {value.key} has no data")
        data, chip = to_words(value.array, t, lanes), chip_of(op)
        digest = sha256(data.tobytes())
        if op.attrs.get("sha256", digest) != digest:
            raise LpucError(f"cannot build the SRAM image: {op.label()}: its data does not match its sha256")
        ops.append(Op(op.name, op.operands, op.results, AttrDict({**op.attrs, "sha256": digest})))
        pos = 0
        for s, w, k in out:
            if k:
                if (chip, s, w) in image:
                    raise LpucError(f"cannot build the SRAM image: {op.label()} and {owner[chip, s, w]} both start "
                                    f"at chip {chip} slice {s} word {w}")
                image[chip, s, w] = _frozen(data[pos:pos + k])
                owner[chip, s, w] = op.label()
            pos += k
    # (without weights no op changes: the module is the same, and so are its facts; with them, constants take
    # their sha256, a function of their value: a piece's ops stay its template's stamped)
    return module.replace(ops=tuple(ops), pieces=module.pieces) if weights else module, dict(sorted(image.items()))


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, np.uint8, order="C")
    a.flags.writeable = False
    return a


@collector_paused()  # (the facts and the image: many objects, no garbage cycles)
def build_program(module: Module, machine_text: str, options: Mapping[str, Any] | None = None,
                  summary: Mapping[str, Any] | None = None, *, weights: bool = True,
                  verified: bool = False) -> Program:
    """The Program `write_lpu` would write, built in memory (no file). `summary`
    holds the compiler's deterministic findings (lower bound, ...) for viewers.
    weights=False leaves the SRAM image empty (a timing-only program). The
    manifest's `options.chips` and `summary.chips` are written from the module.
    verified=True: the module comes straight from the compile pipeline, whose
    last pass the verifier checked (it is not checked again)."""
    machine = parse_machine(machine_text, "machine.toml")
    target = Target.of(module, machine)
    if not verified:
        verify(module, machine)
    options = json.loads(_canonical_json(_with_chips(options, target.chips, "options"), "options"))
    summary = json.loads(_canonical_json(_with_chips(summary, target.chips, "summary"), "summary"))
    module, image = _build_image(module, machine.lanes, weights)
    facts = describe(module, target)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION if module.pieces else PLAIN_VERSION,
        "lpuc_version": _tool_version(),
        "machine": machine.name,
        "module": module.name,
        "options": options,
        "inputs": {v.name: str(v.type) for v in module.inputs},
        "outputs": {name: str(v.type) for name, v in module.outputs},
        "cycles": facts.length,
        "summary": summary,
        "weights": bool(weights),
    }
    program = Program(module, target, machine_text, MappingProxyType(image), MappingProxyType(manifest))
    program.__dict__["facts"] = facts  # what the cached property would compute: derived once
    return program


def _with_chips(table: Mapping[str, Any] | None, chips: int, what: str) -> dict[str, Any]:
    """`table` with the module's chip count; an LpucError when it names another."""
    table = dict(table or {})
    if table.get("chips", chips) != chips:
        raise LpucError(f"the {what} say {table['chips']!r} chips, the module is for {chips}")
    return {**table, "chips": chips}


TEXT_CHUNK = 4096  # lines of program text per chunk


def _parts(program: Program) -> dict[str, list[bytes]]:
    """Each part's bytes, in chunks: a large program's text (400 MB for Llama-2-70B) is never one string."""
    index = [[c, s, w, int(a.shape[0])] for (c, s, w), a in sorted(program.image.items())]
    parts = {
        "image.bin": [program.image[c, s, w].tobytes() for c, s, w, _ in index],
        "image.json": [_canonical_json(index, "image index").encode()],
        "machine.toml": [program.machine_text.encode()],
        "program.ir": _text_chunks(program.module),
    }
    manifest = dict(program.manifest)
    manifest["parts"] = {name: _sha256_of(parts[name]) for name in HASHED}
    parts["manifest.json"] = [_canonical_json(manifest, "manifest").encode()]
    return parts


def _text_chunks(module: Module) -> list[bytes]:
    """The module's IR text, encoded TEXT_CHUNK lines at a time."""
    lines, chunks = print_lines(module), []
    while chunk := "".join(islice(lines, TEXT_CHUNK)):
        chunks.append(chunk.encode())
    return chunks


def _sha256_of(chunks: list[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def lpu_bytes(module: Module, machine_text: str, options: Mapping[str, Any] | None = None,
              summary: Mapping[str, Any] | None = None, *, weights: bool = True) -> bytes:
    """The bytes of the .lpu file of `module` (what write_lpu writes)."""
    return program_bytes(build_program(module, machine_text, options, summary, weights=weights))


def program_bytes(program: Program) -> bytes:
    """The bytes of the .lpu file of a built program."""
    out = io.BytesIO()
    _write_zip(_parts(program), out)
    return out.getvalue()


def write_lpu(path: str | Path, module: Module, machine_text: str, options: Mapping[str, Any] | None = None,
              summary: Mapping[str, Any] | None = None, *, weights: bool = True) -> str:
    """Write the executable schedule of `module` to `path` atomically; return the file's sha256 (hex).
    weights=False writes no SRAM image: the file runs timing-only."""
    return write_program(path, build_program(module, machine_text, options, summary, weights=weights))


@collector_paused()  # (the program's text: many objects made and dropped, no garbage cycles)
def write_program(path: str | Path, program: Program) -> str:
    """Write `program` (e.g. from `lpuc.compile`) to `path` atomically; return the file's sha256 (hex)."""
    return atomic_write_with(path, lambda f: _write_zip(_parts(program), f))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def schedule_sha256(path: str | Path) -> str:
    """The sha256 (hex) of a .lpu file's bytes: the identity of a compiled schedule."""
    return sha256(read_bytes(path, LpuFormatError))


# --- the container: a minimal, deterministic ZIP (stored members) ------------

_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01
_DOS_TIME = 0
_VERSION = 20  # 2.0: what stored members need


def _pack(parts: Mapping[str, bytes]) -> bytes:
    """A ZIP archive of `parts`, members in sorted order, bytes a function of the content only."""
    out = io.BytesIO()
    _write_zip({name: [data] for name, data in parts.items()}, out)
    return out.getvalue()


def _write_zip(parts: Mapping[str, list[bytes]], out: BinaryIO) -> str:
    """Write the archive _pack makes of `parts` (each part's bytes in chunks) to `out`; -> its sha256 (hex)."""
    digest, pos, central = hashlib.sha256(), 0, []

    def put(data: bytes) -> None:
        nonlocal pos
        out.write(data)
        digest.update(data)
        pos += len(data)

    for name in sorted(parts):
        chunks, raw = parts[name], name.encode("ascii")
        size, crc, offset = sum(len(c) for c in chunks), 0, pos
        if size >= 0xFFFFFFFF or pos >= 0xFFFFFFFF:
            raise LpucError(f"the .lpu container holds at most 4 GiB; part {name} does not fit")
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
        put(struct.pack("<IHHHHHIIIHH", 0x04034B50, _VERSION, 0, 0, _DOS_TIME, _DOS_DATE, crc,
                        size, size, len(raw), 0))
        put(raw)
        for chunk in chunks:
            put(chunk)
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, _VERSION, _VERSION, 0, 0, _DOS_TIME,
                                   _DOS_DATE, crc, size, size, len(raw), 0, 0, 0, 0, 0, offset) + raw)
    start = pos
    for entry in central:
        put(entry)
    if pos >= 0xFFFFFFFF:
        raise LpucError("the .lpu container holds at most 4 GiB")
    put(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(parts), len(parts), pos - start, start, 0))
    return digest.hexdigest()


def _unpack(data: bytes, where: str) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
            if len(set(names)) != len(names):
                raise LpuFormatError(f"{where}: not a valid .lpu file (a part appears twice)")
            for info in zf.infolist():  # so no part is larger than the archive holding it (no zip bomb)
                if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size \
                        or info.file_size > len(data):
                    raise LpuFormatError(f"{where}: not a valid .lpu file (part {info.filename} is compressed "
                                         "or larger than the file; .lpu parts are stored as they are)")
            parts = {name: zf.read(name) for name in names}
    except LpuFormatError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, KeyError, IndexError,
            NotImplementedError, RuntimeError, struct.error, UnicodeDecodeError, zlib.error) as e:
        raise LpuFormatError(f"{where}: not a valid .lpu file (truncated or damaged: {_one_line(e)})") from None
    missing = [p for p in PARTS if p not in parts]
    if missing:
        raise LpuFormatError(f"{where}: not a valid .lpu file (missing part {', '.join(missing)})")
    extra = sorted(set(parts) - set(PARTS))
    if extra:
        raise LpuFormatError(f"{where}: not a valid .lpu file (unexpected part {', '.join(extra)})")
    canonical = _Compare(data)
    _write_zip({name: [part] for name, part in parts.items()}, canonical)
    if not canonical.same or canonical.pos != len(data):
        raise LpuFormatError(f"{where}: damaged .lpu file (its container bytes differ from the canonical form)")
    return parts


class _Compare:
    """A file _write_zip writes to that only compares what it is given with `data` (a large program's archive is
    not made again to be compared)."""

    def __init__(self, data: bytes):
        self.data, self.pos, self.same = data, 0, True

    def write(self, chunk: bytes) -> None:
        self.same = self.same and self.data.startswith(chunk, self.pos)
        self.pos += len(chunk)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# --- loading ----------------------------------------------------------------

def read_lpu(path: str | Path, progress=None, described: bool = False) -> Program:
    """Load and check a .lpu file; every problem is one LpuFormatError line naming the file. `progress`,
    when given, is called with a line per stage (a large program takes minutes); `described`: its facts
    (Program.facts) derived too, while it is verified."""
    return load_lpu(_read_container(path), str(path), progress, described)


_END = struct.Struct("<IHHHHIIH")  # the ZIP end-of-directory record, the last bytes _pack writes


def _read_container(path: str | Path) -> bytes:
    """A .lpu file's bytes, read only once its last bytes are the end record of a directory of the .lpu
    parts that ends just there: noise, or a huge sparse file, is refused before it is read into memory."""
    with open_regular(path, LpuFormatError) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - _END.size))
            end = f.read(_END.size)
            if len(end) == _END.size:
                signature, _, _, _, count, directory_size, directory_start, _ = _END.unpack(end)
                if signature == 0x06054B50 and count == len(PARTS) \
                        and directory_start + directory_size + _END.size == size:
                    f.seek(0)
                    return f.read()
        except OSError as e:
            raise LpuFormatError(f"{path}: cannot read: {e.strerror or e}") from None
    raise LpuFormatError(f"{path}: not a valid .lpu file (it does not end with the directory of its "
                         f"{len(PARTS)} parts, as .lpu files do)")


@collector_paused()  # a program's millions of objects, checked as they are made: no garbage cycles
def load_lpu(data: bytes, where: str = "<lpu>", progress=None, described: bool = False) -> Program:
    """Load a .lpu file from its bytes (see read_lpu)."""
    say = progress or (lambda line: None)
    parts = _unpack(data, where)
    manifest = _manifest(parts["manifest.json"], where)
    for name in HASHED:
        if sha256(parts[name]) != manifest["parts"].get(name):
            raise LpuFormatError(f"{where}: part {name} does not match its sha256 in the manifest (corrupted file)")
    try:
        machine_text = parts["machine.toml"].decode()
        program_text = parts["program.ir"].decode()
    except UnicodeDecodeError as e:
        raise LpuFormatError(f"{where}: a text part is not UTF-8 ({e})") from None
    try:
        machine = parse_machine(machine_text, f"{where}:machine.toml")
    except LpucError as e:
        raise LpuFormatError(_one_line(e)) from None
    # Verified beside the rest (ir.beside: a large program's verification takes seconds), as if first: on any
    # failure its error is the one raised. The copy reads the program for itself, made before this process
    # reads it, so that the two share no page this one goes on to write (a copy made after the parse slows
    # describing the 70B's million ops by a second: every page either process writes is copied). Where no
    # copy is made, the program read here is verified when the verdict is asked for.
    read: list[Module] = []
    with Beside(lambda: _verify(read[0] if read else _parsed(program_text, where), machine, where)) as verifying:
        say(f"parsing the program ({len(program_text) / 1e6:,.1f} MB of IR text)")
        read.append(_parsed(program_text, where, lambda pos, end: say(
            f"parsing the program: {pos / end:.0%} of {end / 1e6:,.1f} MB")))
        say(f"verifying {'and describing ' if described else ''}the program ({len(read[0].ops):,} ops)")
        try:
            program = _checked(read[0], machine, machine_text, parts, manifest, where)
            if described:
                program.facts
        except Exception:
            verifying.result()
            raise
        verifying.result()
    return program


def _parsed(program_text: str, where: str, progress=None) -> Module:
    try:
        return parse(program_text, f"{where}:program.ir", progress=progress)
    except LpucError as e:
        raise LpuFormatError(_one_line(e)) from None


def _verify(module: Module, machine: Machine, where: str) -> None:
    try:
        verify(module, machine)
    except LpucError as e:
        raise LpuFormatError(_one_line(e)) from None
    _check_sizes(module, machine, where)


def _checked(module: Module, machine: Machine, machine_text: str, parts: Mapping[str, bytes],
             manifest: dict[str, Any], where: str) -> Program:
    """The Program of a parsed .lpu, once its parts agree with its manifest and its image holds its constants."""
    if machine.name != manifest["machine"]:
        raise LpuFormatError(f"{where}: the manifest names machine {manifest['machine']!r}, "
                             f"machine.toml describes {machine.name!r}")
    try:
        target = Target.of(module, machine)
        for key in ("options", "summary"):
            _with_chips(manifest[key], target.chips, f"manifest's {key}")
    except LpucError as e:
        raise LpuFormatError(f"{where}: {_one_line(e)}") from None
    image = _image(parts["image.json"], parts["image.bin"], machine.lanes, where)
    if not manifest["weights"] and image:
        raise LpuFormatError(f"{where}: the manifest says it has no weights, but its SRAM image is not empty")
    module = _bind_constants(module, image, machine.lanes, where, manifest["weights"])
    bindings = {"inputs": {v.name: str(v.type) for v in module.inputs},
                "outputs": {name: str(v.type) for name, v in module.outputs}}
    for key, expected in bindings.items():
        if manifest[key] != expected:
            raise LpuFormatError(f"{where}: the manifest's {key} do not match program.ir")
    del manifest["parts"]
    return Program(module, target, machine_text, MappingProxyType(image), MappingProxyType(manifest), where)


def _check_sizes(module: Module, machine: Machine, where: str) -> None:
    """Every value of a program lives in one chip's SRAM (or came from it, or goes to it): one larger
    is a forged type, refused before a run allocates anything for it (e.g. random inputs)."""
    cap = machine.sram.slices * machine.sram.words_per_slice
    sizes: dict = {}  # type -> words (a program spells few distinct types, its values millions)
    for v in chain(module.inputs, (r for op in module.ops for r in op.results)):
        n = sizes.get(v.type)
        if n is None:
            n = sizes[v.type] = words(v.type, machine.lanes)
        if n > cap:
            raise LpuFormatError(f"{where}: %{v.name} is {v.type}, {n:,} SRAM words: more than a "
                                 f"{machine.name} chip holds ({cap:,})")


_MANIFEST_KEYS = {"format": str, "format_version": int, "lpuc_version": str, "machine": str, "module": str,
                  "options": dict, "inputs": dict, "outputs": dict, "cycles": int, "summary": dict,
                  "parts": dict, "weights": bool}


def _manifest(raw: bytes, where: str) -> dict[str, Any]:
    try:
        manifest = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # (json recurses into nested lists)
        raise LpuFormatError(f"{where}: manifest.json is not valid JSON ({_one_line(e)})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LpuFormatError(f"{where}: not a .lpu file (its manifest does not say format \"{FORMAT}\")")
    version = manifest.get("format_version")
    if version not in READS or isinstance(version, bool):
        raise LpuFormatError(f"{where}: .lpu format version {version!r}; this lpuc reads versions "
                             f"{' and '.join(map(str, READS))} (recompile the model)")
    for key, kind in _MANIFEST_KEYS.items():
        value = manifest.get(key)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise LpuFormatError(f"{where}: manifest.json: {key} is missing or not a {kind.__name__}")
    return manifest


def _image(index_raw: bytes, blob: bytes, lanes: int, where: str) -> dict[tuple[int, int, int], np.ndarray]:
    try:
        index = json.loads(index_raw.decode())
        ok = isinstance(index, list) and all(
            isinstance(e, list) and len(e) == 4 and all(type(x) is int and x >= 0 for x in e) for e in index)
    except (UnicodeDecodeError, ValueError, RecursionError):  # (json recurses into nested lists)
        ok = False
    if not ok:
        raise LpuFormatError(f"{where}: image.json is not a list of [chip, slice, word, words]")
    keys = [(c, s, w) for c, s, w, _ in index]
    if keys != sorted(set(keys)):
        raise LpuFormatError(f"{where}: image.json is not sorted by (chip, slice, word) without repeats")
    total = sum(n for *_, n in index) * lanes
    if total != len(blob):
        raise LpuFormatError(f"{where}: image.bin holds {len(blob)} bytes, image.json describes {total}")
    flat = np.frombuffer(blob, np.uint8)  # read-only: a view of immutable bytes
    image, pos = {}, 0
    for c, s, w, n in index:
        image[c, s, w] = flat[pos:pos + n * lanes].reshape(n, lanes)
        pos += n * lanes
    return image


def _bind_constants(module: Module, image: dict[tuple[int, int, int], np.ndarray], lanes: int, where: str,
                    weights: bool) -> Module:
    """Check the image holds exactly the constants' extents; give each constant its data from the image.
    Without weights the image is empty and the constants stay without data."""
    if not weights:
        return module
    used, ops = set(), []
    for op in module.ops:
        if not is_constant(op.name):
            ops.append(op)
            continue
        chip = chip_of(op)
        out = tuple((chip, s, w, n) for s, w, n in op.attrs.get("out") or () if n)
        missing = [e for e in out if e[:3] not in image or image[e[:3]].shape[0] != e[3]]
        if missing:
            c, s, w, n = missing[0]
            at = f"chip {c} slice {s}" if c else f"slice {s}"
            raise LpuFormatError(f"{where}: the SRAM image lacks {op.label()}'s {n} words at {at} word {w}")
        used.update(e[:3] for e in out)
        value = op.attrs["value"]
        if not value.has_data:
            t = op.result.type
            chunks = [image[e[:3]] for e in out]
            value = Tensor(value.type, value.key, loader=_loader(chunks, t, lanes))
            op = Op(op.name, op.operands, op.results, AttrDict({**op.attrs, "value": value}))
        ops.append(op)
    extra = sorted(set(image) - used)
    if extra:
        c, s, w = extra[0]
        at = f"chip {c} slice {s}" if c else f"slice {s}"
        raise LpuFormatError(f"{where}: the SRAM image holds words at {at} word {w} that no constant names")
    return module.replace(ops=tuple(ops), pieces=module.pieces)  # (constants' data bound: equal values stay equal)


def _loader(chunks, t, lanes: int):
    def load():
        a = from_words(np.concatenate(chunks) if chunks else np.zeros((0, lanes), np.uint8), t, lanes)
        a.flags.writeable = False
        return a
    return load
