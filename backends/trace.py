"""Timelines as Chrome trace-event JSON, for ui.perfetto.dev and chrome://tracing.

One code path for both timelines `lpuc` writes:

- `static_trace(program)`: what the schedule says, from the program's description
  (ir.schedule_facts: docs/machine-ir.md "Timing"); it equals the interpreter's
  `Result.trace` for any program the interpreter runs;
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
  measures the SRAM peak) and "SRAM slice N" per slice used, from the
  schedule (ir.schedule_facts) whichever events are drawn;
- chip-to-chip transfers (`Transfer`): an "X" on the sender's and the receiver's
  link track joined by a flow arrow (an "s" / "f" pair, one id).

The document is made chip by chip (`_trace`): a chip's metadata, then its events in time
order. `write_trace` streams it into a file (gzip-compressed too), holding one chip's
events at a time; `chrome_trace` and `trace_json` give it whole, for tests and small
programs.

Time: cycles at the machine clock, in microseconds as the format wants:
`ts = cycle / clock_mhz`, rounded to whole nanoseconds (so slices that touch
share their boundary exactly); every event's args also carry its exact cycle.
`displayTimeUnit` "ns" makes the viewers show nanoseconds.
"""

from __future__ import annotations

import gzip
import io
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import BinaryIO
from dataclasses import dataclass
from fractions import Fraction

from ..ir import machine_ops as mo
from ..ir.costs import units
from ..ir.errors import LpucError
from ..ir.layout import words
from ..ir.schedule_facts import Facts

from .interpreter import TraceEvent
from .lpu import Program

UNIT_ORDER = tuple(c.name for c in mo.UNIT_CLASSES if not c.link)  # unit tracks within a chip (links: their own)
PORT_TID = 1000    # slice s: read port PORT_TID + 2s, write port PORT_TID + 2s + 1
LINK_TID = 10000   # link l: LINK_TID + l


def static_trace(program: Program) -> tuple[TraceEvent, ...]:
    """The scheduled timeline: one TraceEvent per timed instruction, ordered as the interpreter's trace."""
    return _events(program.facts)


def _events(facts: Facts) -> tuple[TraceEvent, ...]:
    events = [TraceEvent(ins.op.label(), ins.op.name, ins.op.attrs.get("unit") or "", ins.cycle,
                         ins.cycle + ins.cost.occupancy, ins.land, ins.chip) for ins in facts.scheduled]
    return tuple(sorted(events, key=lambda e: (e.start, e.chip, e.unit, e.land, e.instruction)))


def transfers_of(program: Program) -> tuple[Transfer, ...]:
    """The chip-to-chip transfers of a scheduled program: one per timed c2c.send, on its first link, landing
    when its words have all arrived (its cost, ir.schedule_facts)."""
    machine, target = program.machine, program.target
    if target.chips == 1:
        return ()
    out = []
    for ins in program.facts.scheduled:
        if not ins.links:  # not a send, or one whose route is broken (the interpreter reports it)
            continue
        op, c, route = ins.op, ins.cycle, ins.op.attrs["route"]
        dst, port = target.network.destination(ins.chip, route)
        out.append(Transfer(op.result.name, ins.chip, dst, route[0], c, c + ins.cost.occupancy, ins.land,
                            words(op.operands[0].type, machine.lanes) * machine.sram.word_bytes, port))
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
    if dst[2] < src[2]:
        raise ValueError(f"flow {name!r}: it ends ({dst[2]}) before it starts ({src[2]})")
    return [flow_end("s", flow_id, name, cat, *src), flow_end("f", flow_id, name, cat, *dst)]


def flow_end(ph: str, flow_id: int, name: str, cat: str, pid: int, tid: int, ts: float) -> dict:
    """One end of a flow arrow: "s" (its start) or "f" (its finish, bound to the enclosing slice)."""
    return {"ph": ph, "id": flow_id, "name": name, "cat": cat, "pid": pid, "tid": tid, "ts": ts,
            **({"bp": "e"} if ph == "f" else {})}


# --- the trace-event document --------------------------------------------------------

def chrome_trace(program: Program, events: Sequence[TraceEvent] | None = None, *, source: str = "schedule",
                 transfers: Iterable[Transfer] | None = None, per_slice: bool = True,
                 chips: Iterable[int] | None = None) -> dict:
    """The trace-event JSON object of `events` (default: the static schedule) of `program`, with its
    chip-to-chip `transfers` (default: the program's own). `chips`: only these chips' tracks (a transfer
    drawn on the side of it that is one of them, its flow arrow when both are)."""
    other, sections = _trace(program, events, source=source, transfers=transfers, per_slice=per_slice, chips=chips)
    return {"traceEvents": [ev for section in sections for ev in section], **other}


def _trace(program: Program, events: Sequence[TraceEvent] | None, *, source: str,
           transfers: Iterable[Transfer] | None, per_slice: bool, chips: Iterable[int] | None):
    """(the document's keys but its events, the events chip by chip: an iterator of lists). A chip's list is
    made when it is reached and can be dropped once written, so a trace of hundreds of chips is written
    holding one chip's events at a time: its metadata (process, tracks), then its events in time order."""
    machine = program.machine
    facts = program.facts
    details = {ins.op.label(): ins for ins in facts.instructions}
    if events is None:
        events = _events(facts)
    transfers = transfers_of(program) if transfers is None else tuple(transfers)
    clock = Fraction(machine.clock_mhz).limit_denominator(10**6)

    def us(cycle: int) -> float:  # cycles -> microseconds, on a whole-nanosecond grid
        return round(cycle * 1000 / clock) / 1000

    for e in events:
        if e.instruction not in details:
            raise LpucError(f"trace: {e.instruction} is not an instruction of @{program.module.name}")
    shown = None if chips is None else frozenset(chips)
    chips = sorted({0} | {details[e.instruction].chip for e in events}
                   | {t.src_chip for t in transfers} | {t.dst_chip for t in transfers})
    if shown is not None:
        chips = [c for c in chips if c in shown]
    by_chip: dict[int, list[TraceEvent]] = defaultdict(list)
    for e in events:
        by_chip[details[e.instruction].chip].append(e)
    ends: dict[int, list[tuple[int, str, int, int, int, Transfer]]] = defaultdict(list)  # chip -> its link ends
    for k, t in enumerate(transfers):
        recv = t.land - (t.end - t.start)
        dst_link = t.link if t.dst_link is None else t.dst_link
        both = shown is None or (t.src_chip in shown and t.dst_chip in shown)
        ends[t.src_chip].append((k, "s" if both else "", t.link, t.start, t.end, t))
        ends[t.dst_chip].append((k, "f" if both else "", dst_link, recv, t.land, t))
    curves = defaultdict(list)  # chip -> its SRAM live curves (made into counter events chip by chip)
    for (chip, s), curve in facts.sram_live(slices=per_slice).items():
        curves[chip].append((s, curve.tolist()))
    unit_tids = {}
    counts = units(machine)
    for cls in UNIT_ORDER:
        for i in range(counts.get(cls, 0)):
            unit_tids[f"{cls}{i}"] = len(unit_tids) + 1
    every_chip = dict(unit_tids)  # a track on every chip; other units (a send's tx) only where they work
    rp, wp = machine.sram.read_ports, machine.sram.write_ports

    def section(chip: int) -> list[dict]:
        pid = chip + 1
        tracks: dict[int, str] = {tid: unit for unit, tid in every_chip.items()}
        body: list[dict] = []
        for e in by_chip[chip]:
            d = details[e.instruction]
            tid = unit_tids.get(e.unit)
            if tid is None:  # a unit the machine does not have (a broken program): its own track
                tid = unit_tids[e.unit] = len(unit_tids) + 1
            tracks.setdefault(tid, e.unit or "no unit")
            ts = us(e.start)
            body.append({
                "ph": "X", "cat": "instruction", "name": e.op, "pid": pid, "tid": tid, "ts": ts,
                "dur": round(us(e.end) - ts, 3),
                "args": {
                    "instruction": e.instruction, "unit": e.unit, "cycle": e.start,
                    "occupancy": e.end - e.start, "latency": e.land - e.start, "lands": e.land,
                    "operands": [f"%{v.name}" for v in d.op.operands], "results": [f"%{r.name}" for r in d.op.results],
                    "operand_extents": [[list(x) for x in r] for r in d.operand_extents()],
                    "result_extents": [[list(x) for x in w] for w in d.writes or [()] * len(d.op.results)],
                }})
            for sl, n in d.cost.reads:
                held = -(-n // rp)
                tracks.setdefault(PORT_TID + 2 * sl, f"slice {sl} read")
                body.append({"ph": "X", "cat": "sram.read", "name": e.op, "pid": pid, "tid": PORT_TID + 2 * sl,
                             "ts": ts, "dur": round(us(e.start + held) - ts, 3),
                             "args": {"instruction": e.instruction, "slice": sl, "words": n, "cycle": e.start}})
            for sl, n in d.cost.writes:
                held = -(-n // wp)
                tracks.setdefault(PORT_TID + 2 * sl + 1, f"slice {sl} write")
                t0 = us(e.land - held)
                body.append({"ph": "X", "cat": "sram.write", "name": e.op, "pid": pid, "tid": PORT_TID + 2 * sl + 1,
                             "ts": t0, "dur": round(us(e.land) - t0, 3),
                             "args": {"instruction": e.instruction, "slice": sl, "words": n,
                                      "cycle": e.land - held}})
        for k, flow, link, start, end, t in ends[chip]:  # its side of each transfer, and its end of the arrow
            tid = LINK_TID + link
            tracks.setdefault(tid, f"link {link}")
            args = {"transfer": t.name, "from": f"chip{t.src_chip}", "to": f"chip{t.dst_chip}", "bytes": t.bytes,
                    "cycle": t.start, "lands": t.land}
            body.append({"ph": "X", "cat": "link", "name": t.name, "pid": pid, "tid": tid, "ts": us(start),
                         "dur": round(us(end) - us(start), 3), "args": args})
            if flow:
                body.append(flow_end(flow, k + 1, t.name, "transfer", pid, tid, us(start)))
        body += _sram_counters(chip, curves.pop(chip, ()), us, facts.machine.sram.word_bytes)
        body.sort(key=lambda ev: (ev["ts"], ev["tid"], -ev.get("dur", 0)))
        head = [{"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "ts": 0,
                 "args": {"name": f"chip{chip} ({machine.name})"}},
                {"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "ts": 0, "args": {"sort_index": chip}}]
        for tid, name in sorted(tracks.items()):
            head.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "ts": 0, "args": {"name": name}})
            head.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "ts": 0,
                         "args": {"sort_index": tid}})
        return head + body

    cycles = max([e.land for e in events] + [t.land for t in transfers], default=0)
    other = {
        "displayTimeUnit": "ns",
        "otherData": {
            "tool": "lpuc", "module": program.module.name, "machine": machine.name, "chips": len(chips),
            "source": source, "cycles": cycles, "clock_mhz": machine.clock_mhz,
            "instructions": sum(len(by_chip[c]) for c in chips),
            "time": "ts and dur in microseconds: cycles / clock_mhz, rounded to whole nanoseconds",
        },
    }
    return other, (section(chip) for chip in chips)


def _sram_counters(chip: int, curves, us, word_bytes: int) -> list[dict]:
    """Bytes live on `chip` (and per slice) over time: its SRAM live curves (ir.schedule_facts), as
    [(slice or None for the whole chip, curve)], the whole chip's first."""
    counters = []
    for s, curve in sorted(curves, key=lambda sc: -1 if sc[0] is None else sc[0]):
        name = "SRAM live" if s is None else f"SRAM slice {s}"
        for t, live in zip(curve[0::2], curve[1::2]):
            counters.append({"ph": "C", "name": name, "pid": chip + 1, "tid": 0, "ts": us(t),
                             "args": {"bytes": live * word_bytes}})
    return counters


def trace_json(program: Program, events: Sequence[TraceEvent] | None = None, *, compress: bool = False,
               **kwargs) -> bytes:
    """`chrome_trace` as UTF-8 JSON bytes (compact, one event per line); `compress`: gzip-compressed."""
    out = io.BytesIO()
    write_trace(out, program, events, compress=compress, **kwargs)
    return out.getvalue()


def write_trace(out: BinaryIO, program: Program, events: Sequence[TraceEvent] | None = None, *,
                compress: bool = False, source: str = "schedule", transfers: Iterable[Transfer] | None = None,
                per_slice: bool = True, chips: Iterable[int] | None = None, progress=None) -> None:
    """Write `chrome_trace` to `out` as compact JSON, one event per line, chip by chip (holding one chip's
    events at a time); `compress`: gzip-compressed (as Perfetto and chrome://tracing open a .json.gz), the
    same bytes every time (no timestamp, no name in the header); `progress`: called with a line now and
    then."""
    other, sections = _trace(program, events, source=source, transfers=transfers, per_slice=per_slice, chips=chips)
    sink = gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=6, mtime=0) if compress else out
    sink.write(b'{"traceEvents":[\n')
    first = True
    for n, section in enumerate(sections):
        if progress and n % 32 == 0:
            progress(f"trace: chip {n + 1} of {other['otherData']['chips']}")
        if section:
            text = ",\n".join(json.dumps(ev, separators=(",", ":")) for ev in section)
            sink.write((text if first else ",\n" + text).encode())
            first = False
    sink.write(("\n],\n" + json.dumps(other)[1:] + "\n").encode())
    if compress:
        sink.close()


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
