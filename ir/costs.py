"""THE cost table: occupancy and latency of every machine instruction, from the
machine description. The scheduler and the interpreter both call `cost`; the
interpreter recomputes it rather than trusting the program.

- occupancy: cycles the instruction holds its unit and streams; its SRAM read
  ports are held while its operand words stream out (one word per port per cycle),
  so occupancy is at least the words read from, or written to, its busiest slice.
  A gather reads only the rows its indices select: it costs the rows gathered, and
  holds each slice of its table for at most that many words (which slices is known
  only at run time, so every slice the table spans is held).
- latency: cycles from issue until its results are in SRAM: occupancy plus
  the unit's pipeline depth (`machine.units[class].latency`).
- a state write (`in_place`) writes only its new rows into its state, at a
  position known at run time: it costs the rows, and holds each slice of the
  state for at most that many words (it reads none of the state).
- a `c2c.send` streams its words at the link rate (c2c.bytes_per_cycle) through
  every hop of its route, cut-through: hop k carries them during
  [c + k * hop_latency, c + k * hop_latency + occupancy) (`link_windows`); they
  have all arrived at c + latency = c + occupancy + hops * hop_latency +
  latency.c2c. The `c2c.recv` then writes them into SRAM like any result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from .core import Op
from .layout import vectors, words
from .machine import Machine
from .machine_ops import UNIT_CLASSES, unit_class
from .registry import LINK, OPS, PLANE

Extent = tuple[int, int, int]  # (slice, first word, words)


class Cost(NamedTuple):  # one per instruction, millions in a large program: a tuple hashes and compares in C
    occupancy: int
    latency: int
    reads: tuple[tuple[int, int], ...] = ()   # (slice, words read) per slice touched
    writes: tuple[tuple[int, int], ...] = ()  # (slice, words written)


def units(machine: Machine) -> dict[str, int]:
    """Unit class -> instances per chip (named class + index, e.g. vxm0..vxm15), in UNIT_CLASSES order."""
    return {c.name: machine.units[c.name].count for c in UNIT_CLASSES}


def compute_cycles(op: Op, machine: Machine) -> int:
    """Cycles of the unit's own work, from the types alone."""
    cls, opdef = unit_class(op.name), OPS[op.name]
    types = [v.type for v in op.operands] + [r.type for r in op.results]
    lanes, word_bytes = machine.lanes, machine.sram.word_bytes
    if cls == "vxm":
        per_vector = -(-max(t.dtype.itemsize for t in types) // 4)  # 64-bit types take two passes
        if opdef.transcendental:
            per_vector *= machine.vxm.transcendental_cycles
        return max(vectors(t, lanes) for t in types) * per_vector
    if opdef.indexed:  # indexed reads: the rows gathered, not the table
        return max(words(t, lanes) for t in types[1:])
    if opdef.in_place:  # an indexed write: the new rows, not the state
        return max(words(t, lanes) for t in types[1:-1])
    if cls in ("sxm", "mem"):
        return max(words(t, lanes) for t in types)
    if cls == "mxm":
        installs = opdef.result_place == PLANE  # loads the tile w onto a plane, else streams x through it
        w = op.results[0].type if installs else op.operands[1].type  # (an install's result: its tile)
        batch = w.numel // (w.shape[-2] * w.shape[-1]) if w.numel else 0
        if installs:  # one weight row per cycle per byte-plane
            return max(batch * w.shape[-2] * w.dtype.itemsize, 1)
        x = op.operands[0].type
        rows = x.numel // x.shape[-1] if x.numel else 0
        rate = machine.mxm.rate(x.dtype, w.dtype)
        return max(int(-(-rows // rate)), 1)
    if cls == "host":
        return max(int(-(-words(op.operands[0].type, lanes) * word_bytes // machine.host.bytes_per_cycle)), 1)
    if cls == "tx":
        return max(int(-(-words(op.operands[0].type, lanes) * word_bytes // machine.c2c.bytes_per_cycle)), 1)
    if cls == "rx":
        return max(words(op.operands[0].type, lanes), 1)
    raise AssertionError(op.name)


class UnitCycles:
    """compute_cycles of a machine's instructions, found once per kind of instruction (its name and types, all
    it depends on): a program's layers repeat a few kinds a million times."""

    def __init__(self, machine: Machine):
        self.machine = machine
        self._known: dict[tuple, int] = {}  # (op name, operand types, result types) -> cycles

    def __call__(self, op: Op) -> int:
        kind = (op.name, tuple([v.type for v in op.operands]), tuple([r.type for r in op.results]))
        cycles = self._known.get(kind)
        if cycles is None:
            cycles = self._known[kind] = compute_cycles(op, self.machine)
        return cycles


def link_windows(op: Op, machine: Machine, occupancy: int) -> list[tuple[int, int, int]]:
    """(hop, offset from issue, length) of each link a `c2c.send` holds; [] for anything else."""
    if OPS[op.name].result_place != LINK:
        return []
    h = machine.c2c.hop_latency_cycles
    return [(k, k * h, occupancy) for k in range(len(op.attrs["route"]))]


def cost(op: Op, machine: Machine, reads: Sequence[Sequence[Extent]] = (),
         writes: Sequence[Sequence[Extent]] = (), cycles: int | None = None) -> Cost:
    """Occupancy and latency of `op`, reading the operand extents `reads` and
    writing the result extents `writes` (one extent list per SRAM operand/result; a read extent may carry
    more fields after (slice, first word, words)).
    `cycles`: compute_cycles(op, machine) when the caller has it (from an op of the same name and types)."""
    cls = unit_class(op.name)
    if cls is None:
        return Cost(0, 0)
    per_read: dict[int, int] = {}  # (plain dicts: a Counter's missing key is a Python call, per instruction)
    per_write: dict[int, int] = {}
    for k, extents in enumerate(reads):
        for e in extents:  # (an extent may carry more fields after its three: the interpreter's base id)
            s = e[0]
            per_read[s] = per_read.get(s, 0) + e[2]
        if k == 0 and OPS[op.name].indexed:
            # Which rows are read depends on the indices: at worst all from one slice, so each slice of the
            # table is held for as many words as the result has (or all it holds, if fewer).
            gathered = words(op.results[0].type, machine.lanes)
            for e in extents:
                per_read[e[0]] = min(per_read[e[0]], gathered)
    for extents in writes:
        for s, _, n in extents:
            per_write[s] = per_write.get(s, 0) + n
    if OPS[op.name].in_place:
        # It writes only the new rows, where its position says (known at run time): at worst all into one
        # slice, so each slice of the state is held for as many words as the rows have (or all it holds).
        written = words(op.operands[1].type, machine.lanes)
        for s in per_write:
            per_write[s] = min(per_write[s], written)
    ports = machine.sram
    occupancy = max([compute_cycles(op, machine) if cycles is None else cycles]
                    + [-(-n // ports.read_ports) for n in per_read.values()]
                    + [-(-n // ports.write_ports) for n in per_write.values()])
    latency = occupancy + machine.units[cls].latency
    if cls == "tx":
        latency += len(op.attrs["route"]) * machine.c2c.hop_latency_cycles
    return _shared(Cost(occupancy, latency, tuple(sorted(per_read.items())), tuple(sorted(per_write.items()))))


_SHARED: dict[Cost, Cost] = {}  # a program's repeated layers repeat its costs: at 70B, a few thousand for a million
_SHARED_MAX = 1 << 16           # instructions, so each equal cost is kept once (bounded: a cache, not a record)


def _shared(c: Cost) -> Cost:
    if len(_SHARED) >= _SHARED_MAX:
        _SHARED.clear()
    return _SHARED.setdefault(c, c)
