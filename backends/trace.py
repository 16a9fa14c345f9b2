"""Timelines as Chrome trace-event JSON, for ui.perfetto.dev and chrome://tracing.

One code path for both timelines `lpuc` writes:

- `static_trace(program)`: what the schedule says, derived from the program with
  ir.costs (the interpreter's own rules, docs/machine-ir.md "Timing"); it equals
  the interpreter's `Result.trace` for any program the interpreter runs;
- `Result.trace` of `backends.interpreter.run`: what the interpreter executed.

`chrome_trace(program, events)` turns either into the trace-event "JSON Object
Format" (`{"traceEvents": [...], "displayTimeUnit": "ns", "otherData": {...}}`):

- a process per chip (`pid` = chip + 1, named by a `process_name` event);
- a thread (track) per unit instance (mxm0..3, vxm0..15, sxm0..1, mem0..1,
  host0), then one per SRAM slice port the program uses ("slice 12 read",
  "slice 12 write"), then one per chip-to-chip link ("link 3"; none on one chip);
- one complete event (`"ph": "X"`, `"cat": "instruction"`) per instruction on its
  unit's track, from issue to issue + occupancy, its args naming the
  instruction, operands and results (the graph values they stand for), their
  SRAM extents `[slice, word, words]`, the unit, cycle, occupancy, latency and
  landing cycle; the slice-port holds as `"cat": "sram.read"` / `"sram.write"`
  events on the port tracks;
- counter tracks (`"ph": "C"`): "SRAM live" (bytes held per chip: a value from
  its landing until its last read ends, constants throughout, as `lpuc run`
  measures the SRAM peak) and "SRAM slice N" per slice used;
- chip-to-chip transfers (`Transfer`): an "X" on the sender's and the receiver's
  link track joined by a flow arrow (`flow_pair`: an "s" / "f" pair, one id).

Time: cycles at the machine clock, in microseconds as the format wants:
`ts = cycle / clock_mhz`, rounded to whole nanoseconds (so slices that touch
share their boundary exactly); every event's args also carry its exact cycle.
`displayTimeUnit` "ns" makes the viewers show nanoseconds.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from ..ir import machine_ops as mo
from ..ir.core import Module
from ..ir.costs import cost, units
from ..ir.errors import LpucError
from ..ir.layout import sub_extents, view_extents, words
from ..ir.machine import Machine
from ..ir.registry import LINK, OPS, SRAM
from ..ir.topology import network

from .interpreter import TraceEvent
from .lpu import Program

UNIT_ORDER = tuple(c.name for c in mo.UNIT_CLASSES if not c.link)  # unit tracks within a chip (links: their own)
PORT_TID = 1000    # slice s: read port PORT_TID + 2s, write port PORT_TID + 2s + 1
LINK_TID = 10000   # link l: LINK_TID + l


# --- what each instruction touches (static) ------------------------------------

@dataclass(frozen=True)
class Detail:
    """An instruction's static facts: names, SRAM extents, port words, costs."""
    label: str
    op: str
    chip: int
    operands: tuple[str, ...]
    results: tuple[str, ...]
    reads: tuple[tuple[tuple[int, int, int], ...], ...]   # per operand: SRAM extents (() if not in SRAM)
    writes: tuple[tuple[tuple[int, int, int], ...], ...]  # per result: SRAM extents (() if not in SRAM)
    read_bases: tuple[int, ...]     # ids of the SRAM values (owners of words, not views) it reads
    write_bases: tuple[int, ...]    # ids of the SRAM values it creates
    port_reads: tuple[tuple[int, int], ...]   # (slice, words read)
    port_writes: tuple[tuple[int, int], ...]  # (slice, words written)
    cycle: int | None
    unit: str
    occupancy: int
    latency: int


@dataclass(frozen=True)
class Base:
    """A value owning SRAM words: an instruction's result or a constant."""
    name: str
    chip: int
    extents: tuple[tuple[int, int, int], ...]
    constant: bool
    producer: str | None  # the producing instruction's label (None for constants)


@dataclass(frozen=True)
class Analysis:
    details: Mapping[str, Detail]  # label -> Detail, in program order
    bases: tuple[Base, ...]


def analyze(module: Module, machine: Machine) -> Analysis:
    """Every instruction's extents, port words and costs (ir.costs), views resolved to their words."""
    values: dict[str, tuple | None] = {v.name: None for v in module.inputs}  # None: not in SRAM
    bases: list[Base] = []
    details: dict[str, Detail] = {}

    def new_base(name, extents, constant, producer):
        bases.append(Base(name, chip, tuple(extents), constant, producer))
        return len(bases) - 1

    for op in module.ops:
        chip = mo.chip_of(op)
        if mo.is_view(op.name):
            segs = [seg for v in op.operands for seg in (values.get(v.name) or ())]
            per_operand, i = [], 0
            for v in op.operands:  # each segment's index stands in for its slice, to find its owner again
                n = len(values.get(v.name) or ())
                per_operand.append(tuple((i + k, segs[i + k][1], segs[i + k][2]) for k in range(n)))
                i += n
            ext = view_extents(op.name, op.attrs, [v.type for v in op.operands], per_operand)
            values[op.result.name] = tuple((segs[k][0], w, n, segs[k][3]) for k, w, n in ext)
            continue
        out = tuple(tuple(e) for e in op.attrs.get("out") or ())
        if mo.is_constant(op.name):
            b = new_base(op.result.name, out, True, None)
            values[op.result.name] = tuple((s, w, n, b) for s, w, n in out)
            continue
        label = op.label()
        if label in details:
            raise LpucError(f"{label}: two instructions with the same label")
        reads, read_bases = [], []
        for i, v in enumerate(op.operands):
            segs = values.get(v.name) if OPS[op.name].operand_place(i) == SRAM else None
            reads.append(tuple((s, w, n) for s, w, n, _ in segs or ()))
            read_bases += [b for *_, b in segs or ()]
        sram_results = op.results if OPS[op.name].result_place == SRAM else ()
        writes, write_bases, pos = [], [], 0
        for r in op.results:
            if r in sram_results:
                ext = sub_extents(out, pos, words(r.type))
                pos += words(r.type)
                b = new_base(r.name, ext, False, label)
                values[r.name] = tuple((s, w, n, b) for s, w, n in ext)
                writes.append(ext)
                write_bases.append(b)
            else:
                values[r.name] = None
                writes.append(())
        c = cost(op, machine, [e for e in reads if e], [e for e in writes if e])
        details[label] = Detail(
            label, op.name, chip, tuple(v.name for v in op.operands), tuple(r.name for r in op.results),
            tuple(reads), tuple(writes), tuple(dict.fromkeys(read_bases)), tuple(write_bases),
            c.reads, c.writes, op.attrs.get("cycle"), op.attrs.get("unit") or "", c.occupancy, c.latency)
    return Analysis(details, tuple(bases))


def static_trace(program: Program) -> tuple[TraceEvent, ...]:
    """The scheduled timeline: one TraceEvent per timed instruction, ordered as the interpreter's trace."""
    return _events(analyze(program.module, program.machine))


def _events(analysis: Analysis) -> tuple[TraceEvent, ...]:
    events = [TraceEvent(d.label, d.op, d.unit, d.cycle, d.cycle + d.occupancy, d.cycle + d.latency, d.chip)
              for d in analysis.details.values() if d.cycle is not None]
    return tuple(sorted(events, key=lambda e: (e.start, e.chip, e.unit, e.land, e.instruction)))


def transfers_of(program: Program) -> tuple[Transfer, ...]:
    """The chip-to-chip transfers of a scheduled program: one per timed c2c.send, on its first link, landing
    when its words have all arrived (ir.costs)."""
    module, machine = program.module, program.machine
    chips = module.attrs.get("chips", 1)
    if chips == 1:
        return ()
    net = network(machine, chips)
    out = []
    for op in module.ops:
        if OPS[op.name].result_place != LINK or op.attrs.get("cycle") is None:
            continue
        src, route, c = mo.chip_of(op), op.attrs["route"], op.attrs["cycle"]
        try:
            dst, port = net.destination(src, route)
        except LpucError:  # a broken route: the interpreter reports it; nothing to draw
            continue
        k = cost(op, machine)
        out.append(Transfer(op.result.name, src, dst, route[0], c, c + k.occupancy, c + k.latency,
                            words(op.operands[0].type) * machine.sram.word_bytes, port))
    return tuple(out)


# --- chip-to-chip transfers and flows ----------------------------------------------

@dataclass(frozen=True)
class Transfer:
    """A chip-to-chip copy: leaves `src_chip` on `link` during [start, end), lands on `dst_chip` at `land`."""
    name: str
    src_chip: int
    dst_chip: int
    link: int
    start: int
    end: int
    land: int
    bytes: int = 0
    dst_link: int | None = None  # the receiver's link index (default: the same index)


def flow_pair(flow_id: int, name: str, cat: str, src: tuple[int, int, float], dst: tuple[int, int, float]
              ) -> list[dict]:
    """A flow arrow from (pid, tid, ts) to (pid, tid, ts): an "s" and an "f" event with one id and cat.
    Each end binds to the slice enclosing its ts on its track ("bp": "e")."""
    (spid, stid, sts), (dpid, dtid, dts) = src, dst
    if dts < sts:
        raise ValueError(f"flow {name!r}: it ends ({dts}) before it starts ({sts})")
    return [{"ph": "s", "id": flow_id, "name": name, "cat": cat, "pid": spid, "tid": stid, "ts": sts},
            {"ph": "f", "id": flow_id, "name": name, "cat": cat, "pid": dpid, "tid": dtid, "ts": dts, "bp": "e"}]


# --- the trace-event document --------------------------------------------------------

def chrome_trace(program: Program, events: Sequence[TraceEvent] | None = None, *, source: str = "schedule",
                 transfers: Iterable[Transfer] | None = None, per_slice: bool = True) -> dict:
    """The trace-event JSON object of `events` (default: the static schedule) of `program`, with its
    chip-to-chip `transfers` (default: the program's own)."""
    machine = program.machine
    analysis = analyze(program.module, machine)
    if events is None:
        events = _events(analysis)
    transfers = transfers_of(program) if transfers is None else tuple(transfers)
    clock = Fraction(machine.clock_mhz).limit_denominator(10**6)

    def us(cycle: int) -> float:  # cycles -> microseconds, on a whole-nanosecond grid
        return round(cycle * 1000 / clock) / 1000

    chips = sorted({0} | {analysis.details[e.instruction].chip for e in events if e.instruction in analysis.details}
                   | {t.src_chip for t in transfers} | {t.dst_chip for t in transfers})
    unit_tids = {}
    counts = units(machine)
    for cls in UNIT_ORDER:
        for i in range(counts.get(cls, 0)):
            unit_tids[f"{cls}{i}"] = len(unit_tids) + 1
    out: list[dict] = []
    body: list[dict] = []
    tracks: dict[tuple[int, int], str] = {}

    def track(chip: int, tid: int, name: str) -> tuple[int, int]:
        tracks.setdefault((chip, tid), name)
        return chip + 1, tid

    for chip in chips:
        for unit, tid in unit_tids.items():
            track(chip, tid, unit)
    rp, wp = machine.sram.read_ports, machine.sram.write_ports
    for e in events:
        d = analysis.details.get(e.instruction)
        if d is None:
            raise LpucError(f"trace: {e.instruction} is not an instruction of @{program.module.name}")
        tid = unit_tids.get(e.unit)
        if tid is None:  # a unit the machine does not have (a broken program): its own track
            tid = len(unit_tids) + 1
            unit_tids[e.unit] = tid
        pid, tid = track(d.chip, tid, e.unit or "no unit")
        ts = us(e.start)
        body.append({
            "ph": "X", "cat": "instruction", "name": e.op, "pid": pid, "tid": tid, "ts": ts,
            "dur": round(us(e.end) - ts, 3),
            "args": {
                "instruction": e.instruction, "unit": e.unit, "cycle": e.start,
                "occupancy": e.end - e.start, "latency": e.land - e.start, "lands": e.land,
                "operands": [f"%{n}" for n in d.operands], "results": [f"%{n}" for n in d.results],
                "operand_extents": [[list(x) for x in r] for r in d.reads],
                "result_extents": [[list(x) for x in w] for w in d.writes],
            }})
        for s, n in d.port_reads:
            held = -(-n // rp)
            pid, tid = track(d.chip, PORT_TID + 2 * s, f"slice {s} read")
            body.append({"ph": "X", "cat": "sram.read", "name": e.op, "pid": pid, "tid": tid, "ts": ts,
                         "dur": round(us(e.start + held) - ts, 3),
                         "args": {"instruction": e.instruction, "slice": s, "words": n, "cycle": e.start}})
        for s, n in d.port_writes:
            held = -(-n // wp)
            pid, tid = track(d.chip, PORT_TID + 2 * s + 1, f"slice {s} write")
            t0 = us(e.land - held)
            body.append({"ph": "X", "cat": "sram.write", "name": e.op, "pid": pid, "tid": tid, "ts": t0,
                         "dur": round(us(e.land) - t0, 3),
                         "args": {"instruction": e.instruction, "slice": s, "words": n, "cycle": e.land - held}})
    for k, t in enumerate(transfers):
        src = track(t.src_chip, LINK_TID + t.link, f"link {t.link}")
        dst_link = t.link if t.dst_link is None else t.dst_link
        dst = track(t.dst_chip, LINK_TID + dst_link, f"link {dst_link}")
        args = {"transfer": t.name, "from": f"chip{t.src_chip}", "to": f"chip{t.dst_chip}", "bytes": t.bytes,
                "cycle": t.start, "lands": t.land}
        body.append({"ph": "X", "cat": "link", "name": t.name, "pid": src[0], "tid": src[1], "ts": us(t.start),
                     "dur": round(us(t.end) - us(t.start), 3), "args": args})
        recv = t.land - (t.end - t.start)
        body.append({"ph": "X", "cat": "link", "name": t.name, "pid": dst[0], "tid": dst[1], "ts": us(recv),
                     "dur": round(us(t.land) - us(recv), 3), "args": args})
        body += flow_pair(k + 1, t.name, "transfer", (*src, us(t.start)), (*dst, us(recv)))
    body += _sram_counters(analysis, events, machine.sram.word_bytes, us, per_slice)

    for chip in chips:
        pid = chip + 1
        out.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "ts": 0,
                    "args": {"name": f"chip{chip} ({machine.name})"}})
        out.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "ts": 0,
                    "args": {"sort_index": chip}})
    for (chip, tid), name in sorted(tracks.items()):
        out.append({"ph": "M", "name": "thread_name", "pid": chip + 1, "tid": tid, "ts": 0, "args": {"name": name}})
        out.append({"ph": "M", "name": "thread_sort_index", "pid": chip + 1, "tid": tid, "ts": 0,
                    "args": {"sort_index": tid}})
    body.sort(key=lambda ev: (ev["ts"], ev["pid"], ev["tid"], -ev.get("dur", 0)))
    cycles = max([e.land for e in events] + [t.land for t in transfers], default=0)
    return {
        "traceEvents": out + body,
        "displayTimeUnit": "ns",
        "otherData": {
            "tool": "lpuc", "module": program.module.name, "machine": machine.name, "chips": len(chips),
            "source": source, "cycles": cycles, "clock_mhz": machine.clock_mhz, "instructions": len(events),
            "time": "ts and dur in microseconds: cycles / clock_mhz, rounded to whole nanoseconds",
        },
    }


def _sram_counters(analysis: Analysis, events: Sequence[TraceEvent], word_bytes: int, us, per_slice: bool):
    """Bytes live per chip (and per slice) over time: a value from landing until its last read ends."""
    by_label = {e.instruction: e for e in events}
    cycles = max([e.land for e in events], default=0)
    land: dict[int, int] = {}
    end: dict[int, int] = defaultdict(int)
    for label, d in analysis.details.items():
        e = by_label.get(label)
        if e is None:
            continue
        for b in d.write_bases:
            land[b] = e.land
        for b in d.read_bases:
            end[b] = max(end[b], e.end)
    deltas: dict[tuple, list[tuple[int, int]]] = defaultdict(list)  # (chip, slice | None) -> [(t, words)]
    for b, base in enumerate(analysis.bases):
        if base.constant:
            t0, t1 = 0, max(cycles, 1)
        elif b in land:
            t0 = land[b]
            t1 = max(end[b], t0 + 1)
        else:
            continue
        n = sum(k for _, _, k in base.extents)
        deltas[base.chip, None] += [(t0, n), (t1, -n)]
        if per_slice:
            per: dict[int, int] = defaultdict(int)
            for s, _, k in base.extents:
                per[s] += k
            for s, k in per.items():
                deltas[base.chip, s] += [(t0, k), (t1, -k)]
    counters = []
    for (chip, s), ds in sorted(deltas.items(), key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1])):
        name = "SRAM live" if s is None else f"SRAM slice {s}"
        totals: dict[int, int] = defaultdict(int)
        for t, d in ds:
            totals[t] += d
        live = 0
        for t in sorted(totals):
            live += totals[t]
            counters.append({"ph": "C", "name": name, "pid": chip + 1, "tid": 0, "ts": us(t),
                             "args": {"bytes": live * word_bytes}})
    return counters


def trace_json(program: Program, events: Sequence[TraceEvent] | None = None, **kwargs) -> bytes:
    """`chrome_trace` as UTF-8 JSON bytes (compact, one event per line)."""
    doc = chrome_trace(program, events, **kwargs)
    lines = ",\n".join(json.dumps(ev, separators=(",", ":")) for ev in doc["traceEvents"])
    rest = {k: v for k, v in doc.items() if k != "traceEvents"}
    return ('{"traceEvents":[\n' + lines + "\n],\n" + json.dumps(rest)[1:] + "\n").encode()


# --- checking a document against the format --------------------------------------------

PHASES = {"X", "B", "E", "i", "I", "C", "M", "s", "t", "f"}


def validate(doc: Mapping) -> list[str]:
    """Problems of a trace-event JSON object (empty when it is well formed): every event has ph, ts,
    pid and tid (numbers), "X" a non-negative dur, flows come in "s"/"f" pairs of one id and cat
    ("f" not before "s"), and "X" slices on one track nest or are disjoint."""
    problems = []
    events = doc.get("traceEvents") if isinstance(doc, Mapping) else None
    if not isinstance(events, list):
        return ["no traceEvents list"]
    if doc.get("displayTimeUnit", "ms") not in ("ms", "ns"):
        problems.append(f"displayTimeUnit {doc.get('displayTimeUnit')!r} is not ms or ns")
    flows: dict[tuple, dict[str, list]] = defaultdict(lambda: {"s": [], "f": []})
    slices: dict[tuple, list[tuple[int, int]]] = defaultdict(list)
    for k, ev in enumerate(events):
        where = f"event {k} ({ev.get('ph')} {ev.get('name')!r})" if isinstance(ev, Mapping) else f"event {k}"
        if not isinstance(ev, Mapping):
            problems.append(f"{where}: not an object")
            continue
        if ev.get("ph") not in PHASES:
            problems.append(f"{where}: unknown ph")
        for key in ("ts", "pid", "tid"):
            if not isinstance(ev.get(key), (int, float)) or isinstance(ev.get(key), bool):
                problems.append(f"{where}: {key} missing or not a number")
        if not isinstance(ev.get("name"), str):
            problems.append(f"{where}: name missing or not a string")
        ph = ev.get("ph")
        if ph == "X":
            dur = ev.get("dur")
            if not isinstance(dur, (int, float)) or dur < 0:
                problems.append(f"{where}: dur missing or negative")
            elif isinstance(ev.get("ts"), (int, float)):
                ns0 = round(ev["ts"] * 1000)
                slices[ev.get("pid"), ev.get("tid")].append((ns0, ns0 + round(dur * 1000)))
        elif ph in ("s", "f"):
            flows[ev.get("cat"), ev.get("id")][ph].append(ev)
        elif ph == "C" and not all(isinstance(v, (int, float)) for v in (ev.get("args") or {}).values()):
            problems.append(f"{where}: counter args must be numbers")
    for (cat, fid), ends in flows.items():
        if len(ends["s"]) != 1 or len(ends["f"]) != 1:
            problems.append(f"flow id {fid} cat {cat!r}: {len(ends['s'])} start(s), {len(ends['f'])} finish(es)")
        elif ends["f"][0]["ts"] < ends["s"][0]["ts"]:
            problems.append(f"flow id {fid} cat {cat!r}: finishes before it starts")
    for key, spans in slices.items():
        stack: list[int] = []
        for a, b in sorted(spans, key=lambda x: (x[0], -x[1])):
            while stack and stack[-1] <= a:
                stack.pop()
            if stack and b > stack[-1]:
                problems.append(f"track pid {key[0]} tid {key[1]}: slice [{a}, {b}) ns overlaps one ending at "
                                f"{stack[-1]} ns without nesting")
                break
            stack.append(b)
    return problems
