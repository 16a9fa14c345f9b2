"""The cycle-accurate interpreter: an environment, a loop, a dispatch table.

It runs a scheduled machine module (docs/machine-ir.md) on byte-level SRAM and
checks every rule of that contract, independently of the compiler:

- the environment: per chip (created when first used) the SRAM as bytes
  (slices x words x lanes) and, per SRAM word, the value it holds, when
  that landed and until when it is being read (a constant's words are only
  pinned: _Sram); the MXM planes per chip; the transfers in flight between chips;
- the plan: what each instruction reads, writes and holds, found once before the loop (a
  stamped op's from its template's, where that is the same: _Plan._stamped);
- the loop: events in cycle order — an instruction issues at `c` (reads its
  operand bytes, decodes them with ir.layout, computes with numpy) and its
  results land at `c + lat` (bytes written at its `out` extents). A
  `c2c.send` reads its operand's words at issue and they arrive at `c + lat`;
  its `c2c.recv` writes those same words at its own landing;
- the semantics: each op's numpy implementation (ir.evaluator.EVAL, through
  ir.machine_ops.compute); a transfer moves raw words;
- the state (a resident KV cache, docs/machine-ir.md "State"): each `mem.state`'s
  words and written slots come from a `backends.state.State` before cycle 0 and go
  back to it after a run without hazards, so they persist from step to step; a
  state write lands only its new rows, at the position it reads at run time.

Occupancy and latency come from ir.costs and the machine description only: of
the program's attributes just `chip`, `cycle`, `unit`, `out`, `streams` and a
send's `route` are read; links and routes come from ir.topology.

It is the independent checker of the compiler's description of a scheduled
program (ir.schedule_facts, which the schedulers, the trace, the report and the
manifest read), so it derives these facts again on purpose, by its own code:
the words each value and view names and which value owns each word; each
instruction's reads, writes and stream count; the resources it holds and when
(unit, slice read and write ports, stream registers, MXM planes, link
directions); the program's length; each value's liveness and the SRAM peak.
It shares with the compiler only the op registry (places, unit classes), the
cost formulas (ir.costs), the layout's view rule (ir.layout) and the topology.
tests/test_schedule_facts.py checks that both derivations agree on every
sample at 1 and 4 chips. Units, slice
ports and stream registers are per chip; on more than one chip a resource's
name says its chip ("chip 2 unit vxm3"), a link is named by its sender
("c0.l3"). Each broken rule is a `HazardError` naming the instruction, the
cycle and the resource; `run(..., check=True)` raises the earliest,
`check=False` collects them all in `Result.hazards`. `timing_only=True` runs
every check without bytes or numerics (no inputs, no outputs): for programs
compiled without weights, or too large to hold in memory.
"""

from __future__ import annotations

import hashlib
import mmap
import operator
import re
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain, groupby
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from ..ir import machine_ops as mo
from ..ir.collector import collector_paused
from ..ir.core import Module, Op
from ..ir.costs import UnitCycles, cost, link_windows, units
from ..ir.errors import EvalError, LpucError
from ..ir.evaluator import check_inputs, conform
from ..ir.layout import (extent_starts, from_words, row_extents, sub_extents, to_words, view_extents, window_extents,
                         words)
from ..ir.machine import Machine
from ..ir.registry import HOST, LINK, OPS, PLANE, SRAM, TypeRuleError
from ..ir.sorting import by_key
from ..ir.target import Target
from ..ir.topology import Network, link_name

from .lpu import LpuFormatError, Program, read_lpu
from .state import Buffer, State


class HazardError(LpucError):
    """A broken rule of the machine-level contract, found while interpreting.

    `kind` is one of KINDS; `cycle` is where it happens (None for a missing
    schedule attribute); `instruction` is the op's label (`%x = vxm.add`);
    `resource` names the unit, port, stream, plane, link or SRAM word concerned."""

    def __init__(self, kind: str, cycle: int | None, instruction: str, resource: str, detail: str):
        self.kind, self.cycle, self.instruction, self.resource = kind, cycle, instruction, resource
        where = f"hazard at cycle {cycle}" if cycle is not None else "hazard"
        super().__init__(f"{where}: {instruction} {detail}")


KINDS = ("schedule", "unit_class", "unit", "read_port", "write_port", "stream", "streams", "out", "bounds",
         "operand", "raw", "overwritten", "war", "constant", "plane", "output", "chip", "route", "link", "state")


@dataclass(frozen=True)
class TraceEvent:
    instruction: str  # the op's label, e.g. "%y = vxm.add"
    op: str
    unit: str
    start: int        # issue cycle
    end: int          # start + occupancy: the unit is free again
    land: int         # start + latency: the results are in SRAM
    chip: int = 0


@dataclass(frozen=True)
class ChipStats:
    chip: int
    instructions: int
    class_busy: Mapping[str, int]           # vxm, mxm, sxm, mem, host -> busy cycles (all instances)
    class_utilization: Mapping[str, float]  # ... -> busy / (cycles * instances)
    sram_peak_bytes: int

    def as_json(self) -> dict[str, Any]:
        """As `lpuc run --json` writes it (its `per_chip`), and the report's chip table shows it."""
        return {"chip": self.chip, "instructions": self.instructions, "sram_peak_bytes": self.sram_peak_bytes,
                "utilization": {k: round(v, 6) for k, v in self.class_utilization.items()},
                "busy_cycles": dict(self.class_busy)}


@dataclass(frozen=True)
class LinkStats:
    name: str        # the link direction, by its sender: "c0.l3"
    bytes: int       # bytes carried (every transfer over it)
    busy: int        # cycles held
    transfers: int


@dataclass(frozen=True)
class Stats:
    cycles: int
    latency_us: float
    instructions: int
    busy: Mapping[str, int]                 # unit instance ("vxm3"; on many chips "c2.vxm3") -> busy cycles
    utilization: Mapping[str, float]        # unit instance -> busy / cycles
    class_busy: Mapping[str, int]           # unit class -> busy cycles (all instances, all chips)
    class_utilization: Mapping[str, float]  # unit class -> busy / (cycles * instances * chips)
    sram_peak_bytes: int                    # the largest chip's peak
    chips: tuple[ChipStats, ...] = ()       # per chip 0 .. chips-1
    links: tuple[LinkStats, ...] = ()       # per link direction used, by (chip, port)
    link_wait_cycles: int = 0               # cycles with a transfer in flight and every other unit idle
    transfer_bytes: int = 0                 # bytes sent (each transfer once, whatever its hops)
    host_bytes: int = 0                     # bytes crossing the host (host.input and host.output words)


@dataclass(frozen=True, eq=False)
class Result:
    outputs: Mapping[str, np.ndarray]
    stats: Stats
    hazards: tuple[HazardError, ...] = ()
    _instructions: Sequence = field(default=(), repr=False)  # the plan's, from which `trace` is made

    @cached_property
    def trace(self) -> tuple[TraceEvent, ...]:
        """What ran, in issue order (made when first asked for: an event per instruction, millions at 70B)."""
        return _trace(self._instructions)

    @cached_property
    def occupancy(self) -> Mapping[int, int]:
        """Op index -> the cycles its instruction held its unit (its cost with its SRAM extents)."""
        return MappingProxyType({i.idx: i.occ for i in self._instructions})


# Issue cycles lie in 0..MAX_CYCLE: far beyond any real program (58 days at 900 MHz), yet
# every sum of cycles and latencies stays exact in int64 arrays and in the trace's float timestamps.
MAX_CYCLE = 2 ** 52


# --- the dispatch table -----------------------------------------------------

def _moves_words(op: Op) -> bool:
    """A transfer's send or receive: it takes and gives raw words (uint8 [words, lanes]), not values, so a
    transfer is exact to the byte."""
    opdef = OPS[op.name]
    return opdef.result_place == LINK or LINK in opdef.places


# --- the plan: what each instruction reads, writes and holds -----------------

_UNIT_RE = re.compile(r"([a-z]+)(\d+)")


@dataclass(slots=True)
class _Val:
    kind: str                 # "sram", "host" (block inputs, host.output results), "plane" (install
                              # results), "link" (a c2c.send result: a transfer in flight)
    instr: int = -1           # plane / link: the install's / send's instruction index
    ok: bool = True           # False: its words are unknown (the producer is broken)
    chip: int = 0             # sram, plane: the chip holding it
    extents: tuple | None = None  # sram: its (slice, word, words) in its words' order, one object for all equal
                                  # extents (_Plan._extents: see _Plan._template)
    base: int = -1            # sram: the base owning all its words (-1: none, or several: `_segs` then)
    _segs: tuple | None = None
    _runs: tuple | None = None

    @property
    def segs(self) -> tuple:
        """Its segments ((slice, word, words, base id), ...) in its words' order (made when first asked for: a
        value of one base, most of all a weight, is often only read through a stamp of its template's reads)."""
        if self._segs is None:
            self._segs = tuple([(s, w, n, self.base) for s, w, n in self.extents]) if self.base >= 0 else ()
        return self._segs

    def segs_extents(self) -> tuple:
        return tuple(seg[:3] for seg in self.segs)

    @property
    def runs(self) -> tuple:
        """Its words as an instruction reads them (_Instr.reads), made once for all its readers."""
        if self._runs is None:
            self._runs = ((self.extents, self.base),) if self.base >= 0 else _runs(self.segs)
        return self._runs


def _runs(segs) -> tuple:
    """Segments ((slice, word, words, base id), ...) as runs ((extents, base id), ...): the extents of consecutive
    segments of one base together, so that a read looks up each base once (most reads are of one base)."""
    return tuple([(tuple([seg[:3] for seg in group]), b) for b, group in groupby(segs, key=operator.itemgetter(3))])


_SRAM_ARGS = tuple(("sram", k) for k in range(16))  # (one object each: an instruction's args, millions of them)
_PLANE_ARG = ("plane", None)  # (the plane a matmul streams through is its unit's: _Instr.weights says whose)


def _sram_arg(k: int) -> tuple:
    """An instruction's arg for its k-th SRAM operand: ("sram", k), its index in _Instr.reads."""
    return _SRAM_ARGS[k] if k < len(_SRAM_ARGS) else ("sram", k)


def _run_extents(read: tuple) -> tuple:
    """The extents a read's runs (_runs) name, in order."""
    return tuple(chain.from_iterable(extents for extents, _ in read))


def _same_words(val: _Val, tval: _Val) -> bool:
    """Whether SRAM value `val` is at the extents of `tval`, its template's (ir.pieces), each of one base: then what
    a stamped op reads of it is what its template op reads of `tval`, rebased."""
    return val.extents is not None and val.extents is tval.extents and val.base >= 0 and tval.base >= 0


@dataclass(slots=True)
class _Base:
    """A value that owns SRAM words (an instruction's or constant's result, not a view)."""
    name: str
    instr: int                # producing instruction (-1 for constants)
    op: Op                    # the op making it (its instruction's, or a constant's or state's)
    land: int
    words: int
    chip: int = 0
    end: int = 0              # the last read of its words ends (liveness)
    constant: bool = False
    state: str = ""           # a state's name: its words are the state's (mem.state, or its write's result)
    alias: bool = False       # a state write's result: the state's words again (counted there)

    @property
    def label(self) -> str:
        return self.op.label()


@dataclass(slots=True)
class _Instr:
    idx: int
    op: Op
    cls: str
    unit: str | None
    cycle: int | None
    chip: int = 0
    occ: int = 0
    lat: int = 0
    reads: list = field(default_factory=list)    # per SRAM operand: the words it reads, as runs (_runs)
    writes: list = field(default_factory=list)   # per SRAM result: (base id, extents)
    args: list = field(default_factory=list)     # per operand: ("sram", i) / ("plane", None) / ("link", val)
                                                 # / ("host", name)
    streams: tuple = ()
    ok: bool = True                              # executable (timed, operands known, out well-formed)
    port_reads: tuple = ()
    port_writes: tuple = ()
    hops: tuple = ()                             # send: the link directions (chip, port) of its route
    dest: tuple | None = None                    # send: (chip, arrival port) where its route ends
    recv: int = -1                               # send: the instruction index of its c2c.recv
    state: int = -1                              # a state write: the base id of the state it writes
    weights: _Val | None = None                  # a matmul: the plane value it streams through (its install's)
    clean: bool = False                          # planned without a hazard (its stamps may be planned as it moved)

    @property
    def label(self) -> str:  # (made when a message or the trace needs it: instructions are many)
        return self.op.label()


_HELD = ("unit", "read_port", "write_port", "stream", "link")  # what instructions hold (_Plan.check_resources)
_ONE_NUMBER = 2 ** 62  # check_resources numbers resources, and holds by resource and cycle, when they fit below


class _Plan:
    """Static analysis of a scheduled module: values' words, costs, static hazards."""

    def __init__(self, module: Module, target: Target):
        self.module, self.target, self.machine = module, target, target.machine
        self.chips, self.lanes = target.chips, target.lanes
        self.multi = self.chips > 1
        self.hazards: list[HazardError] = []
        self.values: dict[str, _Val] = {v.name: _Val("host") for v in module.inputs}
        self.bases: list[_Base] = []
        self.instrs: list[_Instr] = []
        self.instr_at: list[_Instr | None] = [None] * len(module.ops)  # by op index: its instruction, if one
        self.constants: list[tuple[Op, int, tuple]] = []  # (op, base id, extents)
        self.states: list[tuple[Op, int, tuple]] = []     # (mem.state op, base id, extents)
        self.starts: dict[str, list[int]] = {}            # per value viewed or windowed: _starts
        self.units = units(self.machine)
        self.n_streams = self.machine.streams.east + self.machine.streams.west
        self._unit_names: dict[str, tuple[str, int]] = {}  # a `unit` -> (its class, its index); ("", 0): no unit name
        self._unit_set = {cls: {f"{cls}{k}" for k in range(n)} for cls, n in self.units.items()}  # each class's units
        self._streams_known: dict[tuple, bool] = {}  # `streams` -> _streams_ok
        self._unit_cycles = UnitCycles(self.machine)
        self._type_words: dict = {}          # type -> words (_words)
        self._outs: dict[tuple, tuple] = {}  # (`out`, result types) by identity -> `out` split per result (_out)
        self._templates: dict[int, int] = {}  # a stamped op's index -> its template op's (ir.pieces)
        self._ops = module.ops
        self._shared: dict[tuple, tuple] = {}  # extents -> themselves (_extents)
        firsts: dict[int, tuple[int, ...]] = {}
        for piece in module.pieces:
            ops = firsts.setdefault(piece.template, piece.ops)
            if ops is not piece.ops:
                self._templates.update(zip(piece.ops, ops))
        kinds: dict[str, str] = {}  # op name -> "view", "pinned" or "" (an instruction): ops are many, names few
        templates, instr_at = self._templates, self.instr_at
        for idx, op in enumerate(module.ops):
            kind = kinds.get(op.name)
            if kind is None:
                kind = kinds[op.name] = "view" if mo.is_view(op.name) else "pinned" if mo.is_pinned(op.name) else ""
            if kind == "view":
                self._view(idx, op)
            elif kind:
                self._constant(op)
            elif (j := templates.get(idx)) is None or not self._stamped(idx, op, instr_at[j]):
                self._instruction(idx, op)
        self.outputs: dict[str, str] = {}
        for name, v in module.outputs:
            val = self.values.get(v.name)
            if val is None or val.kind != "host" or val.instr < 0:  # not a host.output result
                self._hazard("output", None, f"output {name!r}", f"value {v}",
                             f"is {v}, which no host.output copies out to the host")
            else:
                self.outputs[name] = v.name

    @property
    def network(self) -> Network:
        return self.target.network

    def on(self, chip: int) -> str:
        """The prefix naming a chip's resources: none on one chip (`slice 4`), else `chip 2 slice 4`."""
        return f"chip {chip} " if self.multi else ""

    def _hazard(self, kind, cycle, label, resource, detail):
        self.hazards.append(HazardError(kind, cycle, label, resource, detail))

    def _chip(self, op: Op, cycle) -> int:
        chip = mo.chip_of(op)
        if not 0 <= chip < self.chips:
            self._hazard("route", cycle, op.label(), f"chip {chip}",
                         f"is on chip {chip}, but the module has {self.chips} chip(s) (0..{self.chips - 1})")
        return chip

    def _starts(self, v, val: _Val) -> list[int]:
        """extent_starts of v's segments, found once for all the windows and views of v (a weight's tiles)."""
        starts = self.starts.get(v.name)
        if starts is None:
            starts = self.starts[v.name] = extent_starts(val.segs)
        return starts

    def _window(self, op: Op, v, val: _Val) -> tuple:
        """The runs (_runs) of the window of v an install reads."""
        return _runs(window_extents(v.type, val.segs, *mo.window(op.attrs, v.type), self.lanes,
                                    self._starts(v, val)))

    # views and constants

    def _view(self, idx: int, op: Op):
        cycle = op.attrs.get("cycle")
        chip = self._chip(op, cycle)
        for key in ("out", "unit", "streams"):
            if op.attrs.get(key) is not None:
                self._hazard("out", cycle, op.label(), key, f"is a view (no data moves) but has `{key}`")
        vals, ok = [self.values[v.name] for v in op.operands], True
        for v, val in zip(op.operands, vals):
            if val.kind != "sram":
                self._hazard("operand", None, op.label(), f"value {v}", f"views {v}, which is not in SRAM ({val.kind})")
                ok = False
            elif val.chip != chip:  # a view names words of its own chip only
                self._hazard("chip", cycle, op.label(), f"value {v}",
                             f"views {v}, which lives on chip {val.chip}, from chip {chip}")
                ok = False
            else:
                ok &= val.ok
        out, extents = (), None
        template = self._template(idx, op) if ok else None
        if template is not None:  # its template's segments, of this op's operands
            tval = self.values[template.result.name]
            base = {self.values[tv.name].base: val.base for tv, val in zip(template.operands, vals)}
            if tval.base >= 0:
                self.values[op.result.name] = _Val("sram", chip=chip, extents=tval.extents, base=base[tval.base])
                return
            out, extents = tuple((s, w, n, base[b]) for s, w, n, b in tval.segs), tval.extents
        elif ok:
            # the layout's own rule, on the operands' segments (each piece keeps the base owning its words)
            out = view_extents(op.name, op.attrs, [v.type for v in op.operands], [val.segs for val in vals],
                               self.lanes, self._starts(op.operands[0], vals[0]))
            extents = self._extents(tuple(seg[:3] for seg in out))
        bases = {seg[3] for seg in out}
        self.values[op.result.name] = _Val("sram", ok=ok, chip=chip, extents=extents,
                                           base=bases.pop() if len(bases) == 1 else -1, _segs=out)

    def _constant(self, op: Op):
        """A constant (in the SRAM image) or a state (kept from run to run): placed before cycle 0."""
        r = op.result
        cycle = op.attrs.get("cycle")
        chip = self._chip(op, 0)
        if cycle not in (None, 0):
            self._hazard("schedule", cycle, op.label(), "cycle", "is in the SRAM image: its cycle must be 0")
        for key in ("unit", "streams"):
            if op.attrs.get(key) is not None:
                self._hazard("unit_class", 0, op.label(), key,
                             f"is in the SRAM image, no instruction: it has no `{key}`")
        extents = self._out(op, 0, [r.type], chip)
        if extents is None:
            self.values[r.name] = _Val("sram", ok=False, chip=chip)
            return
        if mo.is_state(op.name):
            base = self._new_base(r.name, -1, op, 0, words(r.type, self.lanes), chip)
            self.bases[base].state = op.attrs["name"]
            self.states.append((op, base, extents[0]))
        else:
            base = self._new_base(r.name, -1, op, 0, words(r.type, self.lanes), chip, constant=True)
            self.constants.append((op, base, extents[0]))
        self.values[r.name] = _Val("sram", chip=chip, extents=extents[0], base=base)

    def _words(self, t) -> int:
        """SRAM words of a value of type `t` (a program spells few distinct types)."""
        n = self._type_words.get(t)
        if n is None:
            n = self._type_words[t] = words(t, self.lanes)
        return n

    def _new_base(self, name, instr, op, land, nwords, chip, constant=False) -> int:
        self.bases.append(_Base(name, instr, op, land, nwords, chip, constant=constant))
        return len(self.bases) - 1

    def _out(self, op: Op, cycle, types, chip: int) -> list[tuple] | None:
        """`out` split per result; None (after a hazard) when it is missing, mis-sized or outside SRAM."""
        out = op.attrs.get("out")
        key = (id(out), *map(id, types))  # (a repeated layer's ops share their `out` and types: ir.pieces)
        known = self._outs.get(key)
        if known is not None and known[0] is out and all(map(operator.is_, known[1], types)):
            return known[2]
        split = self._split_out(op, cycle, types, chip, out)
        if split is not None:
            split = [self._extents(e) for e in split]
            self._outs[key] = (out, tuple(types), split)
        return split

    def _split_out(self, op: Op, cycle, types, chip: int, out) -> list[tuple] | None:
        need = [self._words(t) for t in types]
        if out is None:
            self._hazard("out", cycle, op.label(), "out", f"has no `out` extents for its {sum(need)} result words")
            return None
        have = sum(n for _, _, n in out)
        if have != sum(need):
            self._hazard("out", cycle, op.label(), "out",
                         f"has `out` spanning {have} words, its results take {sum(need)}")
            return None
        sram, ok = self.machine.sram, True
        for s, w, n in out:
            if s >= sram.slices or w + n > sram.words_per_slice:
                self._hazard("bounds", cycle, op.label(), f"{self.on(chip)}slice {s} word {w}",
                             f"writes {self.on(chip)}slice {s} word {w} ({n} words), outside SRAM "
                             f"({sram.slices} slices x {sram.words_per_slice} words)")
                ok = False
        if not ok:
            return None
        if len({s for s, _, _ in out}) < len(out):  # (extents on distinct slices cannot overlap)
            seen: dict[int, list[tuple[int, int]]] = defaultdict(list)
            for s, w, n in out:
                for w0, n0 in seen[s]:
                    if w < w0 + n0 and w0 < w + n:
                        where = f"{self.on(chip)}slice {s} word {max(w, w0)}"
                        self._hazard("out", cycle, op.label(), where,
                                     f"writes {where} twice (its `out` extents overlap)")
                        return None
                seen[s].append((w, n))
        if len(need) == 1:  # all of `out`, as sub_extents would cut it
            return [tuple((s, w, n) for s, w, n in out if n)]
        result, pos = [], 0
        for k in need:
            result.append(sub_extents(out, pos, k))
            pos += k
        return result

    # instructions

    def _instruction(self, idx: int, op: Op):
        try:
            cls = mo.unit_class(op.name)
        except TypeRuleError:
            raise LpucError(f"{op.label()}: {op.name} is not a machine instruction (not a scheduled program)") from None
        hazards = len(self.hazards)
        cycle = op.attrs.get("cycle")
        unit = op.attrs.get("unit")
        chip = self._chip(op, cycle)
        ins = _Instr(idx, op, cls, unit, cycle, chip)
        if cycle is None:
            self._hazard("schedule", None, op.label(), "cycle", "has no `cycle` (not scheduled)")
            ins.ok = False
        elif not 0 <= cycle <= MAX_CYCLE:  # then it is not scheduled: it never issues
            self._hazard("schedule", None, op.label(), "cycle", f"has cycle {cycle}, outside 0..{MAX_CYCLE}")
            cycle = ins.cycle = None
            ins.ok = False
        if unit is None:
            self._hazard("unit_class", cycle, op.label(), "unit", f"has no `unit` (it needs a {cls} unit)")
        else:
            named = self._unit_names.get(unit)
            if named is None:  # (once per unit name)
                m = _UNIT_RE.fullmatch(unit)
                named = self._unit_names[unit] = (m.group(1), int(m.group(2))) if m else ("", 0)
            if named[0] != cls:
                self._hazard("unit_class", cycle, op.label(), f"{self.on(chip)}unit {unit}",
                             f"runs on {unit}, not a {cls} unit")
            elif named[1] >= self.units[cls]:
                self._hazard("unit", cycle, op.label(), f"{self.on(chip)}unit {unit}",
                             f"runs on {unit}, which {self.machine.name} does not have "
                             f"({cls}0..{cls}{self.units[cls] - 1})")
        # operands, by where the op's definition says each one lives
        opdef = OPS[op.name]
        for i, v in enumerate(op.operands):
            val, place = self.values[v.name], opdef.operand_place(i)
            if place == HOST:
                if val.kind != "host":
                    self._hazard("operand", cycle, op.label(), f"value {v}",
                                 f"copies in {v}, which is not a model input")
                    ins.ok = False
                ins.args.append(("host", v.name))
            elif place == PLANE:
                if val.kind != "plane":
                    self._hazard("plane", cycle, op.label(), f"{self.on(chip)}plane {unit}",
                                 f"multiplies by {v}, which no mxm.install put on an MXM plane")
                    ins.ok = False
                elif val.chip != chip:
                    self._hazard("chip", cycle, op.label(), f"value {v}",
                                 f"multiplies by {v}, which is installed on chip {val.chip}, not on chip {chip}")
                    ins.ok = False
                ins.args.append(_PLANE_ARG)
                ins.weights = ins.weights or val
            elif place == LINK:
                ins.ok &= self._receive(ins, v, val)
                ins.args.append(("link", val))
            elif val.kind == "link":
                self._hazard("operand", cycle, op.label(), f"value {v}",
                             f"reads {v}, a transfer in flight: only its c2c.recv may read it")
                ins.ok = False
                ins.args.append(("host", None))
            elif val.kind != "sram":
                where = "on an MXM plane" if val.kind == "plane" else "on the host"
                self._hazard("operand", cycle, op.label(), f"value {v}", f"reads {v}, which is {where}, not in SRAM")
                ins.ok = False
                ins.args.append(("host", None))
            elif opdef.in_place and i == 0:  # the state it writes in place: not read
                state = next((b for *_, b in val.segs if self.bases[b].state and not self.bases[b].alias), None)
                if state is None or val.chip != chip:
                    self._hazard("state", cycle, op.label(), f"value {v}", f"writes {v} in place, which is no state "
                                 f"of its chip {chip}")
                    ins.ok = False
                ins.state = -1 if state is None else state
                ins.args.append(_sram_arg(len(ins.reads)))
                ins.reads.append(())
            else:
                if val.chip != chip:  # rule 7; its words are still read (and tracked) where they are
                    self._hazard("chip", cycle, op.label(), f"value {v}",
                                 f"reads {v}, which lives on chip {val.chip}, not on its chip {chip}")
                    ins.ok = False
                ins.ok &= val.ok
                ins.args.append(_sram_arg(len(ins.reads)))
                ins.reads.append(self._window(op, v, val) if mo.reads_window(op) else val.runs)
        # results
        sram_results = list(op.results) if opdef.result_place == SRAM else []
        out_ext = None
        if sram_results:
            out_ext = self._out(op, cycle, [r.type for r in sram_results], chip)
            ins.ok &= out_ext is not None
        elif op.attrs.get("out"):
            self._hazard("out", cycle, op.label(), "out", "has `out` extents, but its result is not in SRAM")
        # streams
        streams = op.attrs.get("streams") or ()
        want = len(ins.reads) + len(sram_results)
        if len(streams) != want:
            self._hazard("streams", cycle, op.label(), "streams",
                         f"holds {len(streams)} stream registers, needs {want} (one per SRAM operand and result)")
        for s in streams:
            if not 0 <= s < self.n_streams:
                self._hazard("streams", cycle, op.label(), f"{self.on(chip)}stream {s}",
                             f"holds stream {s}, which {self.machine.name} does not have (0..{self.n_streams - 1})")
        if len(set(streams)) != len(streams):
            dup = next(s for s in streams if streams.count(s) > 1)
            self._hazard("stream", cycle, op.label(), f"{self.on(chip)}stream {dup}", f"holds stream {dup} twice")
        ins.streams = tuple(s for s in dict.fromkeys(streams) if 0 <= s < self.n_streams)
        # timing, from the cost table only
        writes = out_ext or []
        c = cost(op, self.machine, [_run_extents(read) for read in ins.reads], writes, self._unit_cycles(op))
        ins.occ, ins.lat, ins.port_reads, ins.port_writes = c.occupancy, c.latency, c.reads, c.writes
        land = (cycle or 0) + ins.lat
        if opdef.in_place:  # its result is its state's words after its write (which land() does itself)
            state = self.bases[ins.state] if ins.state >= 0 else None
            if writes and state is not None and writes[0] != self.values[op.operands[0].name].segs_extents():
                self._hazard("state", cycle, op.label(), "out", f"has `out` {list(writes[0])[:2]}..., not the words of "
                             f"its state %{state.name}")
                ins.ok = False
            base = self._new_base(sram_results[0].name, idx, op, land, 0, chip)
            self.bases[base].state, self.bases[base].alias = (state.state if state else ""), True
            if writes:
                ins.writes.append((base, writes[0]))
                self.values[sram_results[0].name] = _Val("sram", ok=ins.ok, chip=chip, extents=writes[0], base=base)
            self._results(ins, opdef.result_place, [])
        else:
            self._results(ins, opdef.result_place, writes)
        ins.clean = ins.ok and len(self.hazards) == hazards

    def _results(self, ins: _Instr, place: str, writes: list[tuple]):
        """Define an instruction's results (SRAM ones at `writes`, its `out` split), and add it to the plan."""
        op, idx, chip = ins.op, ins.idx, ins.chip
        land = (ins.cycle or 0) + ins.lat
        if place == SRAM:
            bases, values, ok = self.bases, self.values, ins.ok
            for r, ext in zip(op.results, writes):
                base = len(bases)
                bases.append(_Base(r.name, idx, op, land, self._words(r.type), chip))
                ins.writes.append((base, ext))
                values[r.name] = _Val("sram", -1, ok, chip, ext, base)
            if not writes and not ins.writes:
                for r in op.results:
                    self.values[r.name] = _Val("sram", ok=False, chip=chip)
        elif place == PLANE:
            self.values[op.result.name] = _Val("plane", instr=idx, ok=ins.ok, chip=chip)
        elif place == HOST:
            self.values[op.result.name] = _Val("host", instr=idx, ok=ins.ok)
        elif place == LINK:
            routed = self._route(ins)
            self.values[op.result.name] = _Val("link", instr=idx, ok=ins.ok and routed, chip=chip)
        self.instrs.append(ins)
        self.instr_at[idx] = ins

    def _stamped(self, idx: int, op: Op, t: _Instr | None) -> bool:
        """Plan an op stamped from `t` (ir.pieces) as `t` moved, when it reads and writes the same words (the
        same `out`, each SRAM operand at its template operand's extents, one base each: then the cost table gives
        the same costs) and is as clean: `t` was planned without a hazard and this op's own attributes (chip,
        cycle, unit, streams) and operands are all in order. Else False: it is planned like any op (which finds
        what is not in order)."""
        if t is None or not t.clean or t.state >= 0:  # (t.state: t writes a state in place)
            return False
        attrs = op.attrs.as_dict()
        if attrs.get("out") is not t.op.attrs.as_dict().get("out"):
            return False
        cycle, unit, chip = attrs.get("cycle"), attrs.get("unit"), attrs.get("chip", 0)
        streams = attrs.get("streams") or ()
        if type(cycle) is not int or not 0 <= cycle <= MAX_CYCLE or not 0 <= chip < self.chips \
                or unit not in self._unit_set[t.cls] or len(streams) != len(t.streams) or not self._streams_ok(streams):
            return False
        reads, weights, values = [], None, self.values
        for v, tv, (where, ref) in zip(op.operands, t.op.operands, t.args):
            val = values[v.name]
            if val.chip != chip or not val.ok or val.kind != where:
                return False
            if where == "sram":  # the words its template reads, of this op's value
                tval, tread = values[tv.name], t.reads[ref]
                if not _same_words(val, tval):
                    return False
                reads.append(val.runs if tread is tval.runs else tuple([(e, val.base) for e, _ in tread]))
            elif where == "plane":
                weights = weights or val
            else:
                return False
        place = OPS[op.name].result_place
        writes = [ext for _, ext in t.writes]  # (its `out`, split as the template's: the same object, and types)
        # (its args are its template's, the same list: an SRAM arg names a read by position, a plane arg no value)
        ins = _Instr(idx, op, t.cls, unit, cycle, chip, t.occ, t.lat, args=t.args, reads=reads, streams=streams,
                     port_reads=t.port_reads, port_writes=t.port_writes, weights=weights, clean=True)
        self._results(ins, place, writes)
        return True

    def _streams_ok(self, streams: tuple) -> bool:
        """Whether `streams` names registers the machine has, each once (a program spells few distinct ones)."""
        ok = self._streams_known.get(streams)
        if ok is None:
            ok = self._streams_known[streams] = all(0 <= s < self.n_streams for s in streams) and \
                len(set(streams)) == len(streams)
        return ok

    def _template(self, idx: int, op: Op) -> Op | None:
        """The view this view stamps (ir.pieces), already planned, when each operand is at the extents of its
        template's (one base each): a view has its template's attributes (a piece's differ in chip and cycle
        only), so its segments are its template's, of its own operands."""
        j = self._templates.get(idx)
        t = self._ops[j] if j is not None else None
        if t is None or t.results[0].name not in self.values:
            return None
        for v, tv in zip(op.operands, t.operands):
            val, tval = self.values[v.name], self.values[tv.name]
            if val.kind != tval.kind or val.kind == "sram" and not _same_words(val, tval):
                return None
        return t

    def _extents(self, extents: tuple) -> tuple:
        """`extents`, as the one object all equal extents are (so that _template compares them by identity)."""
        return self._shared.setdefault(extents, extents)

    # transfers

    def _route(self, send: _Instr) -> bool:
        """Follow a send's route through the network (rule 8); False when it takes a port with no cable."""
        route, chip, port, hops = send.op.attrs["route"], send.chip, -1, []
        for p in route:
            end = self.network.peer(chip, p) if 0 <= chip < self.chips else None
            if end is None:
                self._hazard("route", send.cycle, send.label, link_name(chip, p),
                             f"sends over port {p} of chip {chip}, which has no cable there "
                             f"(a {self.network.kind} of {self.chips} chips)")
                return False
            hops.append((chip, p))
            chip, port = end
        send.hops, send.dest = tuple(hops), (chip, port)
        first = f"{send.cls}{route[0]}"
        if send.unit is not None and _UNIT_RE.fullmatch(send.unit) and send.unit.startswith(send.cls) \
                and send.unit != first:
            self._hazard("route", send.cycle, send.label, f"{self.on(send.chip)}unit {send.unit}",
                         f"runs on {send.unit}, but its route leaves through port {route[0]} ({first})")
        return True

    def _receive(self, ins: _Instr, v, val: _Val) -> bool:
        """Check a c2c.recv against its send: one receive per transfer, on the route's end, after arrival."""
        if val.kind != "link":
            self._hazard("operand", ins.cycle, ins.label, f"value {v}",
                         f"receives {v}, which is not a transfer (no c2c.send result)")
            return False
        send = self.instr_at[val.instr]
        if send.recv >= 0:
            other = self.instr_at[send.recv]
            self._hazard("operand", ins.cycle, ins.label, f"value {v}",
                         f"receives {v}, which {other.label} already receives")
            return False
        send.recv = ins.idx
        if send.dest is None:  # its route is broken (reported at the send)
            return val.ok
        chip, port = send.dest
        last = link_name(*send.hops[-1])
        if chip != ins.chip:
            self._hazard("route", send.cycle, send.label, last,
                         f"routes {v} to chip {chip}, but its receive {ins.label} is on chip {ins.chip}")
            return False
        if ins.unit is not None and ins.unit.startswith(ins.cls) and ins.unit != f"{ins.cls}{port}":
            self._hazard("route", ins.cycle, ins.label, f"{self.on(ins.chip)}unit {ins.unit}",
                         f"receives {v} on {ins.unit}, but it arrives on port {port} ({ins.cls}{port})")
        if ins.cycle is not None and send.cycle is not None and ins.cycle < send.cycle + send.lat:
            self._hazard("link", ins.cycle, ins.label, last,
                         f"receives {v} before it arrives (at cycle {send.cycle + send.lat})")
        return val.ok

    # resources

    def _holds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Callable[[int], tuple]]:
        """Every hold of a resource, as columns: the resource (a number: the same resource, the same number), start,
        end, instruction; and what a resource's number is, (kind, chip, resource name). Millions of holds: the
        instructions' ports and registers go by their distinct sets (instructions alike share them), each set's
        instructions at once, into columns made once."""
        ks = [k for k, ins in enumerate(self.instrs) if ins.cycle is not None]
        timed = [self.instrs[k] for k in ks]
        n = len(ks)
        c, chip, occ, lat = (np.fromiter(values, np.int64, n) for values in (
            (i.cycle for i in timed), (i.chip for i in timed), (i.occ for i in timed), (i.lat for i in timed)))
        k, lands, units = np.array(ks, np.int64), c + lat, {}
        unit = np.fromiter((-1 if i.unit is None else units.setdefault(i.unit, len(units)) for i in timed), np.int64, n)
        reads, writes, streams = {}, {}, {}  # a set of ports (registers) -> the instructions holding it
        for j, ins in enumerate(timed):
            reads.setdefault(ins.port_reads, []).append(j)
            writes.setdefault(ins.port_writes, []).append(j)
            streams.setdefault(ins.streams, []).append(j)
        links = [(src, port, ins.cycle + offset, ins.cycle + offset + length, idx)  # (sends: few)
                 for idx, ins in zip(ks, timed) if ins.hops
                 for (_, offset, length), (src, port) in zip(link_windows(ins.op, self.machine, ins.occ), ins.hops)]
        # a resource's number: (kind, chip, resource) in mixed radix (chips as the program names them, in order)
        named = np.unique(np.concatenate([chip, np.arange(self.chips), np.array([src for src, *_ in links], np.int64)]))
        place = np.searchsorted(named, chip)
        radix = 1 + max([len(units), self.n_streams, *(s for held in (*reads, *writes) for s, _ in held),
                         *(port for _, port, *_ in links)])
        sizes = [int((unit >= 0).sum())] + [len(js) * len(held) for sets in (reads, writes, streams)
                                            for held, js in sets.items()] + [len(links)]
        resource, start, end, instr = (np.empty(sum(sizes), np.int64) for _ in range(4))
        at = 0

        def put(kind, places, res, starts, ends, instrs):
            nonlocal at
            m = len(places)
            resource[at:at + m] = (kind * len(named) + places) * radix + res
            start[at:at + m], end[at:at + m], instr[at:at + m] = starts, ends, instrs
            at += m

        has = unit >= 0
        put(0, place[has], unit[has], c[has], (c + occ)[has], k[has])
        rp, wp = self.machine.sram.read_ports, self.machine.sram.write_ports
        for kind, sets in ((1, reads), (2, writes), (3, streams)):
            for held, js in sets.items():
                js = np.array(js, np.int64)
                for item in held:
                    if kind == 1:
                        put(1, place[js], item[0], c[js], c[js] + -(-item[1] // rp), k[js])
                    elif kind == 2:
                        put(2, place[js], item[0], lands[js] - -(-item[1] // wp), lands[js], k[js])
                    else:
                        put(3, place[js], item, c[js], lands[js], k[js])
        if links:
            src, port, starts, ends, instrs = (np.array(column, np.int64) for column in zip(*links))
            put(4, np.searchsorted(named, src), port, starts, ends, instrs)
        names = {number: name for name, number in units.items()}

        def what(number: int) -> tuple[str, int, object]:
            (kind, where), res = divmod(divmod(number, radix)[0], len(named)), number % radix
            return _HELD[kind], int(named[where]), names[res] if kind == 0 else res

        held = end > start
        if not held.all():
            resource, start, end, instr = resource[held], start[held], end[held], instr[held]
        return resource, start, end, instr, what

    def check_resources(self):
        """Units, slice read and write ports, stream registers, link directions: never held twice in one cycle."""
        resource, starts, ends, instrs, what = self._holds()
        if not len(resource):
            return
        # a hold overlaps an earlier one of its resource iff, in order of start, it starts before the latest end
        # so far (the common case: none)
        first = int(starts.min())
        span = int(ends.max()) - first + 1
        if (int(resource.max()) + 1) * span < _ONE_NUMBER:  # (resource and cycle one number: one sort for all)
            # (in place: a 70B program has 11 million holds, and each page of memory first touched costs time)
            shift = resource * span
            shift -= first
            starts += shift
            ends += shift
            order = np.argsort(starts)
            sorted_starts, ends_so_far = starts[order], ends[order]
            np.maximum.accumulate(ends_so_far, out=ends_so_far)
            late = order[np.flatnonzero(sorted_starts[1:] < ends_so_far[:-1]) + 1]
            del sorted_starts, ends_so_far
            starts -= shift
            ends -= shift
            del shift
        else:  # (cycles near MAX_CYCLE: resource by resource)
            order = np.lexsort((starts, resource))
            cuts = np.flatnonzero(np.diff(resource[order])) + 1
            late = np.concatenate([group[np.flatnonzero(starts[group[1:]] < np.maximum.accumulate(ends[group[:-1]]))
                                         + 1] for group in np.split(order, cuts)])
        if not len(late):
            return
        by_resource = resource[order]  # (each resource's holds are together in `order`)

        def reported(number: int) -> tuple:  # (the order resources' hazards are found in: kind, chip, name)
            kind, chip, res = what(number)
            return kind, chip, str(res)

        for number in sorted(set(resource[late].tolist()), key=reported):
            mine = order[np.searchsorted(by_resource, number, "left"):np.searchsorted(by_resource, number, "right")]
            mine = np.stack([starts[mine], ends[mine], instrs[mine]], axis=1)
            mine = mine[np.lexsort((mine[:, 2], mine[:, 1], mine[:, 0]))]
            kind, chip, res = what(number)
            name, said = self._resource(kind, chip, res)
            cur = None
            for start, end, k in mine.tolist():
                if cur is not None and start < cur[1]:
                    other = self.instrs[cur[2]]
                    self._hazard(kind, start, self.instrs[k].label, name,
                                 f"holds {said} during [{start}, {end}) while {other.label} holds it "
                                 f"during [{cur[0]}, {cur[1]})")
                if cur is None or end > cur[1]:
                    cur = (start, end, k)

    def _resource(self, kind: str, chip: int, res) -> tuple[str, str]:
        """(the resource's name, how a message says it)."""
        if kind == "link":
            return link_name(chip, res), f"link {link_name(chip, res)}"
        on = self.on(chip)
        name = {"unit": f"{on}unit {res}", "read_port": f"the read port of {on}slice {res}",
                "write_port": f"the write port of {on}slice {res}", "stream": f"{on}stream {res}"}[kind]
        return name, name

    @cached_property
    def cycles(self) -> int:
        """The program's length: its last result lands (found once: the progress lines, checks and stats ask)."""
        return max([i.cycle + i.lat for i in self.instrs if i.cycle is not None], default=0)


def schedule_stats(module: Module, target: Target) -> Stats:
    """The statistics a run will report (cycles, busy cycles, SRAM peak, links), from the schedule alone."""
    plan = _Plan(module, target)
    for ins in plan.instrs:  # what a run learns while reading: when each value's last read ends
        if ins.cycle is not None:
            for read in ins.reads:
                for _, b in read:
                    plan.bases[b].end = max(plan.bases[b].end, ins.cycle + ins.occ)
    return _stats(plan)


# --- the machine state and the loop -------------------------------------------

class _Stop(Exception):
    pass


def _zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """Zeros the OS maps a small page at a time, only when touched (an anonymous mapping: numpy's own large
    allocations ask for huge pages, each zeroed whole on first touch, which made every run's SRAM cost
    a third of a second)."""
    count = int(np.prod(shape))
    return np.frombuffer(mmap.mmap(-1, max(count * np.dtype(dtype).itemsize, 1)), dtype, count).reshape(shape)


# the reductions of a slice of a row, without ndarray.max's and .any's Python wrappers (millions of calls)
_max, _min, _any = np.maximum.reduce, np.minimum.reduce, np.logical_or.reduce
_FEW = 8  # up to this many words, a run of words is checked word by word (else by slice)


class _Sram:
    """One chip's SRAM. Zero-filled arrays (the OS maps pages only when touched), hence ids + 1.

    A constant's words are only marked `pinned`: its weights are most of SRAM, and nothing may land on them,
    so no owner or read is recorded for them word by word. A pinned word with no owner holds its constant;
    the reads of constants are looked up in the plan when something lands on one (a hazard)."""

    def __init__(self, machine: Machine, numeric: bool, cycle_type):
        shape = (machine.sram.slices, machine.sram.words_per_slice)
        self.bytes = _zeros(shape + (machine.lanes,), np.uint8) if numeric else None
        self.owner = _zeros(shape, np.int32)       # 1 + base id of the value whose word is there (0: none)
        self.read_end = _zeros(shape, cycle_type)  # latest end (c + occ) of a read of the word (not a constant's)
        self.reader = _zeros(shape, np.int32)      # 1 + the instruction reading it until then
        self.pinned = _zeros(shape, np.bool_)      # a word of a constant or a state
        # the same arrays word by word: a memoryview's item costs less than an array's (most runs are a few words)
        self.owner_at, self.read_end_at, self.reader_at, self.pinned_at = map(
            memoryview, (self.owner, self.read_end, self.reader, self.pinned))


class _Machine:
    def __init__(self, plan: _Plan, program: Program, inputs: Mapping[str, np.ndarray] | None, collect: bool,
                 horizon: int | None, state: State):
        self.plan, self.program, self.inputs = plan, program, inputs
        self.numeric = inputs is not None
        self.collect, self.horizon = collect, horizon
        self.cycle_type = np.int32 if plan.cycles < 2 ** 31 else np.int64
        self.srams: dict[int, _Sram] = {}                          # chip -> its SRAM, once used
        self.is_const = np.array([False] + [b.constant for b in plan.bases])  # by 1 + base id
        self.is_state = np.array([False] + [bool(b.state) for b in plan.bases])
        # Per base id: 1 while every one of its words holds it (landed, none overwritten since): a read of such a
        # base needs no look at its words' owners (most reads; the rest are checked word by word)
        self.intact = bytearray(len(plan.bases))
        # The step: its position (the module's `position` input; known in a numeric run) and how many rows
        # it writes; a read of the state needs slots 0 .. position + rows - 1 written.
        self.state = state
        self.buffers: dict[str, Buffer] = {}       # state name -> its buffer in the generation
        self.written: dict[str, np.ndarray] = {}   # state name -> slots written so far (this run's included)
        self.landed: dict[str, int] = {}           # state name -> when this run's write landed
        self.read_before_write: dict[str, int] = {}  # state name -> when the reads of it as the run found it end
        self.state_extents: dict[str, tuple] = {}
        name = plan.module.attrs.get("position")
        pos = np.asarray(inputs[name]) if self.numeric and name is not None else None
        self.position = (int(pos.flat[0]), int(pos.size)) if pos is not None and pos.size else None
        self.planes: dict[tuple, tuple[int, np.ndarray, int]] = {}  # (chip, unit) -> (install, tile, landed at)
        self.streaming: dict[tuple, tuple[int, int, int]] = {}      # (chip, unit) -> (matmul, until, its install)
        self.pending: dict[int, tuple[np.ndarray, ...]] = {}
        self.arrived: dict[int, np.ndarray] = {}                    # send -> its words, arrived, not yet received
        self.host: dict[str, np.ndarray] = {}
        self.hazards: list[HazardError] = []

    def sram(self, chip: int) -> _Sram:
        st = self.srams.get(chip)
        if st is None:
            st = self.srams[chip] = _Sram(self.plan.machine, self.numeric, self.cycle_type)
        return st

    def hazard(self, kind, cycle, label, resource, detail):
        self.hazards.append(HazardError(kind, cycle, label, resource, detail))
        if not self.collect:
            raise _Stop

    def load_state(self):
        """The states as the generation left them (zero and unwritten when new), at their words."""
        plan = self.plan
        for op, base, extents in plan.states:
            chip, name = plan.bases[base].chip, op.attrs["name"]
            b = self.buffers[name] = self.state.buffer(name, chip, extents, op.result.type,
                                                       op.result.type.shape[-2], plan.lanes, self.numeric,
                                                       plan.module.name)
            self.written[name], self.state_extents[name] = b.written.copy(), extents
            st, pos = self.sram(chip), 0
            for s, w, n in extents:
                self._own(st, s, w, n, base)
                st.pinned[s, w:w + n] = True
                if self.numeric:
                    st.bytes[s, w:w + n] = b.words[pos:pos + n]
                pos += n

    def save_state(self):
        """Keep the states' words and written slots for the next run of the generation."""
        for op, base, extents in self.plan.states:
            name = op.attrs["name"]
            b, st = self.buffers[name], self.sram(self.plan.bases[base].chip)
            if self.numeric:
                b.words = np.concatenate([st.bytes[s, w:w + n] for s, w, n in extents])
            b.written = self.written[name]

    def image(self):
        """The SRAM image, written before cycle 0 (its bytes only in a numeric run); with weights, each
        constant's words in it are checked against the constant's `sha256` first."""
        plan = self.plan
        for op, base, extents in plan.constants:
            chip = plan.bases[base].chip
            st, on = self.sram(chip), plan.on(chip)
            if self.program.weights:
                self._check_image(op, chip, extents)
            for s, w, n in extents:
                if n:
                    data = self.program.image.get((chip, s, w)) if self.numeric else None
                    if data is not None and data.shape != (n, plan.lanes):  # (a hazard of _check_image)
                        data = None
                    taken = st.pinned[s, w:w + n]
                    if _any(taken):  # (a hazard: the words it overlaps are its own from now on)
                        word = w + int(np.argmax(taken))
                        other = plan.bases[self._holder(chip, s, word)]
                        self.hazard("constant", 0, op.label(), f"{on}slice {s} word {word}",
                                    f"is placed on {on}slice {s} word {word}, a word of the constant %{other.name}")
                        for k in np.flatnonzero(taken).tolist():
                            self._land_on_constant(st, chip, s, w + k, base)
                    if data is not None:
                        st.bytes[s, w:w + n] = data
                    taken[:] = True
            self.intact[base] = 1

    def _check_image(self, op: Op, chip: int, extents):
        """The image holds the constant's words at its extents, and they hash to its `sha256`."""
        on, digest = self.plan.on(chip), hashlib.sha256()
        extents = [e for e in extents if e[2]]
        for s, w, n in extents:
            data = self.program.image.get((chip, s, w))
            if data is None or data.shape != (n, self.plan.lanes):
                self.hazard("constant", 0, op.label(), f"{on}slice {s} word {w}",
                            f"has {n} words at {on}slice {s} word {w}, which the SRAM image does not hold")
                return
            digest.update(data)
        recorded, found = op.attrs.get("sha256"), digest.hexdigest()
        if recorded != found:
            s, w, _ = extents[0] if extents else (0, 0, 0)
            self.hazard("constant", 0, op.label(), f"{on}slice {s} word {w}",
                        f"does not match the SRAM image: its {sum(e[2] for e in extents)} words from {on}slice {s} "
                        f"word {w} hash to sha256 {found[:16]}..., it records "
                        + (f"{recorded[:16]}..." if recorded else "none"))

    def run(self, progress=None):
        plan = self.plan
        # the events in order: (cycle, 0 a landing / 1 an issue, instruction): landings before issues of a cycle
        timed = np.array([k for k, ins in enumerate(plan.instrs) if ins.cycle is not None], np.int64)
        issues = np.array([plan.instrs[k].cycle for k in timed.tolist()], np.int64)
        lands = issues + np.array([plan.instrs[k].lat for k in timed.tolist()], np.int64)
        cycles, kinds, which = (np.concatenate(pair) for pair in (
            (lands, issues), (np.zeros(len(timed), np.int8), np.ones(len(timed), np.int8)), (timed, timed)))
        order = np.lexsort((which, kinds, cycles))
        if self.horizon is not None:  # (none after it)
            order = order[:int(np.searchsorted(cycles[order], self.horizon, side="right"))]
        cycles, kinds, which, count = cycles[order], kinds[order], which[order], len(order)
        step = max(-(-count // 8), 1) if progress else count + 1  # (events in eighths: progress after each)
        start = time.perf_counter()
        instrs, land, issue = plan.instrs, self.land, self.issue
        try:
            self.image()
            self.load_state()
            for n in range(0, count, step):
                if n:
                    left = (time.perf_counter() - start) / n * (count - n)
                    progress(f"running: cycle {int(cycles[n]):,} of {plan.cycles:,}, about {left:.0f} s left")
                part = slice(n, n + step)
                for t, kind, k in zip(cycles[part].tolist(), kinds[part].tolist(), which[part].tolist()):
                    if kind:
                        issue(instrs[k], t)
                    else:
                        land(instrs[k], t)
        except _Stop:
            pass

    # an instruction issues: reads and computes

    def issue(self, ins: _Instr, c: int):
        plan, end, intact, srams = self.plan, c + ins.occ, self.intact, self.srams
        states = []  # the states it reads (their slots are checked, not their words' owners)
        for read in ins.reads:
            for extents, b in read:
                base = plan.bases[b]
                if base.state:
                    states.append((base.state, base.alias))
                    continue
                if base.constant:  # (its reads are not recorded: see _Sram)
                    if not intact[b]:  # its words have no owner, or one that landed on them
                        for s, w, n in extents:
                            owner = self.sram(base.chip).owner[s, w:w + n]
                            wrong = (owner != b + 1) & (owner != 0)
                            if _any(wrong):
                                k = int(np.argmax(wrong))
                                self._read_hazard(ins, c, base.chip, s, w + k, b, int(owner[k]) - 1)
                    continue
                st = srams.get(base.chip) or self.sram(base.chip)
                whole = intact[b]  # (then every word of it holds it: no look at its words' owners)
                if end > base.end:
                    base.end = end
                for s, w, n in extents:
                    if n <= _FEW:
                        if not whole:
                            owner_at = st.owner_at
                            for x in range(w, w + n):
                                if owner_at[s, x] != b + 1:
                                    self._read_hazard(ins, c, base.chip, s, x, b, owner_at[s, x] - 1)
                                    break
                        read_end_at = st.read_end_at
                        for x in range(w, w + n):
                            if read_end_at[s, x] < end:
                                read_end_at[s, x] = end
                                st.reader_at[s, x] = ins.idx + 1
                        continue
                    if not whole:
                        owner = st.owner[s, w:w + n]
                        wrong = owner != b + 1
                        if wrong.any():
                            k = int(np.argmax(wrong))
                            self._read_hazard(ins, c, base.chip, s, w + k, b, int(owner[k]) - 1)
                    re_, rd = st.read_end[s, w:w + n], st.reader[s, w:w + n]
                    if _max(re_, initial=0) < end:  # the common case: this read ends last
                        re_[:] = end
                        rd[:] = ins.idx + 1
                    else:
                        later = re_ < end
                        re_[later] = end
                        rd[later] = ins.idx + 1
        if states:
            for name, after_write in dict.fromkeys(states):
                self._read_state(ins, c, name, after_write)
        op = ins.op
        weights = ins.weights
        if weights is not None and ins.ok:
            self._check_plane(ins, c, weights)
            self.streaming[ins.chip, ins.unit] = (ins.idx, end, weights.instr)
        if not ins.ok or not self.numeric:
            return
        moves, lanes = _moves_words(op), plan.lanes
        args = []
        for k, ((where, ref), v) in enumerate(zip(ins.args, op.operands)):
            if ins.state >= 0 and k == 0:  # the state a write updates in place: land() writes its rows
                args.append(None)
            elif where == "sram":
                data = [self.sram(plan.bases[b].chip).bytes[s, w:w + n] for extents, b in ins.reads[ref]
                        for s, w, n in extents]
                data = np.concatenate(data) if data else np.zeros((0, lanes), np.uint8)
                # (an install reads its tile's words only: its result's type)
                args.append(data if moves else from_words(data, op.result.type if mo.reads_window(op) else v.type,
                                                          lanes))
            elif where == "plane":
                state = self.planes.get((ins.chip, ins.unit))
                tile = state[1] if state is not None else None
                args.append(tile if tile is not None else np.zeros(v.type.shape, v.type.dtype.numpy))
            elif where == "link":  # words that have not arrived (a hazard already) read as zeros
                data = self.arrived.pop(ref.instr, None)
                args.append(data if data is not None else np.zeros((words(v.type, lanes), lanes), np.uint8))
            else:
                args.append(np.asarray(self.inputs[ref]))
        if moves:
            self.pending[ins.idx] = mo.compute(op, args)
            return
        if ins.state >= 0:
            self.pending[ins.idx] = tuple(args[1:])  # (new rows, position)
            return
        if mo.reads_window(op):  # it read just its window: that is the tile
            self.pending[ins.idx] = (args[0],)
            return
        try:
            with np.errstate(all="ignore"):
                outs = mo.compute(op, args)
            results = tuple(conform(op, a, r.type) for a, r in zip(outs, op.results, strict=True))
        except EvalError:
            if not self.collect:
                raise
            results = tuple(np.zeros(r.type.shape, r.type.dtype.numpy) for r in op.results)
        except Exception as e:  # numpy's own complaint, e.g. an index out of range
            if not self.collect:
                raise EvalError(f"{op.label()}: {type(e).__name__}: {e}") from e
            results = tuple(np.zeros(r.type.shape, r.type.dtype.numpy) for r in op.results)
        self.pending[ins.idx] = results

    def _read_state(self, ins: _Instr, c: int, name: str, after_write: bool):
        """A read of a state's words. Through its write's result (`after_write`): the step's slots
        0 .. position + rows - 1 must be written by now (this generation's earlier steps, or this step's write
        landed). Of the state itself, as the step found it: slots 0 .. position - 1, and the read must end before
        this step's write lands (checked when it lands: `read_before_write`). Slots are unknown in a timing-only
        run."""
        if not after_write:
            if name in self.landed:
                self.hazard("war", c, ins.label, f"state {name}",
                            f"reads state {name!r} as the step found it, but this step's write landed at cycle "
                            f"{self.landed[name]}")
            self.read_before_write[name] = max(self.read_before_write.get(name, 0), c + ins.occ)
        written = self.written.get(name)
        if self.position is None or written is None:
            return
        hi = self.position[0] + (self.position[1] if after_write else 0)
        missing = np.flatnonzero(~written[:hi])
        if len(missing):
            slot = int(missing[0])
            self.hazard("state", c, ins.label, f"state {name} slot {slot}",
                        f"reads slot {slot} of state {name!r}, never written (the step at position "
                        f"{self.position[0]} reads slots 0..{hi - 1})")

    def _write_state(self, ins: _Instr, t: int):
        """A state write lands: the new rows at its position (its address stream), which must be the step's."""
        plan, results = self.plan, self.pending.pop(ins.idx, None)
        state = plan.bases[ins.state]
        if self.read_before_write.get(state.state, 0) > t:
            self.hazard("war", t, ins.label, f"state {state.state}",
                        f"lands in state {state.state!r} while a read of it as the step found it runs until cycle "
                        f"{self.read_before_write[state.state]}")
        self.landed[state.state] = t
        if results is None:
            return
        new, pos = results
        ttype = ins.op.operands[0].type
        p, n, slots = int(np.asarray(pos).flat[0]), new.shape[-2], ttype.shape[-2]
        if not 0 <= p <= slots - n:
            self.hazard("state", t, ins.label, f"state {state.state}",
                        f"writes rows {p}..{p + n - 1} of state {state.state!r}, outside its {slots} slots")
            return
        if self.position is not None and p != self.position[0]:
            self.hazard("state", t, ins.label, f"state {state.state} slot {p}",
                        f"writes slot {p} of state {state.state!r}, but the step is at position {self.position[0]}")
        st = self.sram(ins.chip)
        # the rows' words: per vector column and leading index, a run of whole rows (the layout's row rule)
        extents = row_extents(ttype, self.state_extents[state.state], p, n, plan.lanes)
        data, k = to_words(new, ins.op.operands[1].type, plan.lanes), 0
        for s, w, m in extents:
            st.bytes[s, w:w + m] = data[k:k + m]
            k += m
        self.written[state.state][p:p + n] = True

    def _read_hazard(self, ins, c, chip, s, word, b, other):
        plan = self.plan
        base = plan.bases[b]
        where = f"{plan.on(chip)}slice {s} word {word}"
        if other < 0:  # (no owner recorded: a constant's word, or never written)
            other = self._holder(chip, s, word)
        if base.land > c:
            self.hazard("raw", c, ins.label, where,
                        f"reads {where} before %{base.name} (landing at {base.land}) is written")
        elif other < 0:
            self.hazard("raw", c, ins.label, where, f"reads {where}, which %{base.name} never wrote")
        else:
            o = plan.bases[other]
            self.hazard("overwritten", c, ins.label, where,
                        f"reads {where}, which no longer holds %{base.name}: {o.label} landed there at {o.land}")

    def _check_plane(self, ins: _Instr, c: int, w_val: _Val):
        unit, state = ins.unit, self.planes.get((ins.chip, ins.unit))
        if state is not None and state[0] == w_val.instr and self.plan.instr_at[w_val.instr].unit == unit:
            return  # (the common case: its install's weights are on its plane)
        install = self.plan.module.ops[w_val.instr]
        res = f"{self.plan.on(ins.chip)}plane {unit}"
        if install.attrs.get("unit") != unit:
            self.hazard("plane", c, ins.label, res, f"runs on {unit}, but its weights "
                        f"%{install.result.name} are installed on {install.attrs.get('unit')}")
            return
        ins_w = self.plan.instr_at[w_val.instr]
        landing = (ins_w.cycle or 0) + ins_w.lat
        if landing > c:
            self.hazard("plane", c, ins.label, res, f"streams through {unit} before its weights "
                        f"%{install.result.name} (landing at {landing}) are installed")
        else:
            holder = self.plan.module.ops[state[0]].result.name if state else "nothing"
            self.hazard("plane", c, ins.label, res, f"streams through {unit}, which holds %{holder} "
                        f"(landed at {state[2] if state else '-'}), not its weights %{install.result.name}")

    # results land: writes

    def land(self, ins: _Instr, t: int):
        plan = self.plan
        if ins.state >= 0:
            self._write_state(ins, t)
            return
        st = self.sram(ins.chip) if ins.writes else None
        for b, extents in ins.writes:
            for s, w, n in extents:
                if n <= _FEW:  # (most writes: a few words, no hazard; checked word by word, as below)
                    read_end_at, pinned_at = st.read_end_at, st.pinned_at
                    for x in range(w, w + n):
                        if read_end_at[s, x] > t or pinned_at[s, x]:
                            break
                    else:
                        continue
                re_, pinned = st.read_end[s, w:w + n], _any(st.pinned[s, w:w + n])
                if pinned:  # (a hazard: the reads of constants count too)
                    re_, readers = self._read_ends(ins.chip, s, w, n, t)
                else:
                    readers = st.reader[s, w:w + n]
                if _max(re_, initial=0) > t:
                    k = int(np.argmax(re_ > t))
                    r = plan.instr_at[int(readers[k]) - 1]
                    where = f"{plan.on(ins.chip)}slice {s} word {w + k}"
                    self.hazard("war", t, ins.label, where, f"lands on {where} while {r.label} still reads it "
                                f"(until {int(re_[k])})")
                if not pinned:  # (the common case: no state's or constant's words)
                    continue
                owners = st.owner[s, w:w + n]
                states = self.is_state[owners]
                if states.any():
                    word = w + int(np.argmax(states))
                    where = f"{plan.on(ins.chip)}slice {s} word {word}"
                    name = plan.bases[int(st.owner[s, word]) - 1].state
                    self.hazard("state", t, ins.label, where,
                                f"lands on {where}, a word of the state {name!r}: only its state write may")
                consts = st.pinned[s, w:w + n] & ((owners == 0) | self.is_const[owners])  # (a constant's, still)
                if consts.any():
                    word = w + int(np.argmax(consts))
                    where = f"{plan.on(ins.chip)}slice {s} word {word}"
                    c_base = plan.bases[self._holder(ins.chip, s, word)]
                    self.hazard("constant", t, ins.label, where,
                                f"lands on {where}, a word of the constant %{c_base.name} (never freed)")
                    for k in np.flatnonzero(consts).tolist():
                        self._land_on_constant(st, ins.chip, s, w + k, b)
        results = self.pending.pop(ins.idx, None)
        place = OPS[ins.op.name].result_place
        if place == PLANE:
            busy = self.streaming.get((ins.chip, ins.unit))
            if busy is not None and busy[1] > t and busy[2] != ins.idx:  # (its own: reported at issue)
                mm = plan.instr_at[busy[0]]
                self.hazard("plane", t, mm.label, f"{plan.on(ins.chip)}plane {ins.unit}",
                            f"streams through {ins.unit} until {busy[1]}, but {ins.label} replaces its "
                            f"weights at {t}")
            tile = results[0] if results is not None else None
            if tile is not None or ins.ok:
                self.planes[ins.chip, ins.unit] = (ins.idx, tile, t)
            return
        if place == HOST:
            if results is not None:
                self.host[ins.op.result.name] = results[0]
            return
        if place == LINK:  # the words have all arrived: its receive may take them
            if results is not None:
                self.arrived[ins.idx] = results[0]
            return
        for i, (b, extents) in enumerate(ins.writes):
            data = None
            if results:
                r = ins.op.results[i]
                data = results[i] if _moves_words(ins.op) else to_words(results[i], r.type, self.plan.lanes)
            pos = 0
            for s, w, n in extents:
                if data is not None:
                    st.bytes[s, w:w + n] = data[pos:pos + n]
                self._own(st, s, w, n, b)
                pos += n

    def _holder(self, chip: int, s: int, word: int) -> int:
        """The base whose value the word holds: its owner, else the constant placed there (the first placed,
        see _Sram), else -1."""
        st = self.sram(chip)
        if st.owner[s, word]:
            return int(st.owner[s, word]) - 1
        if st.pinned[s, word]:
            for _, base, extents in self.plan.constants:
                if self.plan.bases[base].chip == chip and any(e[0] == s and e[1] <= word < e[1] + e[2]
                                                              for e in extents):
                    return base
        return -1

    def _land_on_constant(self, st: _Sram, chip: int, s: int, word: int, b: int):
        """Base b takes a word of a constant (a hazard): the constant is no longer intact."""
        held = self._holder(chip, s, word)
        if held >= 0 and held != b:
            self.intact[held] = 0
        self._own(st, s, word, 1, b)

    def _read_ends(self, chip: int, s: int, w: int, n: int, t: int) -> tuple[np.ndarray, np.ndarray]:
        """read_end and reader of words s, w .. w + n - 1 at a landing at t, counting the reads of constants
        issued before t (not recorded: see _Sram; looked up in the plan, on a hazard only). Of equal ends,
        the first read in event order is the reader, as issue() records it."""
        st, plan = self.sram(chip), self.plan
        ends, readers = st.read_end[s, w:w + n].astype(np.int64), st.reader[s, w:w + n].copy()
        firsts = [(plan.instr_at[r - 1].cycle, r - 1) if r else None for r in readers.tolist()]
        for ins in plan.instrs:
            if ins.cycle is None or ins.cycle >= t:
                continue
            for read in ins.reads:
                for extents, b in read:
                    if not plan.bases[b].constant or plan.bases[b].chip != chip:
                        continue
                    end, first = ins.cycle + ins.occ, (ins.cycle, ins.idx)
                    for s2, w2, n2 in extents:
                        if s2 != s:
                            continue
                        for k in range(max(w, w2) - w, min(w + n, w2 + n2) - w):
                            if end > ends[k] or (end == ends[k] and end and first < firsts[k]):
                                ends[k], readers[k], firsts[k] = end, ins.idx + 1, first
        return ends, readers

    def _own(self, st: _Sram, s: int, w: int, n: int, b: int):
        """Words s, w .. w + n - 1 now hold base b: the bases they held are no longer intact, b is (its words
        are written all at once: by its landing, or before cycle 0)."""
        intact = self.intact
        if n <= _FEW:
            owner_at = st.owner_at
            for x in range(w, w + n):
                o = owner_at[s, x]
                if o and o != b + 1:
                    intact[o - 1] = 0
                owner_at[s, x] = b + 1
        else:
            owners = st.owner[s, w:w + n]
            hi = int(_max(owners))
            if hi:
                lo = int(_min(owners))
                for o in ((hi,) if lo == hi else np.unique(owners).tolist()):
                    if o and o != b + 1:
                        intact[o - 1] = 0
            owners[:] = b + 1
        intact[b] = 1


# --- running ------------------------------------------------------------------

def _plan(program: Program) -> _Plan:
    plan = _Plan(program.module, program.target)
    plan.check_resources()
    return plan


def _load(program: Program | str | Path, progress=None) -> Program:
    return program if isinstance(program, Program) else read_lpu(program, progress)


@collector_paused()  # the plan's and the run's records of each instruction: many, long-lived, no garbage cycles
def run(program: Program | str | Path, inputs: Mapping[str, np.ndarray] | None = None, *, check: bool = True,
        timing_only: bool = False, state: State | None = None, progress=None) -> Result:
    """Run a scheduled program on `inputs` (name -> array), cycle by cycle.

    check=True raises the earliest HazardError; check=False runs on regardless
    and returns every hazard in `Result.hazards` (outputs are then unreliable).
    timing_only=True stores and computes no bytes (inputs are not needed, the
    outputs are empty) but checks every hazard and gives the same stats.
    A stateful program's states persist in `state` (default: the program's own,
    `program.state`) from run to run; a run with a hazard leaves them as they were. `progress`, when given,
    is called with a line per stage and, while running, with the cycle reached and the time left."""
    program = _load(program, progress)
    module = program.module
    env = None
    if not timing_only:
        require_weights(program)
        env = check_inputs(module, inputs if inputs is not None else {})
    if progress:
        progress(f"planning {len(module.ops):,} ops (every unit, port, stream and link booking checked)")
    plan = _plan(program)
    static = sorted(plan.hazards, key=_order)
    if not static:  # (a broken schedule's own hazards say more than the facts they change)
        _check_manifest(program, plan)
    horizon = None
    if check and static:
        horizon = static[0].cycle if static[0].cycle is not None else -1
    m = _Machine(plan, program, env, collect=not check, horizon=horizon,
                 state=program.state if state is None else state)
    m.run(progress)
    hazards = sorted(static + m.hazards, key=_order)
    if check and hazards:
        raise hazards[0]
    if not hazards:
        m.save_state()
    outputs = {}
    if not timing_only:
        for name, v in module.outputs:
            value = m.host.get(plan.outputs.get(name, ""))
            outputs[name] = value if value is not None else np.zeros(v.type.shape, v.type.dtype.numpy)
    return Result(MappingProxyType(outputs), _stats(plan), tuple(hazards), plan.instrs)


def _check_manifest(program: Program, plan: _Plan) -> None:
    """The facts the manifest records (and viewers show) are what the program takes: else it was forged."""
    timed = [i for i in plan.instrs if i.cycle is not None]
    facts = {"cycles": (program.manifest.get("cycles"), plan.cycles)}
    summary = program.manifest.get("summary", {})
    recomputed = {
        "instructions": len(timed), "chips": plan.chips,
        "transfers": sum(1 for i in timed if i.op.name == "c2c.send"),
        "sram_image_bytes": sum(b.words for b in plan.bases if b.constant) * plan.machine.sram.word_bytes,
    }
    facts.update({f"summary.{k}": (summary[k], v) for k, v in recomputed.items() if k in summary})
    for field_, (recorded, actual) in facts.items():
        if recorded != actual:
            where = program.source or f"module @{program.module.name}"
            raise LpuFormatError(f"{where}: the manifest records {field_} {recorded!r}, but the program "
                                 f"takes {actual!r} (a forged or damaged file)")


def require_weights(program: Program) -> None:
    """A numeric run needs the weights: refuse a program compiled without them."""
    if not program.weights:
        where = program.source or f"module @{program.module.name}"
        raise LpucError(f"{where} was compiled without weights (lpuc compile --no-weights): "
                        "run it with --timing-only")


def find_hazards(program: Program | str | Path, inputs: Mapping[str, np.ndarray] | None = None) \
        -> tuple[HazardError, ...]:
    """Every hazard of a program, in cycle order (without inputs: a timing-only run; hazards never
    depend on the data)."""
    if inputs is None:
        return run(program, check=False, timing_only=True).hazards
    return run(program, inputs, check=False).hazards


def _order(h: HazardError):
    return -1 if h.cycle is None else h.cycle


def _trace(instrs: Sequence[_Instr]) -> tuple[TraceEvent, ...]:
    events = [TraceEvent(i.label, i.op.name, i.unit or "", i.cycle, i.cycle + i.occ, i.cycle + i.lat, i.chip)
              for i in instrs if i.cycle is not None]
    return tuple(sorted(events, key=lambda e: (e.start, e.chip, e.unit, e.land, e.instruction)))


# --- statistics -----------------------------------------------------------------

# the compute and I/O units of ChipStats (links: LinkStats)
CHIP_CLASSES = tuple(c.name for c in mo.UNIT_CLASSES if not c.link)
LINK_CLASSES = frozenset(c.name for c in mo.UNIT_CLASSES if c.link)  # the units of the links (tx, rx)


def _stats(plan: _Plan) -> Stats:
    timed = [i for i in plan.instrs if i.cycle is not None]
    word_bytes, sends = plan.machine.sram.word_bytes, []
    for i in timed:
        if i.cls in LINK_CLASSES and OPS[i.op.name].result_place == LINK:
            r = plan.instr_at[i.recv] if i.recv >= 0 else None
            arrival = r.cycle + r.lat if r is not None and r.cycle is not None else i.cycle + i.lat
            held = [length for _, _, length in link_windows(i.op, plan.machine, i.occ)]
            sends.append(Transfer(i.cycle, arrival, words(i.op.operands[0].type, plan.lanes) * word_bytes,
                                  tuple(zip(i.hops, held))))
    columns = Timed([i.op for i in timed], [i.chip for i in timed], [i.unit for i in timed], [i.cls for i in timed],
                    [i.cycle for i in timed], [i.occ for i in timed])
    return summarize(plan.machine, plan.chips, plan.cycles, columns, _sram_peaks(plan), sends)


@dataclass(frozen=True)
class Timed:
    """What the statistics read of a program's instructions with a cycle, by column (an entry each, in any
    order): a report reads a million instructions as columns, a run as its plan's."""
    op: Sequence[Op]
    chip: Sequence[int]
    unit: Sequence[str | None]
    cls: Sequence[str]
    cycle: Sequence[int]
    occ: Sequence[int]


@dataclass(frozen=True, slots=True)
class Transfer:
    """What the statistics read of a transfer (a c2c.send and its receive)."""
    issue: int                                      # its send's cycle
    arrival: int                                    # its receive's landing (its send's, without a receive)
    bytes: int
    hops: tuple[tuple[tuple[int, int], int], ...]   # ((chip, port), cycles held) per link direction of its route


def summarize(machine: Machine, chips: int, cycles: int, timed: Timed, peaks: Mapping[int, int],
              transfers: Sequence[Transfer]) -> Stats:
    """The statistics of a scheduled program of `cycles` on `chips`, from what it is made of, however that was
    found (a run's plan; the report: ir.schedule_facts): `timed`, its instructions with a cycle, `peaks` (chip
    -> the most SRAM words live at once) and its `transfers`."""
    counts = units(machine)
    multi = chips > 1
    unit_class = {f"{cls}{i}": cls for cls in sorted(counts) for i in range(counts[cls])}
    key = (lambda chip, unit: f"c{chip}.{unit}") if multi else (lambda chip, unit: unit)
    busy = {key(chip, u): 0 for chip in range(chips) for u in unit_class}
    class_busy = {cls: 0 for cls in sorted(counts)}
    chip_busy = [dict.fromkeys(CHIP_CLASSES, 0) for _ in range(chips)]
    # the instructions and busy cycles of each (chip, unit), by number: unit j of `names` on chip c is c * U + j
    code: dict[str | None, int] = {}
    n = len(timed.chip)
    unit_of = np.fromiter((code.setdefault(u, len(code)) for u in timed.unit), np.int64, n)
    names = list(code)
    chip, occ = np.asarray(timed.chip, np.int64), np.asarray(timed.occ, np.int64)
    inside = (chip >= 0) & (chip < chips)
    chip_instructions = np.bincount(chip[inside], minlength=chips).tolist()
    at = chip[inside] * len(names) + unit_of[inside]
    per_unit = np.zeros(chips * len(names), np.int64)
    np.add.at(per_unit, at, occ[inside])
    for j in np.unique(at).tolist():
        c, unit = j // len(names), names[j % len(names)]
        cls = unit_class.get(unit)
        if cls is not None:
            b = int(per_unit[j])
            busy[key(c, unit)] += b
            class_busy[cls] += b
            if cls in chip_busy[c]:
                chip_busy[c][cls] += b
    word_bytes = machine.sram.word_bytes

    def share(b, n):
        return b / (cycles * n) if cycles else 0.0

    per_chip = tuple(ChipStats(
        chip=c, instructions=chip_instructions[c], class_busy=MappingProxyType(chip_busy[c]),
        class_utilization=MappingProxyType({cls: share(b, counts[cls]) for cls, b in chip_busy[c].items()}),
        sram_peak_bytes=peaks.get(c, 0) * word_bytes) for c in range(chips))
    return Stats(
        cycles=cycles,
        latency_us=machine.cycles_to_us(cycles),
        instructions=n,
        busy=MappingProxyType(busy),
        utilization=MappingProxyType({u: share(b, 1) for u, b in busy.items()}),
        class_busy=MappingProxyType(class_busy),
        class_utilization=MappingProxyType({c: share(b, counts[c] * chips) for c, b in class_busy.items()}),
        sram_peak_bytes=max(peaks.values(), default=0) * word_bytes,
        chips=per_chip,
        links=_link_stats(transfers),
        link_wait_cycles=_link_wait(timed, transfers),
        transfer_bytes=sum(t.bytes for t in transfers if t.hops),
        host_bytes=sum(words(op.operands[0].type, machine.lanes) for op, cls in zip(timed.op, timed.cls)
                       if cls == "host") * word_bytes,
    )


def _sram_peaks(plan: _Plan) -> dict[int, int]:
    """chip -> the most words live at once: each value owning words holds them from landing until its
    last read ends (constants: always)."""
    bases, n = plan.bases, len(plan.bases)
    if not n:
        return {}
    chip, size, land, end = (np.fromiter(values, np.int64, n) for values in (
        (b.chip for b in bases), (b.words for b in bases), (b.land for b in bases), (b.end for b in bases)))
    # (a state write's result: its state's words, counted there)
    always = np.fromiter((b.constant or (bool(b.state) and not b.alias) for b in bases), np.bool_, n)
    times = np.concatenate([np.where(always, 0, land),
                            np.where(always, max(plan.cycles, 1), np.maximum(end, land + 1))])
    deltas, chips = np.concatenate([size, -size]), np.concatenate([chip, chip])
    order = np.lexsort((deltas, times, chips))  # per chip, in time, a value's words freed before others take them
    live, chips = np.cumsum(deltas[order]), chips[order]
    firsts = np.concatenate([[0], np.flatnonzero(np.diff(chips)) + 1])
    before = np.concatenate([[0], live[firsts[1:] - 1]])  # (the words live on the chips before)
    peaks = np.maximum(np.maximum.reduceat(live, firsts) - before, 0)
    return dict(zip(chips[firsts].tolist(), peaks.tolist()))


def _link_stats(transfers: Sequence[Transfer]) -> tuple[LinkStats, ...]:
    per: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0, 0])  # (chip, port) -> bytes, busy, n
    for t in transfers:
        for hop, length in t.hops:
            row = per[hop]
            row[0] += t.bytes
            row[1] += length
            row[2] += 1
    return tuple(LinkStats(link_name(*hop), *per[hop]) for hop in sorted(per))


def _link_wait(timed: Timed, transfers: Sequence[Transfer]) -> int:
    """Cycles during which a transfer is in flight (its send's issue to its receive's landing) while no
    unit but the links' is busy on any chip."""
    transfers = [x for t in transfers for x in (t.issue, max(t.arrival, t.issue))]  # start, end, start, ...
    busy = ~np.fromiter(map(LINK_CLASSES.__contains__, timed.cls), np.bool_, len(timed.cls))  # the other units
    issue = np.asarray(timed.cycle, np.int64)[busy]
    units = np.stack([issue, issue + np.asarray(timed.occ, np.int64)[busy]], axis=1).reshape(-1)  # start, end, ...
    # the points in order of cycle, each +1 at a transfer's start, -1 at its end, +2 and -2 at a unit's (the order
    # among a cycle's points changes no count between cycles), and how many of each kind are active after each
    t, d = by_key(np.concatenate([np.array(transfers, np.int64), units]),
                  np.concatenate([np.tile([1, -1], len(transfers) // 2), np.tile([2, -2], len(units) // 2)]))
    transfers, units = np.cumsum(np.where(abs(d) == 1, d, 0)), np.cumsum(np.where(abs(d) == 2, d // 2, 0))
    waiting = (transfers[:-1] > 0) & (units[:-1] == 0)  # from each point to the next
    return int((t[1:] - t[:-1])[waiting].sum())
