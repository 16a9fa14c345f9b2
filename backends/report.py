"""The HTML report: one self-contained page about a scheduled program.

`render_html(program, run_result=None)` returns a single HTML file that opens
offline in any browser (inline CSS, JS and SVG; no fetch of any kind):

- a summary: model, machine, cycles, latency, lower bound and gap, chips,
  instructions, SRAM peak, tokens/s for a decode step;
- a zoomable, pannable timeline: one row per chip x unit instance that does work (idle
  instances folded away, their count per class said above the plot), one
  `<rect class="instr" data-i="I">` per instruction (its occupancy; a lighter
  tail shows the rest of its latency), hover for a summary, click for
  every detail (op, results, operands and the values they name, unit, cycles,
  extents, streams, attributes);
- the critical path (`critical_path`): the chain of instructions ending at the
  last one to land, each step following the operand that landed last (through
  views to its producer), drawn over the timeline and listed with the cycles
  each step waited after its operand had landed;
- SRAM occupancy per slice over time (a heat strip per slice, exact step
  functions, on the timeline's time axis) and in total;
- link traffic (chip-to-chip; on one chip: none) and a utilization table per
  unit class and instance;
- on several chips, an overview sized by chips, not instructions (`overview`): a row per
  chip over the whole program, each cell coloured by the class binding the chip then, the
  stages of a `tp=T,pp=P` layout and the critical path drawn over it; and the bytes sent
  between each pair of chips, with the busiest link directions. Beyond 8 chips the timeline
  and SRAM views draw one chip at a time (first the one the critical path spends the most
  cycles on; a picker; a click in the overview), and each chip's instruction details and
  SRAM steps come as one gzip chunk (`chunks`), unpacked in the browser when needed.

All data is embedded as one JSON document (`<script type="application/json"
id="lpuc-data">`, keys sorted, no timestamps) and the page's script draws
from it, so the same program always gives the same bytes. Timing, SRAM words
and the SRAM live curve come from the program's description (ir.schedule_facts),
and so do the statistics (`described_stats`: what `lpuc run` reports, summed by the
interpreter's `summarize`), or they are the run's, when a run result is given.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain, compress
from operator import attrgetter, itemgetter, sub
from typing import Any, Mapping

import numpy as np

from ..ir import machine_ops as mo
from ..ir.beside import alternately
from ..ir.core import Op
from ..ir.costs import units
from ..ir.printer import format_attr
from ..ir.layout import words
from ..ir.registry import HOST, LINK, OPS, PLANE, SRAM
from ..ir.schedule_facts import VIEW, Facts, attribute_of_each
from ..ir.types import TensorType

from .interpreter import LINK_CLASSES, Result, Stats, Timed, Transfer, summarize
from .lpu import Program
from .state import step_positions

CLASS_ORDER = tuple(c.name for c in mo.UNIT_CLASSES)
ONE_CHIP_BEYOND = 8  # more chips than this: the page draws one chip at a time, its data packed per chip
PAGE_BYTES = 10_000_000  # beyond ONE_CHIP_BEYOND chips, the most a page weighs by default: every chip's
                         # instructions' timing, and their details for as many chips as fit (at least one)
SCHEDULE_KEYS = frozenset(mo.SCHEDULE_ATTRS)


# --- the analysis ---------------------------------------------------------------

@dataclass
class _Value:
    kind: str                  # "sram" (or a view of it), "plane" (an mxm.install result), "link" (a c2c.send
                               # result), "host" (inputs, host.output results)
    sources: tuple = ()        # sram: names of the values owning its words (itself unless a view)
    views: tuple = ()          # the views between it and those owners, outermost first


@dataclass(slots=True)
class Instr:
    i: int                     # index among instructions (the timeline's data-i)
    k: int                     # index in module.ops
    op: Op
    cls: str
    unit: str
    chip: int
    start: int
    occ: int
    lat: int
    reads: Sequence = ()     # per SRAM operand: ((slice, word, words, ...), ...): the facts' segments, as they are
    writes: Sequence = ()    # per SRAM result: ((slice, word, words), ...)
    producers: list = field(default_factory=list)    # per operand: sorted instruction indices

    @property
    def cycle(self) -> int:  # (as interpreter.summarize reads it)
        return self.start

    @property
    def end(self) -> int:
        return self.start + self.occ

    @property
    def land(self) -> int:
        return self.start + self.lat


@dataclass(frozen=True)
class CriticalStep:
    instr: int                 # the instruction
    producer: int | None       # the producer of its last-landing operand (None: the chain's first)
    operand: str | None        # that operand's name
    ready: int                 # when that operand landed (0 for the first)
    wait: int                  # issue - ready: cycles the instruction waited with its operands in place


@dataclass(eq=False)
class Analysis:
    """A scheduled program's instructions (those with a cycle, in program order: the timeline's indices) by
    column, with what the page draws of them."""
    program: Program
    facts: Facts                   # the program's description (ir.schedule_facts)
    chips: list[int]
    cycles: int
    k: np.ndarray                  # per instruction: its index in module.ops
    chip: np.ndarray
    start: np.ndarray
    occ: np.ndarray
    lat: np.ndarray
    unit: list[str]                # (its `unit`; without one, its class and "?")
    cls: list[str]
    producers: list[list[list[int]]]  # per instruction, per operand: the instructions making it (sorted)
    critical: list[CriticalStep]   # first instruction first
    _values: dict[str, _Value] = field(default_factory=dict)

    @cached_property
    def end(self) -> np.ndarray:
        return self.start + self.occ

    @cached_property
    def land(self) -> np.ndarray:
        return self.start + self.lat

    @cached_property
    def instrs(self) -> Sequence[Instr]:
        """The instructions as objects, each made when first asked for (a page details a few chips of hundreds)."""
        return _Instrs(self)

    @cached_property
    def _view_ops(self) -> dict[str, Op]:
        """Each view's op, by its result (asked only for details)."""
        ops = self.program.module.ops
        return {op.results[0].name: op for op in compress(ops, map(_VIEWS.__contains__, map(_NAME, ops)))}

    def value(self, name: str) -> _Value:
        """Where a value lives and, for a view, the values owning its words (asked only for the instructions
        whose details a page holds: a few chips of hundreds)."""
        found = self._values.get(name)
        if found is None:
            place = self.facts.places.get(name, HOST)
            if place == VIEW:  # the values owning its words, and the views in between
                sources, views = [], [name]
                for v in self._view_ops[name].operands:
                    sources += self.value(v.name).sources
                    views += self.value(v.name).views
                found = _Value(SRAM, tuple(dict.fromkeys(sources)), tuple(dict.fromkeys(views)))
            else:
                found = _Value(place, (name,) if place != HOST else ())
            self._values[name] = found
        return found


class _Instrs(Sequence):
    """Analysis.instrs: an Instr per instruction, made on demand."""

    def __init__(self, a: Analysis):
        self._a, self._made = a, {}

    def __len__(self) -> int:
        return len(self._a.unit)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = int(i) % len(self)
        made = self._made.get(i)
        if made is None:
            a, fact = self._a, self._a.facts.scheduled[i]
            made = self._made[i] = Instr(i, fact.index, fact.op, a.cls[i], a.unit[i], fact.chip, int(a.start[i]),
                                         int(a.occ[i]), int(a.lat[i]), fact.reads, fact.writes, a.producers[i])
        return made


# the ops whose result is no SRAM words: an installed plane, a transfer in flight
_MAKERS = frozenset(name for name, opdef in OPS.items() if opdef.result_place in (PLANE, LINK))
_OWNER = itemgetter(3)  # a segment's base: the value owning its words (ir.schedule_facts.Segment)
# (fields read of a million instructions, by loops in C)
_UNIT_CLASS, _CHIP, _INDEX, _OP_NAME, _NAME = (attrgetter(f) for f in ("unit_class", "chip", "index", "op.name",
                                                                       "name"))
_VIEWS = frozenset(name for name, opdef in OPS.items() if opdef.view)


def analyze(program: Program) -> Analysis:
    """Timing, SRAM words, producers and the critical path of a scheduled program (from its description,
    ir.schedule_facts)."""
    facts = program.facts
    places, bases, words = facts.places, facts.bases, facts.words
    scheduled, timing = facts.scheduled, facts.timing
    made_at: dict[int, int] = {}  # a base -> the timeline index of the instruction writing it
    found: dict[str, list[int]] = {}  # a value -> the instructions making it, or writing the words it names
    none: list[int] = []  # (shared by the values nothing scheduled makes: never changed)

    def producers_of(name: str) -> list[int]:
        """Of a value no instruction makes: a view's (those of the values owning its words), else none."""
        if places.get(name) == VIEW:  # (program order is SSA order: its owners' producers are known already)
            made = sorted({made_at[b] for b in set(map(_OWNER, words.get(name, ()))) if b in made_at})
        else:
            made = none
        found[name] = made
        return made

    lat = timing[:, 2].tolist()
    longest: list[int] = []  # per instruction: the latency of the longest chain of reads after writes ending with it
    get = found.get
    producers = []
    for i, fact in enumerate(scheduled):
        op = fact.op
        prods = [p if (p := get(v.name)) is not None else producers_of(v.name) for v in op.operands]
        producers.append(prods)
        most = 0
        for made in prods:
            for p in made:
                if longest[p] > most:
                    most = longest[p]
        longest.append(lat[i] + most)
        if op.name in _MAKERS:  # a plane or a transfer
            found[op.results[0].name] = [i]
        elif fact.writes:  # SRAM results (one with no words has no producer)
            mine = [i]
            for r, written, b in zip(op.results, fact.writes, fact.write_bases):
                found[r.name] = mine if written else none
                made_at[b] = i
    n = len(scheduled)
    cls = list(map(_UNIT_CLASS, scheduled))
    unit = attribute_of_each(scheduled, "unit")
    if None in unit:  # (an instruction without a unit: its class and "?")
        unit = [u or f"{c}?" for u, c in zip(unit, cls)]
    chip = np.fromiter(map(_CHIP, scheduled), np.int64, n)
    chips = sorted(set(np.unique(chip).tolist()) | {b.chip for b in bases} | set(range(program.target.chips)))
    start = timing[:, 0].copy()
    critical = critical_path(scheduled, start.tolist(), lat, producers, longest)
    return Analysis(program, facts, chips, facts.length, np.fromiter(map(_INDEX, scheduled), np.int64, n),
                    chip, start, timing[:, 1].copy(), timing[:, 2].copy(), unit, cls, producers, critical)


def critical_path(scheduled: Sequence, start: list[int], lat: list[int], producers: list[list[list[int]]],
                  longest: list[int]) -> list[CriticalStep]:
    """The chain of read-after-write steps ending at the last instruction to land, of the instructions
    `scheduled` (ir.schedule_facts.Instruction) issued at `start` with latency `lat`, their `producers` (per
    operand) and the `longest` latency of a chain ending with each.

    From each instruction it steps to the producer of one of its operands (views
    resolved to the values owning their words; an MXM weight to its install):
    the one whose own chain carries the most latency (the latency-weighted
    longest path, the compiler's critical-path bound), the latest to land among
    equals. Every step is a read after write: the producer landed at `ready` <=
    the consumer's issue; `wait` is the difference, the cycles the consumer
    spent on units, ports, streams or other operands with this one in place.
    So cycles = first issue + sum of latencies + sum of waits along the chain.

    (Following plainly the operand that landed last ends every chain at the last
    weight install: installs of weights read nothing computed, so the scheduler
    places them just in time, landing as their matmul issues.)"""
    if not scheduled:
        return []
    lands = [s + l for s, l in zip(start, lat)]
    last = max(lands)
    cur = max((i for i, land in enumerate(lands) if land == last), key=lambda i: (longest[i], i))
    chain = []
    while True:
        best = None
        for pos, made in enumerate(producers[cur]):
            for p in made:
                key = (longest[p], lands[p], p)
                if best is None or key > best[0]:
                    best = (key, p, scheduled[cur].op.operands[pos].name)
        if best is None:
            chain.append(CriticalStep(cur, None, None, 0, start[cur]))
            break
        _, p, operand = best
        chain.append(CriticalStep(cur, p, operand, lands[p], start[cur] - lands[p]))
        cur = p
    return chain[::-1]


# --- the SRAM over time -----------------------------------------------------------

def described_stats(a: Analysis, steps: Mapping[tuple[int, int | None], list[int]]) -> Stats:
    """The statistics `lpuc run` reports (interpreter.summarize) of the analysed program, whose SRAM occupancy is
    `steps` (Facts.sram_live): from its description, which tests/test_report.py checks gives a run's."""
    machine, places, word_bytes = a.program.machine, a.facts.places, a.program.machine.sram.word_bytes
    scheduled, start, land = a.facts.scheduled, a.start.tolist(), a.land.tolist()
    on_links = [i for i, cls in enumerate(a.cls) if cls in LINK_CLASSES]
    arrival = {}  # a send's timeline index -> its receive's landing
    for i in on_links:
        for v, prods in zip(scheduled[i].op.operands, a.producers[i]):
            if places[v.name] == LINK and prods:
                arrival[prods[0]] = land[i]
    transfers = [Transfer(start[i], arrival.get(i, land[i]), words(fact.op.operands[0].type, machine.lanes)
                          * word_bytes, tuple(((ch, port), length) for ch, port, _, length in fact.links))
                 for i in on_links if OPS[(fact := scheduled[i]).op.name].result_place == LINK]
    peaks = {chip: int(total[1::2].max(initial=0)) for (chip, s), total in steps.items() if s is None}
    timed = Timed([fact.op for fact in scheduled], a.chip, a.unit, a.cls, a.start, a.occ)
    return summarize(machine, a.program.target.chips, a.cycles, timed, peaks, transfers)


# --- the model -----------------------------------------------------------------------

def decode_batch(program: Program) -> int | None:
    """A decode step's batch: the module keeps its KV cache resident and takes one position per run (batch
    1), or it has a KV-cache input (name containing "past") and a sequence-length-1 token input
    ([batch, 1]); None for anything else."""
    inputs = program.module.inputs
    if step_positions(program.module) is not None:
        return 1 if step_positions(program.module) == 1 else None
    if not any("past" in v.name.lower() for v in inputs):
        return None
    tokens = [v for v in inputs if v.type.rank == 2 and v.type.shape[1] == 1 and v.type.dtype.is_int]
    tokens.sort(key=lambda v: (v.name != "input_ids", v.name))
    return tokens[0].type.shape[0] if tokens else None


# --- the page's data ------------------------------------------------------------------

def _extents(ext) -> list[list[int]]:
    return [[e[0], e[1], e[2]] for e in ext]  # (a read's segment carries its owner's base after the three)


def report_data(program: Program, run_result: Result | None = None, progress=None,
                detail_chips: Sequence[int] | None = None) -> dict[str, Any]:
    """Everything the page draws, as JSON data (deterministic for a program); `progress`: called with a line
    at each stage of a large program; `detail_chips`: beyond ONE_CHIP_BEYOND chips, the chips whose
    instructions' details the page holds (default: as many as fit PAGE_BYTES, _pack_by_chip)."""
    say = progress or (lambda line: None)
    say(f"report: the timing, words and critical path of {len(program.module.ops):,} ops")
    facts = program.facts
    facts.length  # (and the timing it is found from: made once, before two threads read the facts)
    # the SRAM curves (chip, slice, or None for all slices -> words live, Facts.sram_live), numpy mostly, so
    # without holding the interpreter, beside the analysis, Python mostly
    with ThreadPoolExecutor(1) as beside:
        curves = beside.submit(facts.sram_live)
        a = analyze(program)
        say("report: SRAM occupancy")
        steps = curves.result()
    machine, manifest = program.machine, program.manifest
    stats: Stats = run_result.stats if run_result is not None else described_stats(a, steps)
    packed = len(a.chips) > ONE_CHIP_BEYOND
    say(f"report: {len(a.instrs):,} instructions" + ("" if packed else "' details"))
    summary_in = dict(manifest.get("summary") or {})
    counts = units(machine)
    classes = [c for c in CLASS_ORDER if c in counts] + sorted(set(counts) - set(CLASS_ORDER))
    extra = sorted(set(a.cls) - set(classes))
    classes += extra

    # timeline rows: chip x unit instance that does work (idle ones folded away, counted by class in
    # `folded`), in the machine's order, then any unit the machine lacks
    code = {u: j for j, u in enumerate(dict.fromkeys(a.unit))}  # a unit -> its number: (chip, unit) is
                                                                 # chip * len(code) + the unit's number
    n = len(a.unit)
    unit_of = np.fromiter(map(code.__getitem__, a.unit), np.int64, n)
    on_key = a.chip * len(code) + unit_of
    on_unit = _grouped(on_key)  # each (chip, unit)'s instructions
    units_on: dict[int, set[str]] = {}
    unit_names = list(code)
    for key in on_unit:
        units_on.setdefault(key // len(code), set()).add(unit_names[key % len(code)])
    machine_units = [f"{c}{j}" for c in classes for j in range(counts.get(c, 0))]
    in_machine = set(machine_units)
    class_of: dict[str, str] = {}  # a unit -> its class
    folded: Counter = Counter()
    rows, row = [], np.zeros(n, np.int64)
    for chip in a.chips:
        for u in machine_units + sorted(units_on.get(chip, set()) - in_machine):
            cls = class_of.get(u)
            if cls is None:
                cls = class_of[u] = next((c for c in classes if u.startswith(c)), "")
            mine = on_unit.get(chip * len(code) + code[u]) if u in code else None
            if mine is None:
                folded[cls] += 1
                continue
            row[mine] = len(rows)
            busy = stats.busy.get(u, 0) if len(a.chips) == 1 else int(a.occ[mine].sum())
            rows.append({"chip": chip, "unit": u, "cls": cls, "n": len(mine), "busy": busy,
                         "util": busy / a.cycles if a.cycles else 0.0})

    crit_of = {st.instr: j for j, st in enumerate(a.critical)}
    scheduled = a.facts.scheduled
    op_names = list(map(_OP_NAME, scheduled))
    ops = sorted(set(op_names))
    op_index = {n: j for j, n in enumerate(ops)}
    class_index = {c: j for j, c in enumerate(classes)}
    # per instruction [row, start, occupancy, latency, op, class]: the page's `instrs`
    instrs = np.stack([row, a.start, a.occ, a.lat, np.fromiter(map(op_index.__getitem__, op_names), np.int64, n),
                       np.fromiter(map(class_index.__getitem__, a.cls), np.int64, n)], axis=1).reshape(n, 6)

    type_text: dict[TensorType, str] = {}  # (a program spells few types, of many values)
    attr_text: dict[int, tuple[Any, str]] = {}  # id(an attribute's value) -> (it, its text): a template's stamps
                                                # share their attributes' values

    def text_of(t: TensorType) -> str:
        found = type_text.get(t)
        if found is None:
            found = type_text[t] = str(t)
        return found

    def formatted(value: Any) -> str:
        found = attr_text.get(id(value))
        if found is None:
            found = attr_text[id(value)] = (value, format_attr(value))
        return found[1]

    def detail(i: int) -> dict[str, Any]:
        """What the page shows of instruction i beyond its timing."""
        fact = scheduled[i]
        op = fact.op
        operands = []
        for v, prods in zip(op.operands, a.producers[i]):
            val = a.value(v.name)
            o = {"name": v.name, "type": text_of(v.type)}  # defaults left out: kind "sram", no producers, no views
            if val.kind != "sram":
                o["kind"] = val.kind
            if prods:
                o["producers"] = prods
            if val.views:
                o["views"], o["sources"] = list(val.views), list(val.sources)
            operands.append(o)
        d = {"k": fact.index, "results": [[r.name, text_of(r.type)] for r in op.results], "operands": operands,
             "out": [_extents(e) for e in fact.writes], "reads": [_extents(e) for e in fact.reads],
             "streams": list(op.attrs.get("streams") or ())}
        attrs = {k: formatted(v) for k, v in op.attrs.items() if k not in SCHEDULE_KEYS}
        if attrs:
            d["attrs"] = attrs
        if i in crit_of:
            d["crit"] = crit_of[i]
        return d

    sram = []
    none = np.zeros(0, np.int64)
    for chip in a.chips:
        per = [steps.get((chip, s), none) for s in range(machine.sram.slices)]
        total = steps.get((chip, None), none)
        at = int(total[1::2].argmax()) if len(total) else 0  # (the first cycle at the peak)
        sram.append({"chip": chip, "slices": per if packed else [st.tolist() for st in per],
                     "total": total if packed else total.tolist(),
                     "peak_words": int(total[2 * at + 1]) if len(total) else 0,
                     "peak_cycle": int(total[2 * at]) if len(total) else 0,
                     "max_slice_words": max((int(st[1::2].max()) for st in per if len(st)), default=0)})

    links = _links(stats, a.cycles, machine)
    batch = decode_batch(program)
    latency_us = machine.cycles_to_us(a.cycles)
    crit_wait = sum(st.wait for st in a.critical[1:])
    summary = {
        "model": program.module.name, "machine": machine.name, "clock_mhz": machine.clock_mhz,
        "chips": len(a.chips), "cycles": a.cycles, "manifest_cycles": manifest.get("cycles"),
        "latency_us": latency_us,
        "lower_bound_cycles": summary_in.get("lower_bound_cycles"),
        "critical_path_cycles": summary_in.get("critical_path_cycles"),
        "resource_bound_cycles": summary_in.get("resource_bound_cycles"),
        "bound": summary_in.get("bound"),
        "gap": (a.cycles / summary_in["lower_bound_cycles"] - 1) if summary_in.get("lower_bound_cycles") else None,
        "instructions": len(a.instrs), "ops": len(program.module.ops),
        "sram_peak_bytes": stats.sram_peak_bytes,
        "sram_capacity_bytes": machine.sram.chip_bytes * len(a.chips),
        "sram_image_bytes": summary_in.get("sram_image_bytes"),
        "decode": batch is not None, "batch": batch,
        "tokens_per_s": (batch * 1e6 / latency_us) if batch and latency_us else None,
        "inputs": dict(manifest.get("inputs") or {}), "outputs": dict(manifest.get("outputs") or {}),
        "options": dict(manifest.get("options") or {}), "lpuc_version": manifest.get("lpuc_version"),
        "measured": run_result is not None,
    }
    class_rows = []
    for c in classes:
        n_inst = counts.get(c, 0) * len(a.chips)
        busy = sum(r["busy"] for r in rows if r["cls"] == c)
        class_rows.append({"cls": c, "instances": n_inst, "n": sum(r["n"] for r in rows if r["cls"] == c),
                           "busy": busy, "util": busy / (a.cycles * n_inst) if a.cycles and n_inst else 0.0})
    data = {
        "version": 1,
        "summary": summary,
        "classes": classes,
        "styled": list(CLASS_ORDER),  # the classes with a colour of their own (_class_css); others: "other"
        "colours": {c.name: c.colour for c in mo.UNIT_CLASSES},  # the same, for the overview's canvas
        "class_rows": class_rows,
        "rows": rows,
        "folded": dict(sorted(folded.items())),
        "ops": ops,
        "instrs": instrs if packed else instrs.tolist(),
        "details": None if packed else [detail(i) for i in range(n)],
        "critical": {"chain": [st.instr for st in a.critical],
                     "steps": [[st.instr, st.producer, st.operand, st.ready, st.wait] for st in a.critical],
                     "why": [_why(a, st, on_unit[on_key[st.instr]]) for st in a.critical],
                     "bound": summary_in.get("critical_path_cycles"),
                     "first_issue": a.critical[0].wait if a.critical else 0,
                     "latency": sum(a.instrs[st.instr].lat for st in a.critical),
                     "waits": crit_wait},
        "sram": {"words_per_slice": machine.sram.words_per_slice, "word_bytes": machine.sram.word_bytes,
                 "slices": machine.sram.slices,
                 "chips": sram},
        "links": links,
        "per_chip": [c.as_json() for c in stats.chips],
        "pieces": _pieces(a),
        "overview": overview(a, classes, counts, str(summary_in.get("partition", "")), stats),
        "run": _run(run_result),
        "one_chip_beyond": ONE_CHIP_BEYOND,
        "kinds": list(KINDS),
    }
    if packed:
        _pack_by_chip(data, a, say, detail, detail_chips)
    return data


KINDS = ("sram", "plane", "link", "host")  # an operand's kind, by its number in a packed chunk


def _pack_by_chip(data: dict[str, Any], a: Analysis, say, detail, detail_chips: Sequence[int] | None) -> None:
    """Move what the page needs only for the chip it shows (instructions, their details, SRAM step functions)
    into one gzip-compressed chunk per chip (`chunks`: chip -> base64, each `_chunk`), which the page unpacks
    when it shows that chip. Every chip's chunk has its instructions' timing; the details are those of
    `detail_chips`, else of as many chips as keep the page within PAGE_BYTES, those the critical path spends
    the most cycles on first (at least one): `detailed`. `instrs` keeps, by index, the instructions the
    critical path's table needs on every chip, with their `labels`. `detail`: an instruction's details (made
    only for the chips that keep them). All the rest, the page's core, is packed once too: `core` (_page_json)."""
    named = sorted({i for st, why in zip(data["critical"]["steps"], data["critical"]["why"])
                    for i in (st[0], st[1], why[2] if why else None) if i is not None})
    data["labels"] = {str(i): _label(a.instrs[i]) for i in named}
    instrs = data["instrs"]
    data["instrs"] = {str(i): instrs[i].tolist() for i in named}
    on_chip = _grouped(a.chip)
    nothing = np.zeros(0, np.int64)
    on_chip = {chip: on_chip.get(chip, nothing) for chip in a.chips}
    sram = {entry["chip"]: entry for entry in data["sram"]["chips"]}
    steps = {chip: (sram.get(chip, {}).pop("slices", []), sram.get(chip, {}).pop("total", [])) for chip in a.chips}
    data["core"] = _packed({k: v for k, v in data.items() if k not in _BY_CHIP})  # (the same whichever are detailed)

    def timing(chip: int) -> str:
        return _packed(_chunk(on_chip[chip], instrs, None, *steps[chip]))

    def details(chip: int) -> str:
        return _packed(_chunk(on_chip[chip], instrs, list(map(detail, on_chip[chip].tolist())),
                              *steps[chip]))

    # (chips packed two at a time, ir.beside: a page of hundreds of chips takes seconds to pack; what details
    # need of the whole program found first, once for both)
    a._view_ops
    say(f"report: packing the timing of {len(a.chips)} chips")
    chunks = dict(zip(a.chips, alternately(timing, a.chips)))
    if detail_chips is not None:
        detailed = sorted(set(detail_chips) & set(a.chips))
        chunks.update(zip(detailed, alternately(details, detailed)))
    else:
        # the page's size: with every chip's timing, then each chip's details added; exact but for `detailed`,
        # reckoned with every chip in it (a few bytes over, never under)
        data["chunks"], data["detailed"] = {str(chip): chunks[chip] for chip in a.chips}, list(a.chips)
        size = len(_shell(a.program)) - len("@@DATA@@") + len(_page_json(data))
        detailed = []
        order = _by_critical_cycles(a)
        with closing(alternately(details, order)) as packed:
            for chip, full in zip(order, packed):
                size += len(full) - len(chunks[chip])
                if detailed and size > PAGE_BYTES:
                    break
                if len(detailed) % 64 == 0:
                    say(f"report: packing the details of chip {chip} ({len(detailed) + 1} of at most "
                        f"{len(a.chips)})")
                chunks[chip], detailed = full, detailed + [chip]
    data["chunks"] = {str(chip): chunks[chip] for chip in a.chips}
    data["detailed"] = sorted(detailed)


def _deltas(xs: list[int]) -> list[int]:
    return [x - y for x, y in zip(xs, [0] + xs[:-1])]


def _grouped(keys: np.ndarray) -> dict[int, np.ndarray]:
    """key -> the positions holding it (ascending), in the order of the keys."""
    order = np.argsort(keys, kind="stable")
    found, firsts = np.unique(keys[order], return_index=True)
    return dict(zip(found.tolist(), np.split(order, firsts[1:])))


def _chunk(indices: np.ndarray, instrs: np.ndarray, details: list[dict] | None, slices: list[np.ndarray],
           total: np.ndarray) -> dict[str, Any]:
    """One chip's instructions (`indices`, ascending, into `instrs`, the page's [row, start, occupancy, latency,
    op, class] per instruction; `details`: theirs) and its SRAM step functions, by column
    (what gzip packs best): every number that grows as a difference from the one before (SRAM extents: from
    the extent before), an instruction's producers as differences from its own index, each value's name and
    type once (`values`, `types`), and each attribute once (`attr_table`); the rest as the page's `instrs`
    and `details` have it; without `details`, the instructions' timing and the chip's SRAM total alone (no
    slice's). The page's `unpackPart` is the inverse."""
    values: dict[str, int] = {}
    value_types: list[int] = []
    types: dict[str, int] = {}
    attrs: dict[tuple[str, str], int] = {}  # each (name, value) of an attribute once

    def value(name: str, type_: str | None = None) -> int:
        j = values.setdefault(name, len(values))
        if j == len(value_types):
            value_types.append(-1)
        if type_ is not None and value_types[j] < 0:
            value_types[j] = types.setdefault(type_, len(types))
        return j

    def steps(flat: np.ndarray) -> list[list[int]]:
        return [np.diff(flat[0::2], prepend=0).tolist(), np.diff(flat[1::2], prepend=0).tolist()]

    def extents(per_value: list[list[list[int]]]) -> list[list[int]]:
        """Each value's extents [slice, word, words] flat, each as differences from the extent before."""
        out = []
        for ext in per_value:
            flat = list(chain.from_iterable(ext))
            out.append(list(map(sub, flat, chain((0, 0, 0), flat))))
        return out

    row, start, occ, lat, op, cls = instrs[indices].T
    timing = {
        "i": np.diff(indices, prepend=0).tolist(),
        "row": row.tolist(), "start": np.diff(start, prepend=0).tolist(), "occ": occ.tolist(),
        "lat": lat.tolist(), "op": op.tolist(), "cls": cls.tolist(),
        "total": steps(total),
    }
    if details is None:
        return timing
    det = details
    operands = []
    for i, d in zip(indices.tolist(), det):
        row = []
        for o in d["operands"]:
            entry = [value(o["name"], o["type"]), KINDS.index(o.get("kind", "sram")),
                     [i - p for p in o.get("producers", ())]]
            if o.get("views"):
                entry += [[value(v) for v in o["views"]], [value(v) for v in o["sources"]]]
            row.append(entry)
        operands.append(row)
    results = [[value(name, type_) for name, type_ in d["results"]] for d in det]
    return {
        **timing,
        "slices": [steps(s) for s in slices],
        "k": _deltas([d["k"] for d in det]),
        "values": list(values), "value_types": value_types, "types": list(types),
        "results": results, "operands": operands,
        "out": [extents(d["out"]) for d in det], "reads": [extents(d["reads"]) for d in det],
        "streams": [d["streams"] for d in det],
        "attrs": [[j, [attrs.setdefault(kv, len(attrs)) for kv in d["attrs"].items()]] for j, d in enumerate(det)
                  if "attrs" in d],
        "attr_table": list(attrs),
    }


def _pieces(a: Analysis) -> dict[str, Any] | None:
    """The layer templates the program was stamped from (ir.pieces), each drawn once in the timeline with its
    repetitions marked: per template [template, instructions, pieces]; per piece and chip it runs on
    [template, piece, chip, first issue, last end]. None: a program without pieces."""
    pieces = a.program.module.pieces
    if not pieces:
        return None
    size: dict[int, int] = {}
    count: Counter = Counter()
    for piece in pieces:
        size.setdefault(piece.template, len(piece.ops))
        count[piece.template] += 1
    # per instruction in a piece: its piece, chip, issue and end; then per (piece, chip) the first and the last
    piece_of = np.full(len(a.program.module.ops), -1, np.int64)
    piece_of[np.fromiter(chain.from_iterable(p.ops for p in pieces), np.int64)] = \
        np.repeat(np.arange(len(pieces)), [len(p.ops) for p in pieces])
    chip, start, end = a.chip, a.start, a.end
    piece = piece_of[a.k]
    rows = np.flatnonzero(piece >= 0)  # the instructions in pieces, by piece and chip
    rows = rows[np.lexsort((chip[rows], piece[rows]))]
    piece, chip, start, end = piece[rows], chip[rows], start[rows], end[rows]
    spans = np.zeros((0, 5), np.int64)
    if len(piece):
        firsts = np.concatenate([[0], np.flatnonzero((np.diff(piece) != 0) | (np.diff(chip) != 0)) + 1])
        template = np.array([p.template for p in pieces], np.int64)
        spans = np.stack([template[piece[firsts]], piece[firsts], chip[firsts], np.minimum.reduceat(start, firsts),
                          np.maximum.reduceat(end, firsts)], axis=1)
    return {"templates": [[t, size[t], count[t]] for t in sorted(count)], "spans": spans.tolist()}


def _label(ins: Instr) -> str:
    """An instruction as the interpreter names it: its first result and its op."""
    return (f"%{ins.op.results[0].name} = " if ins.op.results else "") + ins.op.name


def _why(a: Analysis, st: CriticalStep, same_unit: np.ndarray) -> list | None:
    """What a critical step waited for after its operand had landed: another operand
    landing later ["operand", name, producer, cycle], its unit busy ["unit", None,
    instruction, cycle], or something else (ports, streams, an MXM plane) ["other"].
    `same_unit`: the instructions on its instruction's unit."""
    if st.wait <= 0 or st.producer is None:
        return None
    i, start = st.instr, int(a.start[st.instr])
    lands = a.land
    late = [(int(lands[p]), p, v.name) for v, prods in zip(a.facts.scheduled[i].op.operands, a.producers[i])
            for p in prods if st.ready < lands[p] <= start]
    if late:
        land, p, name = max(late)
        return ["operand", name, p, land]
    ends = a.end[same_unit]
    busy = (same_unit != i) & (st.ready < ends) & (ends <= start)
    if busy.any():
        end, o = max(zip(ends[busy].tolist(), same_unit[busy].tolist()))
        return ["unit", None, o, end]
    return ["other", None, None, None]


OVERVIEW_BINS = 240  # time columns of the chip x time overview


def overview(a: Analysis, classes: list[str], counts: Mapping[str, int], partition: str, stats: Stats
             ) -> dict[str, Any]:
    """The picture at a glance, sized by chips and not by instructions: for each chip and each of
    OVERVIEW_BINS spans of time, the unit class busiest relative to its instances there (what binds the
    chip) and that busy fraction (0-100); the stages and tensor-parallel groups of a `tp=T,pp=P` layout;
    the critical path's (chip, cycle) steps; the bytes and busy cycles between each pair of chips, and the
    hottest link directions."""
    import numpy as np

    from .trace import transfers_of

    bins = max(1, min(OVERVIEW_BINS, a.cycles))
    edges = np.linspace(0, a.cycles, bins + 1)
    n_chips = max(a.chips) + 1
    frac = np.zeros((n_chips, len(classes), bins))
    class_of = np.fromiter((classes.index(c) if c in classes else -1 for c in a.cls), np.int64, len(a.cls))
    shown = np.flatnonzero(class_of >= 0)
    starts_of, ends_of = a.start.astype(np.float64), a.end.astype(np.float64)
    for key, group in _grouped(a.chip[shown] * len(classes) + class_of[shown]).items():
        # busy cycles before each edge, from sorted starts and ends
        chip, c = divmod(key, len(classes))
        starts, ends = np.sort(starts_of[shown[group]]), np.sort(ends_of[shown[group]])
        def before(t, sorted_t):
            n = np.searchsorted(sorted_t, t, side="left")
            prefix = np.concatenate(([0.0], np.cumsum(sorted_t)))
            return n * t - prefix[n]
        busy = before(edges, starts) - before(edges, ends)
        frac[chip, c] = np.diff(busy) / (np.diff(edges) * max(1, counts.get(classes[c], 1)))
    dominant = frac.argmax(axis=1)
    level = np.rint(np.clip(frac.max(axis=1), 0, 1) * 100).astype(int)
    tp, pp = _layout(partition, n_chips)
    pairs: dict[tuple[int, int], list[int]] = {}
    for t in transfers_of(a.program):
        pair = pairs.setdefault((t.src_chip, t.dst_chip), [0, 0])
        pair[0] += t.bytes
        pair[1] += t.end - t.start
    hot = sorted(stats.links, key=lambda x: (-x.busy, x.name))[:10]
    return {
        "bins": bins, "cycles": a.cycles,
        "focus": _focus(a),
        "chips": [{"chip": chip, "cls": dominant[chip].tolist(), "busy": level[chip].tolist()} for chip in a.chips],
        "stages": [[s * tp, min(n_chips, (s + 1) * tp) - 1] for s in range(pp)] if tp else [],
        "tp": tp, "pp": pp,
        "critical": [[int(a.chip[st.instr]), int(a.start[st.instr]), int(a.start[st.instr] + a.lat[st.instr])]
                     for st in a.critical],
        "pairs": [[src, dst, b, busy] for (src, dst), (b, busy) in sorted(pairs.items())],
        "hot": [{"link": x.name, "bytes": x.bytes, "busy": x.busy, "util": x.busy / a.cycles if a.cycles else 0.0}
                for x in hot if x.busy],
    }


def _by_critical_cycles(a: Analysis) -> list[int]:
    """The chips, those the critical path spends the most cycles on first (then by number)."""
    spent: Counter = Counter()
    for st in a.critical:
        spent[int(a.chip[st.instr])] += int(a.lat[st.instr])
    return sorted(a.chips, key=lambda chip: (-spent[chip], chip))


def _focus(a: Analysis) -> int:
    """The chip a many-chip page shows first: the one the critical path spends the most cycles on."""
    return _by_critical_cycles(a)[0]


def _layout(partition: str, chips: int) -> tuple[int, int]:
    """(T, P) of a `tp=T,pp=P[,...]` partition; (0, 0) for any other."""
    fields = dict(part.partition("=")[::2] for part in partition.split(","))
    if "tp" in fields or "pp" in fields:
        try:
            tp, pp = int(fields.get("tp", 1)), int(fields.get("pp", 1))
        except ValueError:
            return 0, 0
        return (tp, pp) if tp * pp == chips else (0, 0)
    return 0, 0


def _links(stats: Stats, cycles: int, machine) -> dict[str, Any]:
    """Chip-to-chip traffic, as the interpreter counts it: per link direction (named by its sender,
    "c0.l3"), the transfers, bytes and busy cycles of every hop over it."""
    rows = [{"chip": int(link.name[1:].split(".")[0]), "link": link.name, "transfers": link.transfers,
             "bytes": link.bytes, "busy": link.busy, "util": link.busy / cycles if cycles else 0.0}
            for link in stats.links]
    return {"used": bool(rows), "rows": rows, "links_per_chip": machine.c2c.links}


def _run(result: Result | None) -> dict[str, Any] | None:
    if result is None:
        return None
    import numpy as np

    outs = []
    for name in sorted(result.outputs):
        x = np.asarray(result.outputs[name])
        row = {"name": name, "dtype": str(x.dtype), "shape": list(x.shape)}
        if x.size and x.dtype.kind in "fiub":
            xf = x.astype(np.float64)
            finite = np.isfinite(xf)
            row.update({"min": float(xf[finite].min()) if finite.any() else None,
                        "max": float(xf[finite].max()) if finite.any() else None,
                        "nonfinite": int((~finite).sum())})
        outs.append(row)
    return {"outputs": outs, "hazards": [str(h) for h in result.hazards[:50]],
            "hazard_count": len(result.hazards), "trace_events": len(result.trace)}


def _json_for_script(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    # inside <script>: no "</script>", no "<!--"; these only occur inside JSON strings
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _class_css() -> str:
    """Each unit class's colour (ir.machine_ops.UNIT_CLASSES), for timeline bars and legend swatches."""
    return "".join(f".c-{c.name} {{ fill: {c.colour}; }} i.c-{c.name} {{ background: {c.colour}; }}\n"
                   for c in mo.UNIT_CLASSES)


def render_html(program: Program, run_result: Result | None = None, progress=None,
                detail_chips: Sequence[int] | None = None) -> str:
    """The report page of `program` (and of a run of it, when given): one offline HTML file; `progress` and
    `detail_chips` as report_data's."""
    data = report_data(program, run_result, progress, detail_chips)
    return _shell(program).replace("@@DATA@@", _page_json(data))


def _page_json(data: dict[str, Any]) -> str:
    """The page's data as its script reads it: as it is, or, when packed by chip (_pack_by_chip), its packed
    `core` (all but the chunks and the chips they detail), the chunks and those chips."""
    if not data.get("chunks"):
        return _json_for_script(data)
    return _json_for_script({k: data[k] for k in _BY_CHIP})


_BY_CHIP = ("core", "chunks", "detailed")  # what a page packed by chip holds: its core packed, the chunks, the chips
                                          # they detail (the rest of the data: that core)


def _packed(part: Any) -> str:
    """`part` as JSON, gzip-compressed (the same bytes every time), in base64: what the page's inflate reads."""
    import base64
    import gzip

    text = json.dumps(part, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
    return base64.b64encode(gzip.compress(text, 6, mtime=0)).decode()


def _shell(program: Program) -> str:
    """The page without its data (in its place, "@@DATA@@")."""
    title = f"lpuc report: {program.module.name} on {program.machine.name}"
    return (_PAGE.replace("@@TITLE@@", html.escape(title))
            .replace("@@CSS@@", _CSS + _class_css())
            .replace("@@JS@@", _JS))


# --- the page ----------------------------------------------------------------------------

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:">
<title>@@TITLE@@</title>
<style>@@CSS@@</style>
<script>
window.lpucErrors = [];
(function () {
  function note(msg) {
    window.lpucErrors.push(String(msg));
    var el = document.getElementById('lpuc-errors');
    if (el) { el.textContent = window.lpucErrors.join('\\n'); el.hidden = false; }
  }
  window.lpucNote = note;
  window.addEventListener('error', function (e) {
    if (e.target && e.target !== window && (e.target.src || e.target.href)) note('resource failed: ' + (e.target.src || e.target.href));
    else note('error: ' + e.message + ' @' + e.lineno + ':' + e.colno);
  }, true);
  window.addEventListener('unhandledrejection', function (e) { note('unhandled rejection: ' + e.reason); });
  var ce = console.error;
  console.error = function () { note('console.error: ' + Array.prototype.join.call(arguments, ' ')); return ce.apply(console, arguments); };
})();
</script>
</head>
<body data-rendered="0">
<div id="lpuc-errors" class="errors" hidden></div>
<header><h1 id="title"></h1><div id="subtitle" class="muted"></div></header>
<section id="summary" class="cards"></section>
<section id="overview-section" hidden>
  <div class="sechead"><h2>Chips over time</h2><span id="ov-legend" class="legend"></span></div>
  <div class="hint muted">A row per chip, the whole program left to right: each cell takes the colour of the unit class busiest for its instances there (what binds the chip then), darker when busier. Lines part the pipeline stages; the red line is the critical path. Hover for numbers; click a chip to find it in the timeline.</div>
  <div class="plot"><canvas id="overview"></canvas></div>
  <h3>Traffic between chips</h3>
  <div class="hint muted">Bytes sent from the chip of a row to the chip of a column (darker: more; hover for numbers), and the busiest link directions.</div>
  <div class="plot"><canvas id="pairs"></canvas></div>
  <div id="hot"></div>
  <details id="chip-table-box"><summary>Each chip: its instructions, SRAM peak and how busy each unit class kept its instances (the numbers of <code>lpuc run --json</code>'s <code>per_chip</code>); click a row to show the chip</summary><div id="chip-table"></div></details>
</section>
<section id="timeline-section">
  <div class="sechead"><h2>Timeline</h2>
    <div class="toolbar">
      <button id="zoom-fit" title="show the whole program (double-click the plot)">Fit</button>
      <button id="zoom-in" title="zoom in (wheel up, +)">+</button>
      <button id="zoom-out" title="zoom out (wheel down, -)">&minus;</button>
      <button id="zoom-crit" title="zoom to the critical path's last steps">Critical end</button>
      <label id="chip-pick-label" hidden>chip <select id="chip-pick"></select></label>
      <label><input type="checkbox" id="show-crit" checked> highlight critical path</label>
      <label><input type="checkbox" id="show-lat" checked> latency tails</label>
      <span id="legend" class="legend"></span>
    </div>
  </div>
  <div class="hint muted">Wheel to zoom at the cursor, drag to pan, double-click to fit. Hover an instruction for a summary, click it for details. Bars: occupancy (unit busy); lighter tail: until its results land in SRAM.</div>
  <div id="folded" class="hint muted"></div>
  <div id="templates" class="hint muted" hidden></div>
  <div id="view-readout" class="readout"></div>
  <div id="timeline" class="plot"></div>
  <div id="details" class="details"><span class="muted">Click an instruction to see its details here.</span></div>
</section>
<section id="sram-section">
  <div class="sechead"><h2>SRAM occupancy</h2><span id="sram-legend" class="legend"></span></div>
  <div class="hint muted">Live words per slice over time (same time axis as the timeline; wheel and drag work here too). A value holds its words from landing until its last read ends; constants (weights) for the whole run. Top: all slices together.</div>
  <div id="sram" class="plot"></div>
</section>
<section id="links-section"><h2>Link traffic</h2><div id="links"></div></section>
<section id="util-section"><h2>Utilization</h2><div id="util"></div></section>
<section id="crit-section"><h2>Critical path</h2><div id="crit"></div></section>
<section id="run-section" hidden><h2>Run</h2><div id="run"></div></section>
<div id="tooltip" class="tooltip" hidden></div>
<script type="application/json" id="lpuc-data">@@DATA@@</script>
<script>@@JS@@</script>
</body>
</html>
"""

_CSS = """
:root { --fg:#1d2230; --muted:#667085; --line:#d9dde5; --bg:#ffffff; --band:#f6f7f9; --crit:#d62728; }
* { box-sizing: border-box; }
body { margin: 0; padding: 14px 18px 40px; font: 13px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--fg); background: var(--bg); }
h1 { font-size: 19px; margin: 0; }
h2 { font-size: 15px; margin: 0; }
header { display: flex; align-items: baseline; gap: 14px; margin-bottom: 10px; flex-wrap: wrap; }
section { margin: 16px 0 0; }
.muted { color: var(--muted); }
.hint { font-size: 12px; margin: 2px 0 4px; }
.errors { background: #fde8e8; color: #8a1c1c; border: 1px solid #f1a9a9; padding: 6px 10px; white-space: pre-wrap; font-family: monospace; margin-bottom: 8px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 8px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 6px 10px; background: #fbfcfd; }
.card .k { font-size: 11px; color: var(--muted); text-transform: uppercase; letter-spacing: .03em; }
.card .v { font-size: 18px; font-weight: 600; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.card .v.long { font-size: 13px; line-height: 16px; min-height: 25px; white-space: normal; overflow-wrap: anywhere; }
.card .s { font-size: 11px; color: var(--muted); white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.sechead { display: flex; align-items: center; gap: 16px; flex-wrap: wrap; }
.toolbar { display: flex; align-items: center; gap: 6px; flex-wrap: wrap; }
.toolbar button { font: inherit; padding: 1px 9px; border: 1px solid #b9c0cc; border-radius: 4px; background: #f3f5f8; cursor: pointer; }
.toolbar button:hover { background: #e6eaf0; }
.toolbar label { user-select: none; }
.legend { display: inline-flex; gap: 10px; align-items: center; font-size: 12px; }
.legend i { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 3px; vertical-align: -1px; }
.readout { font-size: 12px; color: var(--muted); height: 16px; font-variant-numeric: tabular-nums; }
.plot { position: relative; border: 1px solid var(--line); border-radius: 4px; overflow: hidden; user-select: none; cursor: grab; }
.plot.dragging { cursor: grabbing; }
.plot svg, .plot canvas { display: block; }
svg text { font-size: 11px; fill: #3b4252; }
svg .axis text { fill: #667085; font-size: 10px; }
svg .axis line { stroke: #e3e6eb; }
svg .band { fill: var(--band); }
svg .chiphead { fill: #eef1f6; }
svg .piece { fill: #c7d2fe; stroke: #6366f1; stroke-width: 0.5; }
svg .piece.first { fill: #a5b4fc; }
svg .piecelabel { font-size: 10px; fill: #312e81; pointer-events: none; }
#templates a { cursor: pointer; }
rect.instr { stroke: rgba(0,0,0,.25); stroke-width: .5; }
rect.instr:hover { stroke: #000; stroke-width: 1.5; }
rect.instr.sel { stroke: #000; stroke-width: 2; }
path.lat { opacity: .3; }
.nolat path.lat { display: none; }
.showcrit rect.instr.crit { stroke: var(--crit); stroke-width: 2; }
.showcrit rect.instr:not(.crit) { opacity: .55; }
path.critlink { fill: none; stroke: var(--crit); stroke-width: 1.2; stroke-dasharray: 3 2; display: none; }
.showcrit path.critlink { display: inline; }
.c-other { fill: #9c755f; } i.c-other { background: #9c755f; }
i.crit { background: #fff; border: 2px solid var(--crit); }
.details { margin-top: 6px; border: 1px solid var(--line); border-radius: 4px; padding: 6px 10px; min-height: 34px; background: #fbfcfd; font-size: 12px; }
.details table, .tooltip table { border-collapse: collapse; }
.details td, .tooltip td { padding: 1px 8px 1px 0; vertical-align: top; }
.details td.k, .tooltip td.k { color: var(--muted); white-space: nowrap; }
.mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px; }
.tooltip { position: fixed; z-index: 10; max-width: 560px; background: #fff; border: 1px solid #9aa3b2; border-radius: 5px; padding: 6px 9px; box-shadow: 0 3px 12px rgba(0,0,0,.16); font-size: 12px; pointer-events: none; }
table.grid { border-collapse: collapse; font-size: 12px; font-variant-numeric: tabular-nums; }
table.grid th, table.grid td { border-bottom: 1px solid #eceef2; padding: 2px 10px 2px 4px; text-align: right; }
table.grid th { color: var(--muted); font-weight: 600; text-align: right; }
table.grid th:first-child, table.grid td:first-child, table.grid td.l, table.grid th.l { text-align: left; }
table.grid tr.cls td { font-weight: 600; background: #f6f7f9; }
table.grid tr.click { cursor: pointer; } table.grid tr.click:hover td { background: #eef3fb; }
.bar { display: inline-block; width: 120px; height: 9px; background: #eceef2; border-radius: 2px; vertical-align: middle; }
.bar b { display: block; height: 100%; border-radius: 2px; background: #4c78a8; }
.util-wrap { display: flex; gap: 28px; flex-wrap: wrap; align-items: flex-start; }
details summary { cursor: pointer; margin: 6px 0; }
.note { padding: 8px 10px; border: 1px dashed #c7ccd6; border-radius: 4px; background: #fafbfc; display: inline-block; }
"""

_JS = r"""
(function () {
'use strict';
// A page of many chips carries its data gzip-compressed (base64): the page's `core` and a chunk per chip.
function inflate(b64) {  // -> a promise of the JSON inside
  var bin = atob(b64), bytes = new Uint8Array(bin.length);
  for (var k = 0; k < bin.length; k++) bytes[k] = bin.charCodeAt(k);
  return new Response(new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'))).json();
}
var RAW = JSON.parse(document.getElementById('lpuc-data').textContent);
if (RAW.core) inflate(RAW.core).then(function (core) {
    core.chunks = RAW.chunks; core.detailed = RAW.detailed; start(core); })
  .catch(function (e) { window.lpucNote('the page\'s data: ' + e); });
else start(RAW);

function start(D) {
var S = D.summary;
function $(id) { return document.getElementById(id); }
function esc(s) { return String(s).replace(/[&<>"']/g, function (c) { return {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]; }); }
function num(n) { return n === null || n === undefined ? '\u2014' : Math.round(n).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ','); }
function fix(x, d) { return x === null || x === undefined ? '\u2014' : x.toFixed(d); }
function pct(x) { return x === null || x === undefined ? '\u2014' : (100 * x).toFixed(x < 0.001 && x > 0 ? 3 : 1) + '%'; }
function bytes(b) {
  if (b === null || b === undefined) return '\u2014';
  var u = ['B', 'KiB', 'MiB', 'GiB'], i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return (i ? b.toFixed(2) : b) + ' ' + u[i];
}
function us(c) { return c / S.clock_mhz; }
var CLASSES = D.classes;
function clsName(j) { var c = CLASSES[j]; return D.styled.indexOf(c) >= 0 ? c : 'other'; }

// ---- summary
$('title').textContent = S.model;
$('subtitle').textContent = 'lpuc ' + (S.lpuc_version || '') + ' report \u00b7 ' + S.machine + ' @ ' + S.clock_mhz + ' MHz \u00b7 ' +
  (S.measured ? 'statistics measured by the interpreter' : 'statistics from the schedule');
document.title = 'lpuc: ' + S.model + ' on ' + S.machine;
var cards = [
  ['Model', S.model, (S.decode ? 'decode step' : 'one pass') + ', ' + Object.keys(S.inputs).length + ' inputs, ' + Object.keys(S.outputs).length + ' outputs'],
  ['Machine', S.machine, S.clock_mhz + ' MHz'],
  ['Cycles', num(S.cycles), 'until the last result lands'],
  ['Latency', fix(S.latency_us, 3) + ' \u00b5s', 'at ' + S.clock_mhz + ' MHz'],
  ['Lower bound', num(S.lower_bound_cycles), S.bound ? 'bound: ' + S.bound : 'not recorded'],
  ['Gap', S.gap === null ? '\u2014' : pct(S.gap), 'cycles / lower bound \u2212 1'],
  ['Chips', String(S.chips), S.chips === 1 ? 'no chip-to-chip links' : ''],
  ['Instructions', num(S.instructions), 'of ' + num(S.ops) + ' ops (with views, constants)'],
  ['SRAM peak', bytes(S.sram_peak_bytes), pct(S.sram_peak_bytes / S.sram_capacity_bytes) + ' of ' + bytes(S.sram_capacity_bytes)],
  ['Tokens/s', S.tokens_per_s ? num(S.tokens_per_s) : '\u2014', S.decode ? 'decode step, batch ' + S.batch : 'not a decode step']
];
$('summary').innerHTML = cards.map(function (c) {
  return '<div class="card"><div class="k">' + esc(c[0]) + '</div><div class="v' + (c[1].length > 13 ? ' long' : '') + '" title="' + esc(c[1]) + '">' + esc(c[1]) +
    '</div><div class="s">' + esc(c[2]) + '</div></div>';
}).join('');

// ---- shared time view
var N = S.instructions, CYC = Math.max(S.cycles, 1);
var LABEL = 92, PADR = 12;
var view = { t0: 0, t1: CYC };
var plotW = 800;
function measure() { plotW = Math.max(200, $('timeline').clientWidth - LABEL - PADR); }
function X(t) { return LABEL + (t - view.t0) / (view.t1 - view.t0) * plotW; }
function T(x) { return view.t0 + (x - LABEL) / plotW * (view.t1 - view.t0); }
var redraws = [];
var pending = false;
function redraw() { if (pending) return; pending = true; requestAnimationFrame(function () { pending = false; drawAll(); }); }
function drawAll() { for (var j = 0; j < redraws.length; j++) redraws[j](); readout(); }
function setView(t0, t1) {
  var span = Math.max(Math.min(t1 - t0, CYC * 1.1), Math.min(20, CYC));
  var mid = (t0 + t1) / 2;
  t0 = mid - span / 2; t1 = mid + span / 2;
  var lo = -CYC * 0.05, hi = CYC * 1.05;
  if (t0 < lo) { t1 += lo - t0; t0 = lo; }
  if (t1 > hi) { t0 -= t1 - hi; t1 = hi; }
  view.t0 = t0; view.t1 = t1; redraw();
}
function fit() { setView(0, CYC); }
function zoomAt(t, f) { setView(t - (t - view.t0) * f, t + (view.t1 - t) * f); }
function readout(t) {
  var s = 'view: cycles ' + num(Math.max(0, view.t0)) + ' \u2013 ' + num(Math.min(CYC, view.t1)) + ' of ' + num(CYC);
  if (t !== undefined && t >= 0 && t <= CYC) s += ' \u00b7 cursor: cycle ' + num(t) + ' (' + fix(us(t), 3) + ' \u00b5s)';
  $('view-readout').textContent = s;
}
function ticks() {
  var span = view.t1 - view.t0, raw = span / Math.max(2, plotW / 90), p = Math.pow(10, Math.floor(Math.log10(raw)));
  var step = [1, 2, 5, 10].map(function (m) { return m * p; }).filter(function (s) { return s >= raw; })[0] || 10 * p;
  step = Math.max(1, step);
  var out = [];
  for (var t = Math.ceil(Math.max(0, view.t0) / step) * step; t <= Math.min(CYC, view.t1); t += step) out.push(t);
  return out;
}
function tickLabel(t) { return t >= 10000 && t % 1000 === 0 ? (t / 1000) + 'k' : num(t); }
function interact(el, onMove, onClick) {
  var drag = null;
  el.addEventListener('wheel', function (e) {
    e.preventDefault();
    var r = el.getBoundingClientRect(), x = e.clientX - r.left;
    if (Math.abs(e.deltaX) > Math.abs(e.deltaY)) { var d = e.deltaX / plotW * (view.t1 - view.t0); setView(view.t0 + d, view.t1 + d); return; }
    zoomAt(T(Math.max(LABEL, x)), Math.exp(e.deltaY * 0.0015));
  }, { passive: false });
  el.addEventListener('mousedown', function (e) { if (e.button === 0) { drag = { x: e.clientX, t0: view.t0, t1: view.t1, moved: false }; } });
  window.addEventListener('mousemove', function (e) {
    if (drag) {
      var dx = e.clientX - drag.x;
      if (Math.abs(dx) > 3) { drag.moved = true; el.classList.add('dragging'); }
      if (drag.moved) { var d = -dx / plotW * (drag.t1 - drag.t0); setView(drag.t0 + d, drag.t1 + d); }
    }
  });
  window.addEventListener('mouseup', function (e) {
    if (drag && !drag.moved && onClick && el.contains(e.target)) onClick(e);
    drag = null; el.classList.remove('dragging');
  });
  el.addEventListener('mousemove', function (e) {
    var r = el.getBoundingClientRect(), x = e.clientX - r.left;
    readout(x >= LABEL ? Math.round(T(x)) : undefined);
    if (onMove) onMove(e, x, e.clientY - r.top);
  });
  el.addEventListener('mouseleave', function () { readout(); if (onMove) onMove(null); });
  el.addEventListener('dblclick', function (e) { e.preventDefault(); fit(); });
}

// ---- timeline
var ROWH = 15, ROWGAP = 3, AXISH = 20, CHIPH = 16;
var rows = D.rows, multiChip = S.chips > 1;
// On more than ALL_CHIPS chips the timeline and SRAM show one chip at a time (the chip picker, or a click
// in the overview): a page of hundreds of chips would otherwise draw every instruction of every chip.
// The address may name what to show first: #chip=C (beyond ALL_CHIPS chips) and #i=N (an instruction,
// selected and zoomed to; on a chip still packed, it needs its chip).
var HASH = {};
location.hash.replace(/^#/, '').split('&').forEach(function (kv) {
  var m = /^(chip|i)=(\d+)$/.exec(kv); if (m) HASH[m[1]] = +m[2];
});
var ALL_CHIPS = D.one_chip_beyond, shown = null;
if (S.chips > ALL_CHIPS) shown = D.overview.chips.some(function (c) { return c.chip === HASH.chip; }) ? HASH.chip : D.overview.focus;
function visibleChip(chip) { return shown === null || chip === shown; }
// A program stamped from layer templates (D.pieces) gets a band over each chip's rows: each piece there,
// labelled with its template (darker: the template's first piece, the one scheduled; the others repeat it).
var PIECES = D.pieces, heads = multiChip || !!PIECES, headY = {};
var rowY = [], TLH = 0, shownIdx = [];
var unpacked = {}, waiting = {};  // chips unpacked (unpackPart), and what waits for chips on their way
function layoutRows() {
  var y = AXISH, last = null;
  rowY = [];
  for (var r = 0; r < rows.length; r++) {
    if (!visibleChip(rows[r].chip)) { rowY.push(undefined); continue; }
    if (heads && rows[r].chip !== last) { y += CHIPH; last = rows[r].chip; headY[last] = y - CHIPH; }
    rowY.push(y); y += ROWH + ROWGAP;
  }
  TLH = y + 4;
  if (D.chunks) { shownIdx = unpacked[shown] ? unpacked[shown].index : []; return; }
  shownIdx = [];
  for (var i = 0; i < N; i++) if (rowY[D.instrs[i][0]] !== undefined) shownIdx.push(i);
}
layoutRows();
var critSet = {};
D.critical.chain.forEach(function (i) { critSet[i] = true; });
var legend = CLASSES.filter(function (c) { return D.rows.some(function (r) { return r.cls === c; }); }).map(function (c, j) {
  return '<span><i class="c-' + clsName(CLASSES.indexOf(c)) + '"></i>' + esc(c) + '</span>';
}).join('') + '<span><i class="crit"></i>critical path</span>';
$('legend').innerHTML = legend;
var foldedText = Object.keys(D.folded).map(function (c) { return num(D.folded[c]) + ' ' + c; });
$('folded').textContent = foldedText.length ? 'Not shown: unit instances with no work (' + foldedText.join(', ') + ').' : '';

function buildTimeline() {
  measure();
  var W = LABEL + plotW + PADR, h = [];
  h.push('<svg id="tl" width="' + W + '" height="' + TLH + '" class="showcrit">');
  h.push('<defs><clipPath id="tlclip"><rect x="' + LABEL + '" y="0" width="' + plotW + '" height="' + TLH + '"></rect></clipPath></defs>');
  h.push('<g class="bands">');
  var lastChip = null;
  for (var r = 0; r < rows.length; r++) {
    var row = rows[r];
    if (rowY[r] === undefined) continue;
    if (heads && row.chip !== lastChip) {
      h.push('<rect class="chiphead" x="0" y="' + (rowY[r] - CHIPH) + '" width="' + W + '" height="' + (CHIPH - 1) + '"></rect>');
      h.push('<text x="4" y="' + (rowY[r] - 4) + '" font-weight="600">' + (multiChip ? 'chip ' + row.chip : 'pieces') + '</text>');
      lastChip = row.chip;
    }
    if (r % 2 === 0) h.push('<rect class="band" x="0" y="' + (rowY[r] - ROWGAP / 2) + '" width="' + W + '" height="' + (ROWH + ROWGAP) + '"></rect>');
    h.push('<text x="6" y="' + (rowY[r] + ROWH - 3) + '">' + esc(row.unit) + '</text>');
    h.push('<text x="' + (LABEL - 6) + '" y="' + (rowY[r] + ROWH - 3) + '" text-anchor="end" class="muted" style="fill:#98a2b3;font-size:10px">' +
      (row.n ? pct(row.util) : '') + '</text>');
  }
  h.push('</g><g class="axis" id="axis"></g>');
  h.push('<g clip-path="url(#tlclip)"><g id="lats">');
  for (var j = 0; j < CLASSES.length; j++) h.push('<path class="lat c-' + clsName(j) + '"></path>');
  h.push('</g><g id="instrs">');
  var k = plotW / (view.t1 - view.t0);
  for (var j = 0; j < shownIdx.length; j++) {
    var i = shownIdx[j], a = D.instrs[i], g = geom(a, k);
    h.push('<rect class="instr c-' + clsName(a[5]) + (critSet[i] ? ' crit' : '') + '" data-i="' + i + '" x="' + g[0] + '" width="' + g[1] +
      '" y="' + rowY[a[0]] + '" height="' + ROWH + '"></rect>');
  }
  h.push('</g><g id="pieces"></g><path class="critlink" id="critlink"></path></g></svg>');
  $('timeline').innerHTML = h.join('');
  drawn = true;
}
function geom(a, k) {  // an instruction's bar: x and width (at least 1.5 px)
  var x0 = LABEL + (a[1] - view.t0) * k;
  return [x0.toFixed(1), Math.max(a[2] * k, 1.5).toFixed(1)];
}
var instrEls = [], drawn = false;
function drawTimeline() {
  var axis = [], tk = ticks();
  for (var j = 0; j < tk.length; j++) {
    var x = X(tk[j]).toFixed(1);
    axis.push('<line x1="' + x + '" x2="' + x + '" y1="' + (AXISH - 4) + '" y2="' + TLH + '"></line><text x="' + x + '" y="' + (AXISH - 7) + '" text-anchor="middle">' + tickLabel(tk[j]) + '</text>');
  }
  $('axis').innerHTML = axis.join('');
  var k = plotW / (view.t1 - view.t0), i, a;
  if (!drawn) {  // the bars were drawn by buildTimeline for this view
    for (var j = 0; j < shownIdx.length; j++) {
      i = shownIdx[j];
      var g = geom(D.instrs[i], k), el = instrEls[i];
      el.setAttribute('x', g[0]); el.setAttribute('width', g[1]);
    }
  }
  drawn = false;
  var tails = CLASSES.map(function () { return []; }), lo = LABEL - 2, hi = LABEL + plotW + 2;
  for (var m = 0; m < shownIdx.length; m++) {
    i = shownIdx[m]; a = D.instrs[i];
    var x1 = Math.max(LABEL + (a[1] - view.t0) * k + Math.max(a[2] * k, 1.5), lo), x2 = Math.min(LABEL + (a[1] + a[3] - view.t0) * k, hi);
    if (x2 - x1 >= 0.2 && a[5] >= 0) tails[a[5]].push('M' + x1.toFixed(1) + ' ' + (rowY[a[0]] + 4) + 'H' + x2.toFixed(1) + 'v' + (ROWH - 8) + 'H' + x1.toFixed(1) + 'z');
  }
  var lp = $('lats').children;
  for (i = 0; i < lp.length; i++) lp[i].setAttribute('d', tails[i].join(''));
  var chain = D.critical.steps, p = [];
  for (j = 1; j < chain.length; j++) {
    var pi = chain[j][1], ci = chain[j][0], pa = D.instrs[pi], ca = D.instrs[ci];
    if (rowY[pa[0]] === undefined || rowY[ca[0]] === undefined) continue;  // a step on a chip not shown
    var x1 = LABEL + (pa[1] + pa[3] - view.t0) * k, y1 = rowY[pa[0]] + ROWH / 2;
    var x2 = LABEL + (ca[1] - view.t0) * k, y2 = rowY[ca[0]] + ROWH / 2;
    p.push('M' + x1.toFixed(1) + ' ' + y1 + 'L' + x2.toFixed(1) + ' ' + y2);
  }
  $('critlink').setAttribute('d', p.join(''));
  if (PIECES) drawPieces(k);
}
function drawPieces(k) {
  var out = [], firstOf = {};
  PIECES.spans.forEach(function (sp) { if (firstOf[sp[0]] === undefined) firstOf[sp[0]] = sp[1]; });
  PIECES.spans.forEach(function (sp, j) {
    var y = headY[sp[2]];
    if (y === undefined || !visibleChip(sp[2])) return;
    var x1 = LABEL + (sp[3] - view.t0) * k, x2 = LABEL + (sp[4] - view.t0) * k;
    if (x2 < LABEL || x1 > LABEL + plotW) return;
    out.push('<rect class="piece' + (firstOf[sp[0]] === sp[1] ? ' first' : '') + '" data-span="' + j + '" x="' + x1.toFixed(1) +
      '" y="' + (y + 2) + '" width="' + Math.max(1, x2 - x1).toFixed(1) + '" height="' + (CHIPH - 5) + '"></rect>');
    if (x2 - x1 > 24) out.push('<text class="piecelabel" x="' + (Math.max(x1, LABEL) + 3).toFixed(1) + '" y="' + (y + CHIPH - 5) + '">T' + sp[0] + '</text>');
  });
  $('pieces').innerHTML = out.join('');
}
function pieceTip(j) {
  var sp = PIECES.spans[j], t = PIECES.templates.filter(function (x) { return x[0] === sp[0]; })[0];
  return 'piece ' + sp[1] + ': <b>template ' + sp[0] + '</b> (' + num(t[1]) + ' instructions, ' + t[2] + ' pieces)<br>' +
    'on chip ' + sp[2] + ', cycles ' + num(sp[3]) + '\u2013' + num(sp[4]);
}
if (PIECES) {
  $('templates').hidden = false;
  $('templates').innerHTML = 'Layer templates: scheduled once each, then stamped at every repeat (the band over each chip: a piece, darker where its template was scheduled). ' +
    PIECES.templates.map(function (t) {
      return '<a data-t="' + t[0] + '">T' + t[0] + '</a> \u00d7' + t[2] + ' (' + num(t[1]) + ' instructions)';
    }).join(', ') + '.';
  $('templates').addEventListener('click', function (e) {  // show the template's first piece
    var a = e.target.closest('a[data-t]'); if (!a) return;
    var sp = PIECES.spans.filter(function (x) { return x[0] === +a.getAttribute('data-t'); })[0];
    function there() { setView(sp[3] - (sp[4] - sp[3]) * 0.05, sp[4] + (sp[4] - sp[3]) * 0.05); }
    if (visibleChip(sp[2])) there(); else showChip(sp[2], there);
  });
}

// ---- details
// Beyond D.one_chip_beyond chips, a chip's instructions, their details and its SRAM steps come packed
// (D.chunks: gzip, base64, by column: report._chunk), unpacked when the chip is shown or one of its
// instructions is looked at; until then D.instrs holds only the critical path's instructions.
var critOf = {};
D.critical.chain.forEach(function (i, j) { critOf[i] = j; });
function chipOf(i) { return rows[D.instrs[i][0]].chip; }
function sums(d) { var out = [], s = 0; for (var j = 0; j < d.length; j++) out.push(s += d[j]); return out; }
function unSteps(p) {  // [time differences, level differences] -> [t0, l0, t1, l1, ...]
  var t = sums(p[0]), l = sums(p[1]), out = [];
  for (var j = 0; j < t.length; j++) out.push(t[j], l[j]);
  return out;
}
function unpackPart(p) {  // the inverse of report._chunk: instructions into D.instrs, details as D.details has them
  var index = sums(p.i), start = sums(p.start), k = sums(p.k || []), at = {}, details = [], attrs = {};
  (p.attrs || []).forEach(function (e) {
    var a = {}; e[1].forEach(function (t) { a[p.attr_table[t][0]] = p.attr_table[t][1]; }); attrs[e[0]] = a;
  });
  function extents(flat) {  // [[slice, word, words], ...] from differences with the extent before
    var out = [];
    for (var j = 0; j < flat.length; j += 3) {
      var b = j ? out[out.length - 1] : [0, 0, 0];
      out.push([b[0] + flat[j], b[1] + flat[j + 1], b[2] + flat[j + 2]]);
    }
    return out;
  }
  function name(v) { return p.values[v]; }
  function type(v) { return p.types[p.value_types[v]]; }
  for (var j = 0; j < index.length; j++) {
    var i = index[j];
    at[i] = j;
    D.instrs[i] = [p.row[j], start[j], p.occ[j], p.lat[j], p.op[j], p.cls[j]];
    if (!p.values) continue;  // a chip whose details the page does not hold
    var d = { k: k[j], out: p.out[j].map(extents), reads: p.reads[j].map(extents), streams: p.streams[j],
              results: p.results[j].map(function (v) { return [name(v), type(v)]; }),
              operands: p.operands[j].map(function (e) {
                var o = { name: name(e[0]), type: type(e[0]) };
                if (e[1]) o.kind = D.kinds[e[1]];
                if (e[2].length) o.producers = e[2].map(function (q) { return i - q; });
                if (e.length > 3) { o.views = e[3].map(name); o.sources = e[4].map(name); }
                return o;
              }) };
    if (attrs[j]) d.attrs = attrs[j];
    if (critOf[i] !== undefined) d.crit = critOf[i];
    details.push(d);
  }
  return { index: index, at: at, details: p.values ? details : null, total: unSteps(p.total),
           slices: p.slices ? p.slices.map(unSteps) : null };
}
function unpack(chip, then) {
  if (!D.chunks || unpacked[chip]) { if (then) then(); return; }
  var first = !waiting[chip];
  waiting[chip] = (waiting[chip] || []).concat(then ? [then] : []);
  if (!first) return;  // on its way
  inflate(D.chunks[chip]).then(function (part) {
    unpacked[chip] = unpackPart(part);
    document.body.setAttribute('data-unpacked', Object.keys(unpacked).join(','));
    var calls = waiting[chip]; delete waiting[chip];
    calls.forEach(function (f) { f(); });
  }).catch(function (e) { window.lpucNote('chip ' + chip + ': ' + e); });
}
function det(i) {  // an instruction's details; null while its chip is packed, false when the page has none
  if (D.details) return D.details[i];
  var part = D.instrs[i] && unpacked[chipOf(i)];
  if (!part) return null;
  return part.details ? part.details[part.at[i]] : false;
}
function ranges(chips) {  // [0, 1, 2, 5] -> "0-2, 5"
  var out = [];
  for (var j = 0; j < chips.length; j++) {
    var k = j; while (k + 1 < chips.length && chips[k + 1] === chips[k] + 1) k++;
    out.push(k > j ? chips[j] + '-' + chips[k] : String(chips[j])); j = k;
  }
  return out.join(', ');
}
function label(i) {  // as the interpreter names an instruction: its first result and its op
  var d = det(i);
  if (!d) return (D.labels && D.labels[i]) || D.ops[D.instrs[i][4]];
  return (d.results.length ? '%' + d.results[0][0] + ' = ' : '') + D.ops[D.instrs[i][4]];
}
function ext(list) {
  if (!list || !list.length) return '\u2014';
  var s = list.slice(0, 8).map(function (e) { return 's' + e[0] + ':' + e[1] + '+' + e[2]; }).join(' ');
  return s + (list.length > 8 ? ' \u2026 (' + list.length + ' extents)' : '');
}
function opnd(o) {
  var s = '%' + esc(o.name) + ' <span class="muted">' + esc(o.type) + '</span>';
  var kind = o.kind || 'sram';
  if (kind === 'plane') s += ' <span class="muted">(MXM plane)</span>';
  else if (kind === 'host') s += ' <span class="muted">(host)</span>';
  if (o.views && o.views.length) s += ' <span class="muted">view of</span> ' + o.sources.map(function (n) { return '%' + esc(n); }).join(', ');
  if (o.producers && o.producers.length) s += ' <span class="muted">\u2190 ' + o.producers.map(function (p) {
    var a = D.instrs[p];  // (undefined: on a chip still packed)
    if (!a) return 'instruction ' + p;
    return esc(D.ops[a[4]]) + ' on ' + esc(rows[a[0]].unit) + (multiChip ? ' of chip ' + rows[a[0]].chip : '') + ', lands ' + num(a[1] + a[3]);
  }).join('; ') + '</span>';
  else if (kind === 'sram') s += ' <span class="muted">(SRAM image)</span>';
  return s;
}
function detailHTML(i, full) {
  var a = D.instrs[i], d = det(i), t = [];
  if (d === null) {  // packed: unpack its chip, then show it if it is still the one selected
    unpack(chipOf(i), function () { if (selected === i) $('details').innerHTML = detailHTML(i, true); });
    return '<span class="muted">' + esc(label(i)) + ': unpacking chip ' + chipOf(i) + ' \u2026</span>';
  }
  function row(k, v) { t.push('<tr><td class="k">' + k + '</td><td>' + v + '</td></tr>'); }
  row('instruction', '<b class="mono">' + esc(label(i)) + '</b>');
  row('op', esc(D.ops[a[4]]) + ' <span class="muted">(' + esc(CLASSES[a[5]] || '') + ')</span>');
  row('unit', esc(rows[a[0]].unit) + (multiChip ? ' on chip ' + rows[a[0]].chip : ''));
  row('issue', 'cycle ' + num(a[1]) + ' <span class="muted">(' + fix(us(a[1]), 3) + ' \u00b5s)</span>');
  row('occupancy', num(a[2]) + ' cycles <span class="muted">(unit free at ' + num(a[1] + a[2]) + ')</span>');
  row('latency', num(a[3]) + ' cycles <span class="muted">(results land at ' + num(a[1] + a[3]) + ')</span>');
  if (d === false) {
    row('details', '<span class="muted">This page holds the operands, results and words of chip' + (D.detailed.length > 1 ? 's ' : ' ') +
      esc(ranges(D.detailed)) + ' only. For chip ' + chipOf(i) + '\'s: <span class="mono">lpuc viz PROGRAM.lpu --html REPORT.html --detail-chips ' + chipOf(i) + '</span></span>');
    return '<table>' + t.join('') + '</table>';
  }
  row('results', d.results.map(function (r) { return '%' + esc(r[0]) + ' <span class="muted">' + esc(r[1]) + '</span>'; }).join('<br>'));
  row('operands', d.operands.length ? d.operands.map(opnd).join('<br>') : '\u2014');
  if (full || d.out.length) row('writes', d.out.length ? d.out.map(function (e) { return '<span class="mono">' + ext(e) + '</span>'; }).join('<br>') : '\u2014');
  if (full) row('reads', d.reads.length ? d.reads.map(function (e) { return '<span class="mono">' + ext(e) + '</span>'; }).join('<br>') : '\u2014');
  if (full) row('streams', d.streams.length ? d.streams.join(', ') : '\u2014');
  var ak = Object.keys(d.attrs || {});
  if (ak.length) row('attributes', '<span class="mono">' + ak.map(function (k) { return esc(k) + ' = ' + esc(d.attrs[k]); }).join(', ') + '</span>');
  if (d.crit !== undefined) {
    var st = D.critical.steps[d.crit];
    row('critical path', '<span style="color:var(--crit)">step ' + (d.crit + 1) + ' of ' + D.critical.steps.length + '</span>' +
      (st[1] === null ? ' (first: issued at ' + num(st[4]) + ')' : ' \u2014 operand %' + esc(st[2]) + ' landed at ' + num(st[3]) +
        ', issued ' + num(st[4]) + ' cycles later'));
  }
  row('index', 'instruction ' + i + ', op ' + d.k + ' of the module');
  return '<table>' + t.join('') + '</table>';
}
var selected = -1;
function initial() {  // the instruction the address names, if it is there to select
  var i = HASH.i;
  if (i === undefined) return -1;
  if (i >= 0 && i < N && D.instrs[i]) return i;
  window.lpucNote('#i=' + i + ': no such instruction' + (D.chunks ? ' on chip ' + shown : ''));
  return -1;
}
function select(i, zoom) {
  if (i >= 0 && !instrEls[i]) {  // on a chip not shown: show it, then select
    var chip = chipOf(i);
    if (shown !== chip) showChip(chip, function () { select(i, zoom); });
    return;
  }
  if (selected >= 0 && instrEls[selected]) instrEls[selected].classList.remove('sel');
  selected = i;
  if (i < 0) { $('details').innerHTML = '<span class="muted">Click an instruction to see its details here.</span>'; return; }
  instrEls[i].classList.add('sel');
  $('details').innerHTML = detailHTML(i, true);
  if (zoom) {
    var a = D.instrs[i], span = Math.max(a[3] * 8, 200);
    setView(a[1] + a[3] / 2 - span / 2, a[1] + a[3] / 2 + span / 2);
  }
}
var tip = $('tooltip');
function showTip(e, html) {
  tip.innerHTML = html; tip.hidden = false;
  var w = tip.offsetWidth, h = tip.offsetHeight, x = e.clientX + 14, yy = e.clientY + 14;
  if (x + w > window.innerWidth - 4) x = Math.max(4, e.clientX - w - 14);
  if (yy + h > window.innerHeight - 4) yy = Math.max(4, e.clientY - h - 14);
  tip.style.left = x + 'px'; tip.style.top = yy + 'px';
}
function hideTip() { tip.hidden = true; }

// ---- SRAM
var SR = D.sram, SL_H = 3, TOT_H = 56, SR_GAP = 8;
function sramLayout() {
  var chips = SR.chips, h = 0, lay = [];
  for (var c = 0; c < chips.length; c++) {
    if (!visibleChip(chips[c].chip)) { lay.push(null); continue; }
    var top = h + (multiChip ? CHIPH : 0);
    lay.push({ total: top + 4, heat: top + 4 + TOT_H + SR_GAP, slices: SR.slices });
    h = top + 4 + TOT_H + SR_GAP + SR.slices * SL_H + 10;
  }
  return { lay: lay, h: h };
}
var SRL = sramLayout();
function sramSteps(chip) {  // a chip's SRAM entry with its step functions, or null while they are packed
  if (!D.chunks) return chip;
  var part = unpacked[chip.chip], none = [];
  for (var s = 0; s < SR.slices; s++) none.push([]);
  return part ? Object.assign({}, chip, { slices: part.slices || none, total: part.total, sliceless: !part.slices }) : null;
}
function showChip(chip, then) {  // the timeline and SRAM of one chip (null: every chip), once unpacked
  shown = chip;
  $('chip-pick').value = chip === null ? 'all' : String(chip);
  unpack(chip, function () {
    if (shown !== chip) return;  // another was picked meanwhile
    layoutRows(); SRL = sramLayout(); build(); drawAll();
    if (then) then();
  });
}
if (multiChip) {
  $('chip-pick-label').hidden = false;
  $('chip-pick').innerHTML = (S.chips <= ALL_CHIPS ? '<option value="all">all</option>' : '') +
    D.overview.chips.map(function (c) { return '<option value="' + c.chip + '">' + c.chip + '</option>'; }).join('');
  $('chip-pick').value = shown === null ? 'all' : String(shown);
  $('chip-pick').onchange = function () { showChip(this.value === 'all' ? null : +this.value); };
}
var heatMax = Math.max(1, Math.max.apply(null, SR.chips.map(function (c) { return c.max_slice_words; })));
function heatRGB(f) {
  // light to dark blue-violet; f in [0, 1]
  var stops = [[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107], [63, 0, 125]];
  var x = Math.min(0.999, Math.max(0, f)) * (stops.length - 1), j = Math.floor(x), u = x - j, A = stops[j], B = stops[j + 1];
  return [0, 1, 2].map(function (c) { return Math.round(A[c] + (B[c] - A[c]) * u); });
}
function heatColor(f) { return 'rgb(' + heatRGB(f).join(',') + ')'; }
var PALRGB = []; for (var q = 0; q <= 64; q++) PALRGB.push(heatRGB(q / 64));
$('sram-legend').innerHTML = '<span>0</span><span style="display:inline-block;width:140px;height:10px;background:linear-gradient(90deg,' +
  [0, .2, .4, .6, .8, 1].map(heatColor).join(',') + ')"></span><span>' + num(heatMax) + ' words / slice (' +
  pct(heatMax / SR.words_per_slice) + ' of a slice)</span><span class="muted">peak ' + bytes(SR.chips[0].peak_words * SR.word_bytes) +
  ' at cycle ' + num(SR.chips[0].peak_cycle) + '</span>';
// per-pixel maximum of a step function [t0, l0, t1, l1, ...] over the view
function colMax(st, out) {
  for (var p = 0; p < out.length; p++) out[p] = 0;
  var k = plotW / (view.t1 - view.t0), W = out.length;
  for (var j = 0; j < st.length; j += 2) {
    var lv = st[j + 1]; if (!lv) continue;
    var ts = st[j], te = j + 2 < st.length ? st[j + 2] : CYC;
    var p0 = Math.floor((ts - view.t0) * k), p1 = Math.ceil((te - view.t0) * k) - 1;
    if (p1 < 0 || p0 >= W) continue;
    if (p1 < p0) p1 = p0;
    p0 = Math.max(0, p0); p1 = Math.min(W - 1, p1);
    for (p = p0; p <= p1; p++) if (lv > out[p]) out[p] = lv;
  }
  return out;
}
function levelAt(st, t) {
  var lv = 0;
  for (var j = 0; j < st.length && st[j] <= t; j += 2) lv = st[j + 1];
  return lv;
}
var cv, ctx;
function buildSram() {
  var W = LABEL + plotW + PADR, dpr = window.devicePixelRatio || 1;
  $('sram').innerHTML = '<canvas id="sramcv"></canvas>';
  cv = $('sramcv'); cv.width = Math.round(W * dpr); cv.height = Math.round(SRL.h * dpr);
  cv.style.width = W + 'px'; cv.style.height = SRL.h + 'px';
  ctx = cv.getContext('2d'); ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
}
function drawSram() {
  var W = LABEL + plotW + PADR, col = new Float64Array(Math.ceil(plotW));
  ctx.clearRect(0, 0, W, SRL.h);
  ctx.font = '10px system-ui, sans-serif'; ctx.textBaseline = 'middle';
  for (var c = 0; c < SR.chips.length; c++) {
    var chip = SR.chips[c], L = SRL.lay[c];
    if (!L) continue;
    chip = sramSteps(chip);
    if (!chip) { unpack(SR.chips[c].chip, redraw); continue; }
    if (multiChip) { ctx.fillStyle = '#3b4252'; ctx.fillText('chip ' + chip.chip, 4, L.total - 10); }
    // total
    var cap = SR.words_per_slice * chip.slices.length, tmax = Math.max(1, chip.peak_words);
    colMax(chip.total, col);
    ctx.fillStyle = '#f6f7f9'; ctx.fillRect(LABEL, L.total, plotW, TOT_H);
    ctx.fillStyle = '#4c78a8';
    for (var p = 0; p < col.length; p++) if (col[p]) { var hh = col[p] / tmax * (TOT_H - 4); ctx.fillRect(LABEL + p, L.total + TOT_H - hh, 1, hh); }
    ctx.fillStyle = '#3b4252'; ctx.textAlign = 'left';
    ctx.fillText('all slices', 6, L.total + 10);
    ctx.fillStyle = '#98a2b3';
    ctx.fillText(bytes(chip.peak_words * SR.word_bytes), 6, L.total + 24);
    ctx.fillText('peak', 6, L.total + 36);
    // heat strips: one pixel row per slice in an image, scaled to SL_H
    var PW = col.length, img = new ImageData(PW, chip.slices.length), px = img.data;
    for (var s = 0; s < chip.slices.length; s++) {
      colMax(chip.slices[s], col);
      for (p = 0; p < PW; p++) {
        var rgb = PALRGB[col[p] ? Math.max(1, Math.round(col[p] / heatMax * 64)) : 0], o = (s * PW + p) * 4;
        px[o] = rgb[0]; px[o + 1] = rgb[1]; px[o + 2] = rgb[2]; px[o + 3] = 255;
      }
      if (s % 8 === 0) { ctx.fillStyle = '#667085'; ctx.textAlign = 'right'; ctx.fillText('slice ' + s, LABEL - 6, L.heat + s * SL_H + SL_H / 2 + 1); }
    }
    var off = document.createElement('canvas');
    off.width = PW; off.height = chip.slices.length;
    off.getContext('2d').putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, LABEL, L.heat, PW, chip.slices.length * SL_H);
    ctx.textAlign = 'left';
    if (chip.sliceless) {
      ctx.fillStyle = '#667085';
      ctx.fillText('Each slice\'s occupancy on this chip is not in this page: lpuc viz PROGRAM.lpu --html REPORT.html --detail-chips ' + chip.chip, LABEL + 8, L.heat + 12);
    }
    // axis lines
    ctx.strokeStyle = 'rgba(0,0,0,.08)'; ctx.beginPath();
    var tk = ticks();
    for (var j = 0; j < tk.length; j++) { var x = Math.round(X(tk[j])) + 0.5; ctx.moveTo(x, L.total); ctx.lineTo(x, L.heat + chip.slices.length * SL_H); }
    ctx.stroke();
  }
}
function sramHover(e, x, yy) {
  if (!e || x < LABEL) { hideTip(); return; }
  var t = Math.round(T(x));
  for (var c = 0; c < SR.chips.length; c++) {
    var L = SRL.lay[c], chip = SR.chips[c];
    if (!L) continue;
    chip = sramSteps(chip);
    if (!chip) continue;
    if (yy >= L.heat && yy < L.heat + L.slices * SL_H) {
      var s = Math.floor((yy - L.heat) / SL_H), lv = levelAt(chip.slices[s], t);
      showTip(e, (multiChip ? 'chip ' + chip.chip + ', ' : '') + 'slice ' + s + ' at cycle ' + num(t) + ': <b>' + num(lv) + '</b> words live (' +
        pct(lv / SR.words_per_slice) + ' of the slice)');
      return;
    }
    if (yy >= L.total && yy < L.total + TOT_H) {
      var tv = levelAt(chip.total, t);
      showTip(e, 'all slices at cycle ' + num(t) + ': <b>' + bytes(tv * SR.word_bytes) + '</b> live (' + num(tv) + ' words)');
      return;
    }
  }
  hideTip();
}

// ---- links, utilization, critical path, run
(function () {
  var L = D.links;
  if (!L.used) {
    $('links').innerHTML = '<div class="note">No chip-to-chip links used' + (S.chips === 1 ? ': the program runs on one chip, all data stays in its SRAM.' : '.') +
      ' <span class="muted">(' + L.links_per_chip + ' C2C links per chip available)</span></div>';
    return;
  }
  var h = ['<table class="grid"><tr><th class="l">chip</th><th class="l">link</th><th>transfers</th><th>bytes</th><th>busy cycles</th><th>utilization</th></tr>'];
  L.rows.forEach(function (r) {
    h.push('<tr><td>' + r.chip + '</td><td class="l">' + esc(r.link) + '</td><td>' + num(r.transfers) + '</td><td>' + bytes(r.bytes) + '</td><td>' + num(r.busy) +
      '</td><td>' + pct(r.util) + '</td></tr>');
  });
  $('links').innerHTML = h.join('') + '</table>';
})();
(function () {
  function bar(u) { return '<span class="bar"><b style="width:' + Math.min(100, 100 * u).toFixed(1) + '%"></b></span>'; }
  var h = ['<div class="util-wrap"><table class="grid"><tr><th class="l">unit class</th><th>instances</th><th>instructions</th><th>busy cycles</th><th>utilization</th><th></th></tr>'];
  D.class_rows.forEach(function (c) {
    h.push('<tr class="cls"><td class="l"><i class="c-' + clsName(CLASSES.indexOf(c.cls)) + '" style="display:inline-block;width:10px;height:10px;margin-right:4px"></i>' + esc(c.cls) + '</td><td>' + c.instances + '</td><td>' + num(c.n) +
      '</td><td>' + num(c.busy) + '</td><td>' + pct(c.util) + '</td><td>' + bar(c.util) + '</td></tr>');
  });
  h.push('</table><table class="grid"><tr><th class="l">unit</th><th>instructions</th><th>busy cycles</th><th>utilization</th><th></th></tr>');
  D.rows.forEach(function (r) {
    h.push('<tr><td class="l">' + (multiChip ? 'chip ' + r.chip + ' ' : '') + esc(r.unit) + '</td><td>' + num(r.n) + '</td><td>' + num(r.busy) + '</td><td>' + pct(r.util) + '</td><td>' + bar(r.util) + '</td></tr>');
  });
  $('util').innerHTML = h.join('') + '</table></div>';
})();
(function () {
  var C = D.critical, st = C.steps;
  if (!st.length) { $('crit').innerHTML = '<span class="muted">no instructions</span>'; return; }
  var last = st[st.length - 1];
  var h = ['<p>The chain of <b>' + st.length + '</b> instructions ending at the last one to land (cycle ' + num(S.cycles) +
    '). Each step goes from an instruction to the producer of one of its operands (through views to the value owning the words; ' +
    'from a matmul to its weights\u2019 install): the one whose own chain carries the most latency. Every step is a read after write: ' +
    'the operand landed before the instruction issued.</p><p>Along it: <b>' + num(C.latency) + '</b> cycles of latency' +
    (C.bound !== null && C.bound !== undefined ? ' (the compiler\u2019s critical-path bound: ' + num(C.bound) + ')' : '') +
    ' + <b>' + num(C.waits) + '</b> cycles waiting with the operand in place (' + pct(C.waits / CYC) + ' of the program)' +
    (C.first_issue ? ' + a first issue at cycle ' + num(C.first_issue) : '') + ' = ' + num(S.cycles) + ' cycles.</p>'];
  function why(w) {
    if (!w) return '';
    if (w[0] === 'operand') return 'operand %' + esc(w[1]) + ' landed at ' + num(w[3]);
    if (w[0] === 'unit') return 'unit busy with ' + esc(label(w[2])) + ' until ' + num(w[3]);
    return 'ports, streams or plane';
  }
  h.push('<details' + (st.length <= 40 ? ' open' : '') + '><summary>the ' + st.length + ' steps (click a row to select and zoom)</summary><table class="grid" id="crit-table"><tr><th>#</th><th class="l">instruction</th><th class="l">unit</th><th>operand landed</th><th>issue</th><th>waited</th><th class="l">waited for</th><th>latency</th><th>lands</th></tr>');
  st.forEach(function (s, j) {
    var a = D.instrs[s[0]];
    h.push('<tr class="click" data-ci="' + s[0] + '"><td>' + (j + 1) + '</td><td class="l mono">' + esc(label(s[0])) + '</td><td class="l">' + esc(rows[a[0]].unit) +
      '</td><td>' + (s[1] === null ? '\u2014' : num(s[3]) + ' <span class="muted">%' + esc(s[2]) + '</span>') + '</td><td>' + num(a[1]) + '</td><td>' + (s[1] === null ? '\u2014' : num(s[4])) +
      '</td><td class="l muted">' + why(C.why[j]) + '</td><td>' + num(a[3]) + '</td><td>' + num(a[1] + a[3]) + '</td></tr>');
  });
  $('crit').innerHTML = h.join('') + '</table></details>';
  $('crit').addEventListener('click', function (e) {
    var tr = e.target.closest('tr[data-ci]'); if (!tr) return;
    select(+tr.getAttribute('data-ci'), true);
    $('timeline-section').scrollIntoView({ behavior: 'smooth' });
  });
})();
(function () {
  if (!D.run) return;
  $('run-section').hidden = false;
  var R = D.run, h = ['<p>Interpreter run: ' + num(R.trace_events) + ' trace events, ' + R.hazard_count + ' hazards.</p>'];
  h.push('<table class="grid"><tr><th class="l">output</th><th class="l">dtype</th><th class="l">shape</th><th>min</th><th>max</th><th>non-finite</th></tr>');
  R.outputs.forEach(function (o) {
    h.push('<tr><td class="l">' + esc(o.name) + '</td><td class="l">' + esc(o.dtype) + '</td><td class="l">[' + o.shape.join(', ') + ']</td><td>' +
      (o.min === undefined || o.min === null ? '\u2014' : o.min.toPrecision(5)) + '</td><td>' + (o.max === undefined || o.max === null ? '\u2014' : o.max.toPrecision(5)) +
      '</td><td>' + (o.nonfinite === undefined ? '\u2014' : o.nonfinite) + '</td></tr>');
  });
  h.push('</table>');
  if (R.hazards.length) h.push('<pre class="errors">' + esc(R.hazards.join('\n')) + '</pre>');
  $('run').innerHTML = h.join('');
})();

// ---- chips over time, and the traffic between them (many chips)
var OV = D.overview;
function ovRowH() { return Math.max(2, Math.min(14, Math.floor(480 / OV.chips.length))); }
function canvasFor(cv, w, h) {
  var dpr = window.devicePixelRatio || 1;
  cv.width = Math.round(w * dpr); cv.height = Math.round(h * dpr); cv.style.width = w + 'px'; cv.style.height = h + 'px';
  var ctx = cv.getContext('2d'); ctx.setTransform(dpr, 0, 0, dpr, 0, 0); return ctx;
}
function drawOverview() {
  if (S.chips < 2) return;
  var rh = ovRowH(), W = LABEL + plotW + PADR, top = AXISH, H = top + OV.chips.length * rh + 4;
  var ctx = canvasFor($('overview'), W, H), bw = plotW / OV.bins, cx = plotW / Math.max(1, OV.cycles);
  ctx.font = '10px sans-serif'; ctx.fillStyle = '#3b4252'; ctx.textAlign = 'center';
  [0, 0.25, 0.5, 0.75, 1].forEach(function (f) {
    ctx.textAlign = f === 1 ? 'right' : 'center';
    ctx.fillText(tickLabel(Math.round(f * OV.cycles)), LABEL + f * plotW, top - 7);
  });
  var ink = 0;
  ctx.textAlign = 'left';
  OV.chips.forEach(function (c, r) {
    var y = top + r * rh;
    for (var b = 0; b < OV.bins; b++) {
      if (!c.busy[b]) continue;
      ink++;
      ctx.globalAlpha = 0.2 + 0.8 * c.busy[b] / 100;
      ctx.fillStyle = D.colours[CLASSES[c.cls[b]]] || '#98a2b3';
      ctx.fillRect(LABEL + b * bw, y, Math.max(1, bw), rh > 4 ? rh - 1 : rh);
    }
    ctx.globalAlpha = 1;
    if (rh >= 10) { ctx.fillStyle = '#3b4252'; ctx.fillText('chip ' + c.chip, 4, y + rh - 2); }
  });
  ctx.strokeStyle = '#3b4252'; ctx.lineWidth = 1; ctx.fillStyle = '#3b4252';
  OV.stages.forEach(function (st, j) {
    var y = top + st[0] * rh;
    if (j > 0) { ctx.beginPath(); ctx.moveTo(0, y + 0.5); ctx.lineTo(W, y + 0.5); ctx.stroke(); }
    if (rh < 10 && (st[1] - st[0] + 1) * rh >= 10) ctx.fillText('stage ' + j, 4, y + 11);
  });
  ctx.strokeStyle = '#d1242f'; ctx.lineWidth = 1.5; ctx.beginPath();
  OV.critical.forEach(function (st, j) {
    var x = LABEL + st[1] * cx, y = top + st[0] * rh + rh / 2;
    if (j) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    ctx.lineTo(LABEL + st[2] * cx, y);
  });
  ctx.stroke();
  $('overview').setAttribute('data-rows', OV.chips.length);  // what was drawn, for a test to read
  $('overview').setAttribute('data-cells', ink);
}
function ovAt(e) {  // (row, bin) under the mouse, or null
  var r = e.target.getBoundingClientRect(), x = e.clientX - r.left - LABEL, y = e.clientY - r.top - AXISH;
  var row = Math.floor(y / ovRowH()), b = Math.floor(x / (plotW / OV.bins));
  return row >= 0 && row < OV.chips.length && b >= 0 && b < OV.bins ? [row, b] : null;
}
function drawPairs() {
  if (S.chips < 2) return;
  var n = OV.chips.length, cell = Math.max(1, Math.min(12, Math.floor(480 / n))), side = n * cell;
  var ctx = canvasFor($('pairs'), LABEL + side + PADR, side + 4), most = 1;
  OV.pairs.forEach(function (p) { most = Math.max(most, p[2]); });
  ctx.fillStyle = '#f3f4f6'; ctx.fillRect(LABEL, 0, side, side);
  OV.pairs.forEach(function (p) {
    ctx.globalAlpha = 0.25 + 0.75 * Math.log(1 + p[2]) / Math.log(1 + most);
    ctx.fillStyle = '#1f77b4'; ctx.fillRect(LABEL + p[1] * cell, p[0] * cell, cell, cell);
  });
  ctx.globalAlpha = 1; ctx.fillStyle = '#3b4252'; ctx.font = '10px sans-serif';
  ctx.fillText('from \u2193 to \u2192', 4, 12);
  var h = ['<table><tr><th class="l">link direction</th><th>bytes</th><th>busy cycles</th><th>busy</th></tr>'];
  OV.hot.forEach(function (x) {
    h.push('<tr><td class="l mono">' + esc(x.link) + '</td><td>' + num(x.bytes) + '</td><td>' + num(x.busy) + '</td><td>' + pct(x.util) + '</td></tr>');
  });
  $('hot').innerHTML = OV.hot.length ? h.join('') + '</table>' : '<p class="muted">No chip-to-chip links used.</p>';
}
function chipTable() {
  var cls = Object.keys(D.per_chip.length ? D.per_chip[0].utilization : {});
  var h = ['<table><tr><th class="l">chip</th><th>instructions</th><th>SRAM peak</th>' +
    cls.map(function (c) { return '<th>' + esc(c) + '</th>'; }).join('') + '</tr>'];
  D.per_chip.forEach(function (c) {
    h.push('<tr data-chip="' + c.chip + '"><td class="l">' + c.chip + '</td><td>' + num(c.instructions) + '</td><td>' + bytes(c.sram_peak_bytes) + '</td>' +
      cls.map(function (k) { return '<td title="' + num(c.busy_cycles[k]) + ' busy cycles">' + pct(c.utilization[k]) + '</td>'; }).join('') + '</tr>');
  });
  $('chip-table').innerHTML = h.join('') + '</table>';
  $('chip-table').addEventListener('click', function (e) {
    var tr = e.target.closest('tr[data-chip]');
    if (tr) showChip(+tr.getAttribute('data-chip'), function () { $('timeline-section').scrollIntoView({ behavior: 'smooth' }); });
  });
}
if (S.chips > 1) {
  $('overview-section').hidden = false;
  chipTable();
  $('ov-legend').innerHTML = CLASSES.filter(function (c) {
    return OV.chips.some(function (ch) { return ch.busy.some(function (b, j) { return b && CLASSES[ch.cls[j]] === c; }); });
  }).map(function (c) { return '<span><i class="c-' + clsName(CLASSES.indexOf(c)) + '"></i>' + esc(c) + '</span>'; }).join('') +
    '<span><i class="crit"></i>critical path</span>';
  $('overview').addEventListener('mousemove', function (e) {
    var at = ovAt(e);
    if (!at) { hideTip(); return; }
    var c = OV.chips[at[0]], b = at[1], w = OV.cycles / OV.bins;
    showTip(e, 'chip ' + c.chip + ', cycles ' + num(b * w) + '\u2013' + num((b + 1) * w) + ': ' +
      (c.busy[b] ? '<b>' + esc(CLASSES[c.cls[b]]) + '</b> ' + c.busy[b] + '% busy' : 'idle'));
  });
  $('overview').addEventListener('mouseleave', hideTip);
  $('overview').addEventListener('click', function (e) {
    var at = ovAt(e);
    if (!at) return;
    var chip = OV.chips[at[0]].chip;
    function there() {  // the time clicked, on the chip clicked
      var r = 0, w = OV.cycles / OV.bins;
      while (r < rows.length && rows[r].chip !== chip) r++;
      if (r === rows.length) return;
      setView(at[1] * w - 2 * w, (at[1] + 3) * w);
      var y = $('timeline').getBoundingClientRect().top + window.pageYOffset + rowY[r] - CHIPH - 48;
      window.scrollTo({ top: Math.max(0, y), behavior: 'smooth' });
    }
    if (visibleChip(chip)) there(); else showChip(chip, there);
  });
  $('pairs').addEventListener('mousemove', function (e) {
    var n = OV.chips.length, cell = Math.max(1, Math.min(12, Math.floor(480 / n)));
    var r = e.target.getBoundingClientRect(), col = Math.floor((e.clientX - r.left - LABEL) / cell), row = Math.floor((e.clientY - r.top) / cell);
    var p = OV.pairs.filter(function (q) { return q[0] === row && q[1] === col; })[0];
    if (p) showTip(e, 'chip ' + p[0] + ' \u2192 chip ' + p[1] + ': <b>' + num(p[2]) + '</b> bytes, ' + num(p[3]) + ' busy cycles');
    else hideTip();
  });
  $('pairs').addEventListener('mouseleave', hideTip);
}

// ---- wiring
function build() {
  buildTimeline();
  instrEls = [];
  var kids = $('instrs').children;
  for (var j = 0; j < shownIdx.length; j++) instrEls[shownIdx[j]] = kids[j];
  buildSram();
  if (selected >= 0) { var s = selected; selected = -1; select(s, false); }
  setShow();
}
function setShow() {
  var svg = $('tl');
  svg.classList.toggle('showcrit', $('show-crit').checked);
  svg.classList.toggle('nolat', !$('show-lat').checked);
}
redraws.push(drawTimeline, drawSram);
function buildOverview() { drawOverview(); drawPairs(); }
function rendered() {
  document.body.offsetHeight;  // force layout: rendering is done
  document.body.setAttribute('data-render-ms', performance.now().toFixed(1));
  document.body.setAttribute('data-rendered', '1');
}
measure();  // (the overview is drawn as wide as the timeline will be)
buildOverview();
if (D.chunks) showChip(shown, function () { select(initial(), true); rendered(); });
else { build(); drawAll(); }
interact($('timeline'), function (e) {
  if (!e) { hideTip(); return; }
  var t = e.target;
  if (t && t.classList && t.classList.contains('instr')) showTip(e, detailHTML(+t.getAttribute('data-i'), false));
  else if (t && t.classList && t.classList.contains('piece')) showTip(e, pieceTip(+t.getAttribute('data-span')));
  else hideTip();
}, function (e) {
  var t = e.target;
  if (t && t.classList && t.classList.contains('instr')) select(+t.getAttribute('data-i'), false);
});
interact($('sram'), sramHover, null);
$('zoom-fit').onclick = fit;
$('zoom-in').onclick = function () { zoomAt((view.t0 + view.t1) / 2, 0.5); };
$('zoom-out').onclick = function () { zoomAt((view.t0 + view.t1) / 2, 2); };
$('zoom-crit').onclick = function () {
  var st = D.critical.steps; if (!st.length) return;
  var from = st[Math.max(0, st.length - 12)][0], a = D.instrs[from];
  setView(a[1] - CYC * 0.002, CYC + CYC * 0.002);
};
$('show-crit').onchange = setShow;
$('show-lat').onchange = setShow;
window.addEventListener('keydown', function (e) {
  if (e.target && /INPUT|TEXTAREA/.test(e.target.tagName)) return;
  if (e.key === '+' || e.key === '=') zoomAt((view.t0 + view.t1) / 2, 0.5);
  else if (e.key === '-') zoomAt((view.t0 + view.t1) / 2, 2);
  else if (e.key === '0') fit();
  else if (e.key === 'Escape') select(-1);
});
var lastW = $('timeline').clientWidth;
window.addEventListener('resize', function () {
  var w = $('timeline').clientWidth;
  if (w !== lastW) { lastW = w; build(); buildOverview(); drawAll(); }
});
if (!D.chunks) { select(initial(), true); rendered(); }
}
})();
"""
