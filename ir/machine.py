"""Machine descriptions: a TOML file per machine, validated into a frozen
`Machine`. The default, `tsp-v1`, ships in ir/machines/ and carries Groq's
published figures (the assumed ones are marked in the file).

`load_machine("tsp-v1")` loads a shipped machine by name; anything else is
read as a path. Every problem is a one-line LpucError naming the file and key.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LpucError
from .layout import LANES

SHIPPED = Path(__file__).with_name("machines")
DEFAULT_MACHINE = "tsp-v1"


@dataclass(frozen=True)
class Vector:
    lanes: int


@dataclass(frozen=True)
class Sram:
    slices: int
    words_per_slice: int
    word_bytes: int
    read_ports: int
    write_ports: int

    @property
    def slice_bytes(self) -> int:
        return self.words_per_slice * self.word_bytes

    @property
    def chip_bytes(self) -> int:
        return self.slices * self.slice_bytes


@dataclass(frozen=True)
class Streams:
    east: int
    west: int


@dataclass(frozen=True)
class Mxm:
    planes: int
    rows: int
    cols: int
    fp16_rate: float


@dataclass(frozen=True)
class Vxm:
    alus_per_lane: int
    transcendental_cycles: int


@dataclass(frozen=True)
class Mem:
    units: int


@dataclass(frozen=True)
class Host:
    bytes_per_cycle: float


@dataclass(frozen=True)
class Sxm:
    units: int


@dataclass(frozen=True)
class C2c:
    links: int
    bytes_per_cycle: float
    hop_latency_cycles: int


TOPOLOGIES = ("dragonfly", "ring", "torus2d")


@dataclass(frozen=True)
class Topology:
    """How chips are linked (ir/topology.py builds the links). Keys a kind does
    not use may be left out (0 here): dragonfly needs chips_per_node,
    local_links and global_links; torus2d needs width (chips per row)."""

    kind: str
    max_chips: int
    chips_per_node: int = 0
    local_links: int = 0
    global_links: int = 0
    nodes_per_rack: int = 0
    width: int = 0

    NEEDS = {"dragonfly": ("chips_per_node", "local_links", "global_links"), "ring": (), "torus2d": ("width",)}


@dataclass(frozen=True)
class Latency:
    vxm: int
    mxm: int
    sxm: int
    c2c: int
    mem: int
    host: int


@dataclass(frozen=True)
class Machine:
    name: str
    clock_mhz: float
    vector: Vector
    sram: Sram
    streams: Streams
    mxm: Mxm
    vxm: Vxm
    sxm: Sxm
    mem: Mem
    host: Host
    c2c: C2c
    topology: Topology
    latency: Latency

    def cycles_to_us(self, cycles: int) -> float:
        return cycles / self.clock_mhz


def _build(cls, table: Any, where: str, source: str):
    """Build dataclass `cls` from a TOML table, checking keys and types."""
    if not isinstance(table, dict):
        raise LpucError(f"{source}: [{where}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise LpucError(f"{source}: unknown key {_key(where, unknown[0])} (expected: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        key = _key(where, name)
        if name not in table:
            if f.default is not dataclasses.MISSING:
                values[name] = f.default
                continue
            raise LpucError(f"{source}: missing key {key}")
        value = table[name]
        section = _SECTIONS.get(f.type)
        values[name] = _build(section, value, key, source) if section else _check_scalar(f.type, value, key, source)
    return cls(**values)


def _key(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _check_scalar(type_name: str, value: Any, key: str, source: str):
    if type_name == "str":
        if not isinstance(value, str) or not value:
            raise LpucError(f"{source}: {key} must be a non-empty string, got {value!r}")
        return value
    if type_name == "int":
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise LpucError(f"{source}: {key} must be a positive integer, got {value!r}")
        return value
    if type_name == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise LpucError(f"{source}: {key} must be a positive number, got {value!r}")
        return float(value)
    raise AssertionError(type_name)


_SECTIONS = {cls.__name__: cls for cls in (Vector, Sram, Streams, Mxm, Vxm, Sxm, Mem, Host, C2c, Topology, Latency)}


def parse_machine(text: str, source: str = "<machine>") -> Machine:
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise LpucError(f"{source}: not valid TOML: {e}") from None
    machine = _build(Machine, table, "", source)
    if machine.topology.kind not in TOPOLOGIES:
        raise LpucError(f"{source}: topology.kind must be one of {', '.join(TOPOLOGIES)}, "
                        f"got {machine.topology.kind!r}")
    missing = [k for k in Topology.NEEDS[machine.topology.kind] if not getattr(machine.topology, k)]
    if missing:
        raise LpucError(f"{source}: missing key topology.{missing[0]} (a {machine.topology.kind} topology needs it)")
    if machine.vector.lanes != LANES or machine.sram.word_bytes != LANES:
        raise LpucError(f"{source}: vector.lanes and sram.word_bytes must be {LANES} (the SRAM layout lpuc "
                        f"implements), got {machine.vector.lanes} and {machine.sram.word_bytes}")
    return machine


def read_machine(name_or_path: str | Path = DEFAULT_MACHINE) -> tuple[Machine, str]:
    """A shipped machine by name (e.g. `tsp-v1`), or a machine TOML file: the
    validated Machine and the file's text (which executable schedules embed)."""
    text_path = Path(name_or_path)
    shipped = SHIPPED / f"{name_or_path}.toml"
    if not str(name_or_path).endswith(".toml") and shipped.is_file():
        text_path = shipped
    elif not text_path.is_file():
        names = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.toml")))
        raise LpucError(f"no machine {str(name_or_path)!r}: give a shipped name ({names}) or a .toml file")
    try:
        text = text_path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise LpucError(f"{text_path}: cannot read: {e}") from None
    return parse_machine(text, str(name_or_path) if text_path == shipped else str(text_path)), text


def load_machine(name_or_path: str | Path = DEFAULT_MACHINE) -> Machine:
    """A shipped machine by name (e.g. `tsp-v1`), or a machine TOML file."""
    return read_machine(name_or_path)[0]
