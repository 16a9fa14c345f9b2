"""The cycle-accurate interpreter: an environment, a loop, a dispatch table.

It runs a scheduled machine module (docs/machine-ir.md) on byte-level SRAM and
checks every rule of that contract, independently of the compiler:

- the environment: SRAM as bytes (slices x words x 320 lanes), the MXM planes,
  and per SRAM word the value it holds, when that landed and until when it is
  being read;
- the loop: events in cycle order — an instruction issues at `c` (reads its
  operand bytes, decodes them with ir.layout, computes with numpy) and its
  results land at `c + lat` (bytes written at its `out` extents);
- the dispatch table `IMPLS`: op name -> numpy implementation (ir.evaluator's
  graph semantics for the mirrored ops; MXM planes and host I/O here).

Occupancy and latency come from ir.costs and the machine description only: of
the program's attributes just `cycle`, `unit`, `out` and `streams` are read.
Each broken rule is a `HazardError` naming the instruction, the cycle and the
resource; `run(..., check=True)` raises the earliest, `check=False` collects
them all in `Result.hazards`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from ir import machine_ops as mo
from ir.core import Module, Op
from ir.costs import cost, units
from ir.errors import EvalError, LpucError
from ir.evaluator import EVAL, check_inputs, conform
from ir.layout import LANES, from_words, sub_extents, to_words, view_extents, words
from ir.machine import Machine
from ir.registry import OPS, TypeRuleError

from .lpu import Program, read_lpu


class HazardError(LpucError):
    """A broken rule of the machine-level contract, found while interpreting.

    `kind` is one of KINDS; `cycle` is where it happens (None for a missing
    schedule attribute); `instruction` is the op's label (`%x = vxm.add`);
    `resource` names the unit, port, stream, plane or SRAM word concerned."""

    def __init__(self, kind: str, cycle: int | None, instruction: str, resource: str, detail: str):
        self.kind, self.cycle, self.instruction, self.resource = kind, cycle, instruction, resource
        where = f"hazard at cycle {cycle}" if cycle is not None else "hazard"
        super().__init__(f"{where}: {instruction} {detail}")


KINDS = ("schedule", "unit_class", "unit", "read_port", "write_port", "stream", "streams", "out", "bounds",
         "operand", "raw", "overwritten", "war", "constant", "plane", "output")


@dataclass(frozen=True)
class TraceEvent:
    instruction: str  # the op's label, e.g. "%y = vxm.add"
    op: str
    unit: str
    start: int        # issue cycle
    end: int          # start + occupancy: the unit is free again
    land: int         # start + latency: the results are in SRAM


@dataclass(frozen=True)
class Stats:
    cycles: int
    latency_us: float
    instructions: int
    busy: Mapping[str, int]                 # unit instance -> busy cycles
    utilization: Mapping[str, float]        # unit instance -> busy / cycles
    class_busy: Mapping[str, int]           # unit class -> busy cycles (all instances)
    class_utilization: Mapping[str, float]  # unit class -> busy / (cycles * instances)
    sram_peak_bytes: int


@dataclass(frozen=True, eq=False)
class Result:
    outputs: Mapping[str, np.ndarray]
    stats: Stats
    trace: tuple[TraceEvent, ...]
    hazards: tuple[HazardError, ...] = ()


# --- the dispatch table -----------------------------------------------------

Impl = Callable[[Op, list[np.ndarray]], tuple[np.ndarray, ...]]


def _graph_impl(graph_name: str) -> Impl:
    impl, opdef = EVAL[graph_name], OPS[graph_name]

    def run(op: Op, args: list[np.ndarray]):
        attrs = opdef.attrs_with_defaults({k: v for k, v in op.attrs.items() if k not in mo.SCHEDULE_ATTRS})
        out = impl(args, attrs)
        return out if isinstance(out, tuple) else (out,)
    return run


def _matmul(op: Op, args):
    y = EVAL["graph.matmul"](args[:2], {})
    return (y if len(args) == 2 else y + args[2],)


IMPLS: dict[str, Impl] = {name: _graph_impl(g) for name, g in sorted(mo.GRAPH_EQUIVALENT.items())}
IMPLS.update({
    "mxm.install": lambda op, args: (args[0],),  # the tile goes onto the plane when it lands
    "mxm.matmul": _matmul,                        # args: x, w (from the plane), acc
    "host.input": lambda op, args: (args[0],),   # args: the host's array
    "host.output": lambda op, args: (args[0],),
})


# --- the plan: what each instruction reads, writes and holds -----------------

_UNIT_RE = re.compile(r"([a-z]+)(\d+)")


@dataclass(slots=True)
class _Val:
    kind: str                 # "sram", "host" (block inputs, host.output results), "plane" (install results)
    segs: tuple = ()          # sram: ((slice, word, words, base id), ...) in the value's word order
    instr: int = -1           # plane: the install's instruction index
    ok: bool = True           # False: its words are unknown (the producer is broken)


@dataclass(slots=True)
class _Base:
    """A value that owns SRAM words (an instruction's or constant's result, not a view)."""
    name: str
    instr: int                # producing instruction (-1 for constants)
    label: str
    land: int
    words: int
    end: int = 0              # the last read of its words ends (liveness)
    constant: bool = False


@dataclass(slots=True)
class _Instr:
    idx: int
    op: Op
    label: str
    cls: str
    unit: str | None
    cycle: int | None
    occ: int = 0
    lat: int = 0
    reads: list = field(default_factory=list)    # per SRAM operand: segs
    writes: list = field(default_factory=list)   # per SRAM result: (base id, extents)
    args: list = field(default_factory=list)     # per operand: ("sram", i) / ("plane", val) / ("host", name)
    streams: tuple = ()
    ok: bool = True                              # executable (timed, operands known, out well-formed)
    port_reads: tuple = ()
    port_writes: tuple = ()


class _Plan:
    """Static analysis of a scheduled module: values' words, costs, static hazards."""

    def __init__(self, module: Module, machine: Machine):
        self.module, self.machine = module, machine
        self.hazards: list[HazardError] = []
        self.values: dict[str, _Val] = {v.name: _Val("host") for v in module.inputs}
        self.bases: list[_Base] = []
        self.instrs: list[_Instr] = []
        self.constants: list[tuple[Op, int, tuple]] = []  # (op, base id, extents)
        self.units = units(machine)
        self.n_streams = machine.streams.east + machine.streams.west
        for idx, op in enumerate(module.ops):
            if op.name in mo.VIEWS:
                self._view(op)
            elif op.name == "mem.constant":
                self._constant(op)
            else:
                self._instruction(idx, op)
        self.instrs_by_idx = {i.idx: i for i in self.instrs}
        self.outputs: dict[str, str] = {}
        for name, v in module.outputs:
            val = self.values.get(v.name)
            if val is None or val.kind != "host" or val.instr < 0:  # not a host.output result
                self._hazard("output", None, f"output {name!r}", f"value {v}",
                             f"is {v}, which no host.output copies out to the host")
            else:
                self.outputs[name] = v.name

    def _hazard(self, kind, cycle, label, resource, detail):
        self.hazards.append(HazardError(kind, cycle, label, resource, detail))

    # views and constants

    def _view(self, op: Op):
        label = op.label()
        for key in ("out", "unit", "streams"):
            if op.attrs.get(key) is not None:
                self._hazard("out", op.attrs.get("cycle"), label, key, f"is a view (no data moves) but has `{key}`")
        segs, fake, ok = [], [], True
        for v in op.operands:
            val = self.values[v.name]
            if val.kind != "sram":
                self._hazard("operand", None, label, f"value {v}", f"views {v}, which is not in SRAM ({val.kind})")
                ok = False
                continue
            ok &= val.ok
            for seg in val.segs:
                fake.append((len(segs), seg[1], seg[2]))
                segs.append(seg)
        out = ()
        if ok:
            by_operand, i = [], 0
            for v in op.operands:
                n = len(self.values[v.name].segs)
                by_operand.append(tuple(fake[i:i + n]))
                i += n
            # the layout's own rule, on extents whose "slice" is the index of the segment it came from
            ext = view_extents(op.name, op.attrs, [v.type for v in op.operands], by_operand)
            out = tuple((segs[k][0], w, n, segs[k][3]) for k, w, n in ext)
        self.values[op.result.name] = _Val("sram", out, ok=ok)

    def _constant(self, op: Op):
        label, r = op.label(), op.result
        cycle = op.attrs.get("cycle")
        if cycle not in (None, 0):
            self._hazard("schedule", cycle, label, "cycle", "is in the SRAM image: its cycle must be 0")
        for key in ("unit", "streams"):
            if op.attrs.get(key) is not None:
                self._hazard("unit_class", 0, label, key, f"is in the SRAM image, no instruction: it has no `{key}`")
        extents = self._out(op, label, 0, [r.type])
        if extents is None:
            self.values[r.name] = _Val("sram", ok=False)
            return
        base = self._new_base(r.name, -1, label, 0, words(r.type), constant=True)
        self.constants.append((op, base, extents[0]))
        self.values[r.name] = _Val("sram", tuple((s, w, n, base) for s, w, n in extents[0]))

    def _new_base(self, name, instr, label, land, nwords, constant=False) -> int:
        self.bases.append(_Base(name, instr, label, land, nwords, constant=constant))
        return len(self.bases) - 1

    def _out(self, op: Op, label: str, cycle, types) -> list[tuple] | None:
        """`out` split per result; None (after a hazard) when it is missing, mis-sized or outside SRAM."""
        out = op.attrs.get("out")
        need = [words(t) for t in types]
        if out is None:
            self._hazard("out", cycle, label, "out", f"has no `out` extents for its {sum(need)} result words")
            return None
        have = sum(n for _, _, n in out)
        if have != sum(need):
            self._hazard("out", cycle, label, "out", f"has `out` spanning {have} words, its results take {sum(need)}")
            return None
        sram, ok = self.machine.sram, True
        for s, w, n in out:
            if s >= sram.slices or w + n > sram.words_per_slice:
                self._hazard("bounds", cycle, label, f"slice {s} word {w}",
                             f"writes slice {s} word {w} ({n} words), outside SRAM "
                             f"({sram.slices} slices x {sram.words_per_slice} words)")
                ok = False
        if not ok:
            return None
        seen: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for s, w, n in out:
            for w0, n0 in seen[s]:
                if w < w0 + n0 and w0 < w + n:
                    self._hazard("out", cycle, label, f"slice {s} word {max(w, w0)}",
                                 f"writes slice {s} word {max(w, w0)} twice (its `out` extents overlap)")
                    return None
            seen[s].append((w, n))
        result, pos = [], 0
        for k in need:
            result.append(sub_extents(out, pos, k))
            pos += k
        return result

    # instructions

    def _instruction(self, idx: int, op: Op):
        label = op.label()
        try:
            cls = mo.unit_class(op.name)
        except TypeRuleError:
            raise LpucError(f"{label}: {op.name} is not a machine instruction (not a scheduled program)") from None
        cycle = op.attrs.get("cycle")
        unit = op.attrs.get("unit")
        ins = _Instr(idx, op, label, cls, unit, cycle)
        if cycle is None:
            self._hazard("schedule", None, label, "cycle", "has no `cycle` (not scheduled)")
            ins.ok = False
        if unit is None:
            self._hazard("unit_class", cycle, label, "unit", f"has no `unit` (it needs a {cls} unit)")
        else:
            m = _UNIT_RE.fullmatch(unit)
            if not m or m.group(1) != cls:
                self._hazard("unit_class", cycle, label, f"unit {unit}", f"runs on {unit}, not a {cls} unit")
            elif int(m.group(2)) >= self.units[cls]:
                self._hazard("unit", cycle, label, f"unit {unit}",
                             f"runs on {unit}, which {self.machine.name} does not have "
                             f"({cls}0..{cls}{self.units[cls] - 1})")
        # operands
        for i, v in enumerate(op.operands):
            val = self.values[v.name]
            if op.name == "host.input":
                if val.kind != "host":
                    self._hazard("operand", cycle, label, f"value {v}", f"copies in {v}, which is not a model input")
                    ins.ok = False
                ins.args.append(("host", v.name))
            elif op.name == "mxm.matmul" and i == 1:
                if val.kind != "plane":
                    self._hazard("plane", cycle, label, f"plane {unit}",
                                 f"multiplies by {v}, which no mxm.install put on an MXM plane")
                    ins.ok = False
                ins.args.append(("plane", val))
            elif val.kind != "sram":
                where = "on an MXM plane" if val.kind == "plane" else "on the host"
                self._hazard("operand", cycle, label, f"value {v}", f"reads {v}, which is {where}, not in SRAM")
                ins.ok = False
                ins.args.append(("host", None))
            else:
                ins.ok &= val.ok
                ins.args.append(("sram", len(ins.reads)))
                ins.reads.append(val.segs)
        # results
        sram_results = [] if op.name in ("mxm.install", "host.output") else list(op.results)
        out_ext = None
        if sram_results:
            out_ext = self._out(op, label, cycle, [r.type for r in sram_results])
            ins.ok &= out_ext is not None
        elif op.attrs.get("out"):
            self._hazard("out", cycle, label, "out", "has `out` extents, but its result is not in SRAM")
        # streams
        streams = op.attrs.get("streams") or ()
        want = len(ins.reads) + len(sram_results)
        if len(streams) != want:
            self._hazard("streams", cycle, label, "streams",
                         f"holds {len(streams)} stream registers, needs {want} (one per SRAM operand and result)")
        for s in streams:
            if s >= self.n_streams:
                self._hazard("streams", cycle, label, f"stream {s}",
                             f"holds stream {s}, which {self.machine.name} does not have (0..{self.n_streams - 1})")
        if len(set(streams)) != len(streams):
            dup = next(s for s in streams if streams.count(s) > 1)
            self._hazard("stream", cycle, label, f"stream {dup}", f"holds stream {dup} twice")
        ins.streams = tuple(s for s in dict.fromkeys(streams) if s < self.n_streams)
        # timing, from the cost table only
        writes = out_ext or []
        c = cost(op, self.machine, [[seg[:3] for seg in segs] for segs in ins.reads], writes)
        ins.occ, ins.lat, ins.port_reads, ins.port_writes = c.occupancy, c.latency, c.reads, c.writes
        land = (cycle or 0) + c.latency
        for r, ext in zip(sram_results, writes):
            base = self._new_base(r.name, idx, label, land, words(r.type))
            ins.writes.append((base, ext))
            self.values[r.name] = _Val("sram", tuple((s, w, n, base) for s, w, n in ext), ok=ins.ok)
        if not writes:
            for r in sram_results:
                self.values[r.name] = _Val("sram", ok=False)
        if op.name == "mxm.install":
            self.values[op.result.name] = _Val("plane", instr=idx, ok=ins.ok)
        elif op.name == "host.output":
            self.values[op.result.name] = _Val("host", instr=idx, ok=ins.ok)
        self.instrs.append(ins)

    # resources

    def check_resources(self):
        """Units, slice read and write ports, stream registers: never held twice in one cycle."""
        held: dict[tuple, list[tuple[int, int, int]]] = defaultdict(list)
        rp, wp = self.machine.sram.read_ports, self.machine.sram.write_ports
        for k, ins in enumerate(self.instrs):
            if ins.cycle is None:
                continue
            c = ins.cycle
            if ins.unit is not None:
                held["unit", ins.unit].append((c, c + ins.occ, k))
            for s, n in ins.port_reads:
                held["read_port", s].append((c, c + -(-n // rp), k))
            for s, n in ins.port_writes:
                held["write_port", s].append((c + ins.lat - -(-n // wp), c + ins.lat, k))
            for s in ins.streams:
                held["stream", s].append((c, c + ins.lat, k))
        names = {"unit": "unit {}", "read_port": "the read port of slice {}",
                 "write_port": "the write port of slice {}", "stream": "stream {}"}
        for key in sorted(held, key=lambda k: (k[0], str(k[1]))):
            kind, res = key
            intervals = sorted(i for i in held[key] if i[1] > i[0])
            cur = None
            for start, end, k in intervals:
                if cur is not None and start < cur[1]:
                    other = self.instrs[cur[2]]
                    resource = names[kind].format(res)
                    self._hazard(kind, start, self.instrs[k].label, resource,
                                 f"holds {resource} during [{start}, {end}) while {other.label} holds it "
                                 f"during [{cur[0]}, {cur[1]})")
                if cur is None or end > cur[1]:
                    cur = (start, end, k)

    @property
    def cycles(self) -> int:
        return max([i.cycle + i.lat for i in self.instrs if i.cycle is not None], default=0)


def schedule_stats(module: Module, machine: Machine) -> Stats:
    """The statistics a run will report (cycles, busy cycles, SRAM peak), from the schedule alone."""
    plan = _Plan(module, machine)
    for ins in plan.instrs:  # what a run learns while reading: when each value's last read ends
        if ins.cycle is not None:
            for segs in ins.reads:
                for *_, b in segs:
                    plan.bases[b].end = max(plan.bases[b].end, ins.cycle + ins.occ)
    return _stats(plan)


def schedule_length(module: Module, machine: Machine) -> int:
    """The program's length in cycles: the largest c + lat (ir.costs), whatever its hazards."""
    return _Plan(module, machine).cycles


# --- the machine state and the loop -------------------------------------------

class _Stop(Exception):
    pass


class _Machine:
    def __init__(self, plan: _Plan, program: Program, inputs: Mapping[str, np.ndarray], collect: bool,
                 horizon: int | None):
        self.plan, self.program, self.inputs = plan, program, inputs
        self.collect, self.horizon = collect, horizon
        sram = plan.machine.sram
        shape = (sram.slices, sram.words_per_slice)
        self.sram = np.zeros(shape + (LANES,), np.uint8)
        self.owner = np.full(shape, -1, np.int32)       # base id of the value whose word is there
        self.read_end = np.zeros(shape, np.int64)       # latest end (c + occ) of a read of the word
        self.reader = np.full(shape, -1, np.int32)      # the instruction reading it until then
        self.const = np.zeros(shape, bool)              # a word of the image (never freed)
        self.planes: dict[str, tuple[int, np.ndarray, int]] = {}   # unit -> (install, tile, landed at)
        self.streaming: dict[str, tuple[int, int, int]] = {}       # unit -> (matmul, streams until, its install)
        self.pending: dict[int, tuple[np.ndarray, ...]] = {}
        self.host: dict[str, np.ndarray] = {}
        self.hazards: list[HazardError] = []

    def hazard(self, kind, cycle, label, resource, detail):
        self.hazards.append(HazardError(kind, cycle, label, resource, detail))
        if not self.collect:
            raise _Stop

    def image(self):
        """The SRAM image, written before cycle 0."""
        plan = self.plan
        for op, base, extents in plan.constants:
            for s, w, n in extents:
                if n:
                    data = self.program.image.get((s, w))
                    if data is None or data.shape != (n, LANES):
                        raise LpucError(f"{op.label()}: the SRAM image has no {n} words at slice {s} word {w}")
                    taken = self.owner[s, w:w + n]
                    if (taken >= 0).any():
                        word = w + int(np.argmax(taken >= 0))
                        other = plan.bases[int(self.owner[s, word])]
                        self.hazard("constant", 0, op.label(), f"slice {s} word {word}",
                                    f"is placed on slice {s} word {word}, a word of the constant %{other.name}")
                    self.sram[s, w:w + n] = data
                    self.owner[s, w:w + n] = base
                    self.const[s, w:w + n] = True

    def run(self):
        plan = self.plan
        events = []
        for k, ins in enumerate(plan.instrs):
            if ins.cycle is not None:
                events.append((ins.cycle + ins.lat, 0, k))  # landings before issues of the same cycle
                events.append((ins.cycle, 1, k))
        events.sort()
        try:
            self.image()
            for t, kind, k in events:
                if self.horizon is not None and t > self.horizon:
                    break
                (self.land if kind == 0 else self.issue)(plan.instrs[k], t)
        except _Stop:
            pass

    # an instruction issues: reads and computes

    def issue(self, ins: _Instr, c: int):
        plan, end = self.plan, c + ins.occ
        for segs in ins.reads:
            for s, w, n, b in segs:
                owner = self.owner[s, w:w + n]
                wrong = owner != b
                if wrong.any():
                    k = int(np.argmax(wrong))
                    self._read_hazard(ins, c, s, w + k, b, int(owner[k]))
                re_, rd = self.read_end[s, w:w + n], self.reader[s, w:w + n]
                if re_.max(initial=0) < end:  # the common case: this read ends last
                    re_[:] = end
                    rd[:] = ins.idx
                else:
                    later = re_ < end
                    re_[later] = end
                    rd[later] = ins.idx
                base = plan.bases[b]
                base.end = max(base.end, end)
        if ins.op.name == "mxm.matmul" and ins.ok:
            self._check_plane(ins, c)
        if not ins.ok:
            return
        op, args = ins.op, []
        for (where, ref), v in zip(ins.args, op.operands):
            if where == "sram":
                segs = ins.reads[ref]
                data = np.concatenate([self.sram[s, w:w + n] for s, w, n, _ in segs]) if segs else \
                    np.zeros((0, LANES), np.uint8)
                args.append(from_words(data, v.type))
            elif where == "plane":
                state = self.planes.get(ins.unit)
                tile = state[1] if state is not None else None
                args.append(tile if tile is not None else np.zeros(v.type.shape, v.type.dtype.numpy))
            else:
                args.append(np.asarray(self.inputs[ref]))
        try:
            with np.errstate(all="ignore"):
                outs = IMPLS[op.name](op, args)
            results = tuple(conform(op, a, r.type) for a, r in zip(outs, op.results, strict=True))
        except EvalError:
            if not self.collect:
                raise
            results = tuple(np.zeros(r.type.shape, r.type.dtype.numpy) for r in op.results)
        except Exception as e:  # numpy's own complaint, e.g. an index out of range
            if not self.collect:
                raise EvalError(f"{op.label()}: {type(e).__name__}: {e}") from e
            results = tuple(np.zeros(r.type.shape, r.type.dtype.numpy) for r in op.results)
        if op.name == "mxm.matmul":
            self.streaming[ins.unit] = (ins.idx, end, ins.args[1][1].instr)
        self.pending[ins.idx] = results

    def _read_hazard(self, ins, c, s, word, b, other):
        plan = self.plan
        base = plan.bases[b]
        where = f"slice {s} word {word}"
        if base.land > c:
            self.hazard("raw", c, ins.label, where,
                        f"reads {where} before %{base.name} (landing at {base.land}) is written")
        elif other < 0:
            self.hazard("raw", c, ins.label, where, f"reads {where}, which %{base.name} never wrote")
        else:
            o = plan.bases[other]
            self.hazard("overwritten", c, ins.label, where,
                        f"reads {where}, which no longer holds %{base.name}: {o.label} landed there at {o.land}")

    def _check_plane(self, ins: _Instr, c: int):
        w_val = ins.args[1][1]
        install = self.plan.module.ops[w_val.instr]
        unit = ins.unit
        res = f"plane {unit}"
        if install.attrs.get("unit") != unit:
            self.hazard("plane", c, ins.label, res, f"runs on {unit}, but its weights "
                        f"%{install.result.name} are installed on {install.attrs.get('unit')}")
            return
        state = self.planes.get(unit)
        if state is not None and state[0] == w_val.instr:
            return
        ins_w = self.plan.instrs_by_idx[w_val.instr]
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
        for b, extents in ins.writes:
            for s, w, n in extents:
                re_ = self.read_end[s, w:w + n]
                if re_.max(initial=0) > t:
                    word = w + int(np.argmax(re_ > t))
                    r = self.plan.instrs_by_idx[int(self.reader[s, word])]
                    where = f"slice {s} word {word}"
                    self.hazard("war", t, ins.label, where, f"lands on {where} while {r.label} still reads it "
                                f"(until {int(self.read_end[s, word])})")
                consts = self.const[s, w:w + n]
                if consts.any():
                    word = w + int(np.argmax(consts))
                    where = f"slice {s} word {word}"
                    c_base = plan.bases[int(self.owner[s, word])]
                    self.hazard("constant", t, ins.label, where,
                                f"lands on {where}, a word of the constant %{c_base.name} (never freed)")
                    self.const[s, w:w + n] = False
        results = self.pending.pop(ins.idx, None)
        name = ins.op.name
        if name == "mxm.install":
            busy = self.streaming.get(ins.unit)
            if busy is not None and busy[1] > t and busy[2] != ins.idx:  # (its own: reported at issue)
                mm = self.plan.instrs_by_idx[busy[0]]
                self.hazard("plane", t, mm.label, f"plane {ins.unit}",
                            f"streams through {ins.unit} until {busy[1]}, but {ins.label} replaces its "
                            f"weights at {t}")
            tile = results[0] if results is not None else None
            if tile is not None or ins.ok:
                self.planes[ins.unit] = (ins.idx, tile, t)
            return
        if name == "host.output":
            if results is not None:
                self.host[ins.op.result.name] = results[0]
            return
        sram_results = results
        for i, (b, extents) in enumerate(ins.writes):
            data = to_words(sram_results[i], ins.op.results[i].type) if sram_results else None
            pos = 0
            for s, w, n in extents:
                if data is not None:
                    self.sram[s, w:w + n] = data[pos:pos + n]
                self.owner[s, w:w + n] = b
                pos += n


# --- running ------------------------------------------------------------------

def _plan(program: Program) -> _Plan:
    plan = _Plan(program.module, program.machine)
    plan.check_resources()
    return plan


def _load(program: Program | str | Path) -> Program:
    return program if isinstance(program, Program) else read_lpu(program)


def run(program: Program | str | Path, inputs: Mapping[str, np.ndarray], *, check: bool = True) -> Result:
    """Run a scheduled program on `inputs` (name -> array), cycle by cycle.

    check=True raises the earliest HazardError; check=False runs on regardless
    and returns every hazard in `Result.hazards` (outputs are then unreliable)."""
    program = _load(program)
    module = program.module
    env = check_inputs(module, inputs)
    plan = _plan(program)
    static = sorted(plan.hazards, key=_order)
    horizon = None
    if check and static:
        horizon = static[0].cycle if static[0].cycle is not None else -1
    m = _Machine(plan, program, env, collect=not check, horizon=horizon)
    m.run()
    hazards = sorted(static + m.hazards, key=_order)
    if check and hazards:
        raise hazards[0]
    outputs = {}
    for name, v in module.outputs:
        value = m.host.get(plan.outputs.get(name, ""))
        outputs[name] = value if value is not None else np.zeros(v.type.shape, v.type.dtype.numpy)
    return Result(MappingProxyType(outputs), _stats(plan), _trace(plan), tuple(hazards))


def find_hazards(program: Program | str | Path, inputs: Mapping[str, np.ndarray] | None = None) \
        -> tuple[HazardError, ...]:
    """Every hazard of a program, in cycle order (inputs default to zeros)."""
    program = _load(program)
    if inputs is None:
        inputs = {v.name: np.zeros(v.type.shape, v.type.dtype.numpy) for v in program.module.inputs}
    return run(program, inputs, check=False).hazards


def _order(h: HazardError):
    return -1 if h.cycle is None else h.cycle


def _trace(plan: _Plan) -> tuple[TraceEvent, ...]:
    events = [TraceEvent(i.label, i.op.name, i.unit or "", i.cycle, i.cycle + i.occ, i.cycle + i.lat)
              for i in plan.instrs if i.cycle is not None]
    return tuple(sorted(events, key=lambda e: (e.start, e.unit, e.land, e.instruction)))


def _stats(plan: _Plan) -> Stats:
    machine, cycles = plan.machine, plan.cycles
    counts = plan.units
    busy = {f"{cls}{i}": 0 for cls in sorted(counts) for i in range(counts[cls])}
    timed = [i for i in plan.instrs if i.cycle is not None]
    for i in timed:
        if i.unit in busy:
            busy[i.unit] += i.occ
    class_busy = {cls: sum(busy[f"{cls}{i}"] for i in range(n)) for cls, n in sorted(counts.items())}
    # SRAM: each value owning words holds them from landing until its last read ends (constants: always)
    deltas = []
    for b in plan.bases:
        if b.constant:
            deltas += [(0, b.words), (max(cycles, 1), -b.words)]
        else:
            deltas += [(b.land, b.words), (max(b.end, b.land + 1), -b.words)]
    deltas.sort(key=lambda d: (d[0], d[1]))
    live = peak = 0
    for _, d in deltas:
        live += d
        peak = max(peak, live)
    return Stats(
        cycles=cycles,
        latency_us=machine.cycles_to_us(cycles),
        instructions=len(timed),
        busy=MappingProxyType(busy),
        utilization=MappingProxyType({u: (b / cycles if cycles else 0.0) for u, b in busy.items()}),
        class_busy=MappingProxyType(class_busy),
        class_utilization=MappingProxyType({c: (b / (cycles * counts[c]) if cycles else 0.0)
                                            for c, b in class_busy.items()}),
        sram_peak_bytes=peak * machine.sram.word_bytes,
    )
