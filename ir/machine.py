"""Machine descriptions: a TOML file per machine, validated into a frozen
`Machine`. The default, `tsp-v1`, ships in ir/machines/ and carries Groq's
published figures (the assumed ones are marked in the file).

`load_machine("tsp-v1")` loads a shipped machine by name; anything else is
read as a path. Every problem is a one-line LpucError naming the file and key;
every number must lie in its range (RANGES).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import LpucError
from .files import read_bytes

SHIPPED = Path(__file__).with_name("machines")
DEFAULT_MACHINE = "tsp-v1"


@dataclass(frozen=True)
class Vector:
    lanes: int  # elements of a vector; an SRAM word holds one byte of each (ir/layout.py)


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
    fp8_rate: float = 0.0  # 0: no fp8 path

    def rate(self, *dtypes) -> float:
        """Rows streamed per cycle, as a share of the int8 rate, for a matmul of these operand types: 8-bit
        integers at the int8 rate, an 8-bit float at fp8_rate, anything else at fp16_rate (the machine has
        no wider matrix path: fp32 runs at the fp16 rate)."""
        if all(d.is_int and d.itemsize == 1 for d in dtypes):
            return 1.0
        if any(d.is_float and d.itemsize == 1 for d in dtypes) and self.fp8_rate:
            return self.fp8_rate
        return self.fp16_rate


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
class Unit:
    """A class of functional units: instances per chip, and the pipeline depth in cycles from the
    unit's last input until its result is in SRAM (an instruction's latency is its occupancy plus this)."""

    count: int
    latency: int


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

    @property
    def lanes(self) -> int:
        """The vector width: lanes of a vector, bytes of an SRAM word (the layout's unit, ir/layout.py)."""
        return self.vector.lanes

    @cached_property
    def units(self) -> Mapping[str, Unit]:
        """Unit class -> its instances per chip (named class + index, e.g. vxm0..vxm15) and latency.
        A chip-to-chip link port has a transmit (tx) and a receive (rx) side."""
        lat = self.latency
        return MappingProxyType({
            "mxm": Unit(self.mxm.planes, lat.mxm), "vxm": Unit(self.vxm.alus_per_lane, lat.vxm),
            "sxm": Unit(self.sxm.units, lat.sxm), "mem": Unit(self.mem.units, lat.mem), "host": Unit(1, lat.host),
            "tx": Unit(self.c2c.links, lat.c2c), "rx": Unit(self.c2c.links, lat.c2c)})


# The range of every number in a machine file: (least, most, why). What a chip or a system of them
# could physically have, generously, and what lpuc can represent (a compile makes a list per unit
# instance, slice and stream register; the interpreter keeps every byte of a chip's SRAM). Each
# rejection names the key and its range. tsp-v1's figure is given for scale.
RANGES: dict[str, tuple[int | float, int | float, str]] = {
    "clock_mhz": (1, 10_000, "1 MHz to 10 GHz; tsp-v1: 900"),
    "vector.lanes": (1, 4096, "lanes of a vector, bytes of an SRAM word; tsp-v1: 320"),
    "sram.slices": (1, 1024, "tsp-v1: 88"),
    "sram.words_per_slice": (1, 1 << 20, "tsp-v1: 8,192"),
    "sram.word_bytes": (1, 4096, "one byte of each lane: vector.lanes; tsp-v1: 320"),
    "sram.read_ports": (1, 16, "words per slice per cycle; tsp-v1: 1"),
    "sram.write_ports": (1, 16, "words per slice per cycle; tsp-v1: 1"),
    "streams.east": (1, 256, "stream registers; tsp-v1: 32"),
    "streams.west": (1, 256, "stream registers; tsp-v1: 32"),
    "mxm.planes": (1, 64, "tsp-v1: 4"),
    "mxm.rows": (1, 4096, "tsp-v1: 320"),
    "mxm.cols": (1, 4096, "tsp-v1: 320"),
    "mxm.fp16_rate": (1 / 64, 1, "a share of the int8 rate; tsp-v1: 0.25"),
    "mxm.fp8_rate": (0, 1, "a share of the int8 rate, 0 for no fp8 path; tsp-v1: 0"),
    "vxm.alus_per_lane": (1, 64, "tsp-v1: 16"),
    "vxm.transcendental_cycles": (1, 1024, "cycles per vector; tsp-v1: 4"),
    "sxm.units": (1, 64, "tsp-v1: 2"),
    "mem.units": (1, 64, "tsp-v1: 2"),
    "host.bytes_per_cycle": (1 / 64, 4096, "tsp-v1: 17.8"),
    "c2c.links": (1, 64, "ports per chip; tsp-v1: 16"),
    "c2c.bytes_per_cycle": (1 / 64, 4096, "per link; tsp-v1: 15.5"),
    "c2c.hop_latency_cycles": (1, 100_000, "at most ~0.1 ms per hop at 1 GHz; tsp-v1: 540"),
    "topology.max_chips": (1, 100_000, "tsp-v1: 10,440"),
    "topology.chips_per_node": (1, 256, "tsp-v1: 8"),
    "topology.local_links": (1, 64, "tsp-v1: 7"),
    "topology.global_links": (1, 64, "tsp-v1: 4"),
    "topology.nodes_per_rack": (1, 1024, "tsp-v1: 9"),
    "topology.width": (1, 1024, "chips per row"),
    **{f"latency.{unit}": (1, 100_000, "pipeline depth in cycles")
       for unit in ("vxm", "mxm", "sxm", "c2c", "mem", "host")},
}
CHIP_SRAM_BYTES = 1 << 32  # at most 4 GiB per chip (slices x words_per_slice x word_bytes); tsp-v1: 220 MiB


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
    lo, hi, why = RANGES[key]
    kinds = int if type_name == "int" else (int, float)
    if not isinstance(value, kinds) or isinstance(value, bool) or not lo <= value <= hi:  # NaN is in no range
        what = "an integer" if type_name == "int" else "a number"
        span = _number(lo) if lo == hi else f"{what} from {_number(lo)} to {_number(hi)}"
        raise LpucError(f"{source}: {key} must be {span} ({why}), got {value!r}")
    return value if type_name == "int" else float(value)


def _number(x: int | float) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:g}"


_SECTIONS = {cls.__name__: cls for cls in (Vector, Sram, Streams, Mxm, Vxm, Sxm, Mem, Host, C2c, Topology, Latency)}


# A dotted name (`a.b.c`) of more parts than a machine file needs (its keys are `section.key`): tomllib's
# time and memory grow with the square of a dotted key's length, so such a text is refused before parsing.
_PART = r"""(?:[\w-]+|"[^"\n]*"|'[^'\n]*')"""
_LONG_DOTTED_NAME = re.compile(_PART + r"(?:[ \t]*\.[ \t]*" + _PART + "){7}")


def parse_machine(text: str, source: str = "<machine>") -> Machine:
    long_name = _LONG_DOTTED_NAME.search(text)
    if long_name:
        raise LpucError(f"{source}: {long_name[0][:40]!r}... is a dotted name of more than 8 parts "
                        "(a machine file's keys are section.key)")
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise LpucError(f"{source}: not valid TOML: {e}") from None
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise LpucError(f"{source}: nested too deep (a machine file's values are numbers and strings)") from None
    machine = _build(Machine, table, "", source)
    if machine.topology.kind not in TOPOLOGIES:
        raise LpucError(f"{source}: topology.kind must be one of {', '.join(TOPOLOGIES)}, "
                        f"got {machine.topology.kind!r}")
    missing = [k for k in Topology.NEEDS[machine.topology.kind] if not getattr(machine.topology, k)]
    if missing:
        raise LpucError(f"{source}: missing key topology.{missing[0]} (a {machine.topology.kind} topology needs it)")
    if machine.sram.chip_bytes > CHIP_SRAM_BYTES:
        raise LpucError(f"{source}: sram.slices x sram.words_per_slice x sram.word_bytes must be at most "
                        f"{CHIP_SRAM_BYTES:,} bytes (4 GiB of SRAM per chip, each byte of which the interpreter "
                        f"keeps), got {machine.sram.chip_bytes:,}")
    t = machine.topology
    if t.kind == "dragonfly" and t.chips_per_node > t.max_chips:
        raise LpucError(f"{source}: topology.max_chips must be at least topology.chips_per_node "
                        f"({t.chips_per_node}): a dragonfly is built of whole nodes, got {t.max_chips}")
    lanes = machine.vector.lanes
    if machine.sram.word_bytes != lanes:  # ir/layout.py: a word is one byte-plane of a vector
        raise LpucError(f"{source}: sram.word_bytes must equal vector.lanes ({lanes}): a word holds one byte "
                        f"of each lane; got {machine.sram.word_bytes}")
    if (machine.mxm.rows, machine.mxm.cols) != (lanes, lanes):  # lowering tiles matmuls by vector columns
        raise LpucError(f"{source}: mxm.rows and mxm.cols must equal vector.lanes ({lanes}): a weight tile is "
                        f"one vector column square; got {machine.mxm.rows} x {machine.mxm.cols}")
    return machine


def read_machine(name_or_path: str | Path = DEFAULT_MACHINE) -> tuple[Machine, str]:
    """A shipped machine by name (e.g. `tsp-v1`), or a machine TOML file: the
    validated Machine and the file's text (which executable schedules embed)."""
    text_path = Path(name_or_path)
    shipped = SHIPPED / f"{name_or_path}.toml"
    if not str(name_or_path).endswith(".toml") and shipped.is_file():
        text_path = shipped
    elif not text_path.exists():
        names = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.toml")))
        raise LpucError(f"no machine {str(name_or_path)!r}: give a shipped name ({names}) or a .toml file")
    try:
        text = read_bytes(text_path).decode()
    except UnicodeDecodeError as e:
        raise LpucError(f"{text_path}: not a machine file (not UTF-8: {e})") from None
    return parse_machine(text, str(name_or_path) if text_path == shipped else str(text_path)), text


def load_machine(name_or_path: str | Path = DEFAULT_MACHINE) -> Machine:
    """A shipped machine by name (e.g. `tsp-v1`), or a machine TOML file."""
    return read_machine(name_or_path)[0]
