"""The list scheduler: every instruction of an allocated machine-level module at
an exact cycle, on a unit instance, with its stream registers.

A pure analysis (`list_schedule` -> a frozen `ScheduleResult`) and an apply step
(`apply_schedule`). Deterministic: ready instructions are taken by critical-path
priority (the longest latency-weighted path from the instruction to the end),
ties by program order, and each goes to the earliest cycle where its
dependences and all its resources allow (earlier holes are filled).

Dependences (docs/machine-ir.md):
  - read after write: c_j >= c_i + lat_i, through views to the real producers;
    constants are in the SRAM image before cycle 0;
  - write after read, from the allocation: a value whose words held an earlier
    value lands (c + lat) no earlier than every reader of that value finishes
    (c_r + occ_r), and strictly after that value itself landed (so a value
    nobody read cannot land on top of its successor);
  - an `mxm.install` and the one `mxm.matmul` using it are placed together on
    one plane, which they hold from the install's issue to the matmul's end, so
    no other install lands between them.
Resources: unit instances, per-slice read ports [c, c+n), write ports
[c+lat-n, c+lat), stream registers [c, c+lat).

Views and constants are not instructions: constants get cycle 0; a view gets
the cycle its words have all landed (the latest landing of its operands), so
the scheduled op list, sorted by (cycle, program order), stays in SSA order.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

import ir.machine_ops as mo
from ir import Module
from ir.costs import Cost, cost, units
from ir.layout import Extent, sub_extents, words
from ir.machine import Machine

from .allocate import PLANE, SRAM, VIEW, operand_extents, storage, view_bases


# --- the instructions, their costs and dependences ------------------------------

@dataclass(frozen=True)
class Instruction:
    index: int                       # program order
    unit_class: str
    cost: Cost
    streams: int                     # registers held: one per SRAM operand and result


@dataclass(frozen=True)
class Program:
    """What the scheduler needs of an allocated module."""

    instructions: tuple[Instruction, ...]
    preds: tuple[tuple[tuple[int, int], ...], ...]  # per op index: (pred op index, delay): c >= c_pred + delay
    raw: tuple[tuple[tuple[int, int], ...], ...]    # the read-after-write subset (the critical path's edges)
    install_of: tuple[tuple[int, int], ...]         # (matmul index, install index)


def _split_out(op, where) -> list[tuple[Extent, ...]]:
    """The `out` extents of each SRAM result, in result order."""
    out, pos, parts = op.attrs.get("out", ()), 0, []
    for r in op.results:
        if where[r.name] == SRAM:
            n = words(r.type)
            parts.append(sub_extents(out, pos, n))
            pos += n
    return parts


def analyze(module: Module, machine: Machine) -> Program:
    where, bases = storage(module), view_bases(module)
    ops = module.ops
    producer = {r.name: i for i, op in enumerate(ops) for r in op.results}
    results_out = {}
    for op in ops:
        if op.name == "mem.constant" or mo.unit_class(op.name) is not None:
            for r, ext in zip([r for r in op.results if where[r.name] == SRAM], _split_out(op, where)):
                results_out[r.name] = ext
    extents = operand_extents(module, results_out)

    instrs, install_of = [], []
    readers: dict[str, list[int]] = {}        # SRAM value -> instructions reading it (directly or via views)
    preds: list[list[tuple[int, int]]] = [[] for _ in ops]
    raw: list[list[tuple[int, int]]] = [[] for _ in ops]
    costs: dict[int, Cost] = {}
    for i, op in enumerate(ops):
        cls = mo.unit_class(op.name)
        if cls is None:
            continue
        sram_operands = [v for v in op.operands if where[v.name] in (SRAM, VIEW)]
        reads = [extents[v.name] for v in sram_operands]
        writes = [results_out[r.name] for r in op.results if where[r.name] == SRAM]
        c = cost(op, machine, reads, writes)
        costs[i] = c
        instrs.append(Instruction(i, cls, c, len(reads) + len(writes)))
        for v in op.operands:
            if where[v.name] == PLANE:
                install_of.append((i, producer[v.name]))
                raw[i].append((producer[v.name], costs[producer[v.name]].latency))
            for b in bases.get(v.name, ()):
                readers.setdefault(b, []).append(i)
                p = producer[b]
                if ops[p].name != "mem.constant":
                    raw[i].append((p, costs[p].latency))
    for i in range(len(ops)):
        preds[i] = list(raw[i])

    # Write after read / write after write, from which earlier value held each word.
    owner = [np.full(machine.sram.words_per_slice, -1, np.int64) for _ in range(machine.sram.slices)]
    names = []
    for i, op in enumerate(ops):
        for r in op.results:
            if r.name not in results_out:
                continue
            vid = len(names)
            names.append(r.name)
            previous = set()
            for s, w, n in results_out[r.name]:
                previous.update(int(x) for x in np.unique(owner[s][w:w + n]) if x >= 0)
                owner[s][w:w + n] = vid
            lat = costs[i].latency if i in costs else 0
            for u in sorted(previous):
                u_name = names[u]
                p = producer[u_name]
                if ops[p].name == "mem.constant" or i not in costs:
                    raise AssertionError(f"{op.label()}: overwrites the SRAM image ({u_name})")
                preds[i].append((p, costs[p].latency - lat + 1))
                for rd in readers.get(u_name, ()):
                    if rd >= i:
                        raise AssertionError(f"{op.label()}: reuses the words of {u_name}, still read by op {rd}")
                    preds[i].append((rd, costs[rd].occupancy - lat))
    # Several paths can give the same predecessor: keep its largest delay, in a fixed order.
    def tidy(edges):
        best: dict[int, int] = {}
        for p, d in edges:
            best[p] = max(best.get(p, d), d)
        return tuple(sorted(best.items()))

    return Program(tuple(instrs), tuple(tidy(e) for e in preds), tuple(tidy(e) for e in raw), tuple(install_of))


# --- resource tables ----------------------------------------------------------

class _Busy:
    """Disjoint busy intervals [start, end) of one resource, sorted."""

    __slots__ = ("starts", "ends")

    def __init__(self):
        self.starts: list[int] = []
        self.ends: list[int] = []

    def first_fit(self, t: int, length: int) -> int:
        """The earliest t' >= t with [t', t'+length) free."""
        if length <= 0:
            return t
        starts, ends = self.starts, self.ends
        i = bisect_right(starts, t) - 1
        if i >= 0 and ends[i] > t:
            t = ends[i]
        i += 1
        while i < len(starts) and starts[i] < t + length:
            t = max(t, ends[i])
            i += 1
        return t

    def free(self, t: int, length: int) -> bool:
        return self.first_fit(t, length) == t

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        i = bisect_right(self.starts, start)
        if (i > 0 and self.ends[i - 1] > start) or (i < len(self.starts) and self.starts[i] < end):
            raise AssertionError(f"double booking [{start}, {end})")
        if i > 0 and self.ends[i - 1] == start:  # merge with the left neighbour
            self.ends[i - 1] = end
            if i < len(self.starts) and self.starts[i] == end:
                self.ends[i - 1] = self.ends[i]
                del self.starts[i], self.ends[i]
        elif i < len(self.starts) and self.starts[i] == end:
            self.starts[i] = start
        else:
            self.starts.insert(i, start)
            self.ends.insert(i, end)


class _Resources:
    def __init__(self, machine: Machine):
        self.machine = machine
        self.units = {cls: [_Busy() for _ in range(n)] for cls, n in units(machine).items()}
        self.read = [_Busy() for _ in range(machine.sram.slices)]
        self.write = [_Busy() for _ in range(machine.sram.slices)]
        self.streams = [_Busy() for _ in range(machine.streams.east + machine.streams.west)]

    def windows(self, c: Cost) -> list[tuple[_Busy, int, int]]:
        """(resource, offset from issue, length) of the port windows of an instruction."""
        rp, wp = self.machine.sram.read_ports, self.machine.sram.write_ports
        out = [(self.read[s], 0, -(-n // rp)) for s, n in c.reads]
        out += [(self.write[s], c.latency - -(-n // wp), -(-n // wp)) for s, n in c.writes]
        return out

    def fit(self, t: int, reqs, n_streams: int, hold: int) -> int:
        """The earliest cycle >= t where every window of `reqs` and `n_streams` registers
        (held [c, c+hold)) are free."""
        while True:
            moved = True
            while moved:
                moved = False
                for busy, off, length in reqs:
                    t2 = busy.first_fit(t + off, length) - off
                    if t2 > t:
                        t, moved = t2, True
            if n_streams == 0:
                return t
            fits = sorted(b.first_fit(t, hold) for b in self.streams)
            if fits[n_streams - 1] == t:
                return t
            t = fits[n_streams - 1]

    def take_streams(self, t: int, n: int, hold: int) -> tuple[int, ...]:
        ids = tuple(k for k, b in enumerate(self.streams) if b.free(t, hold))[:n]
        assert len(ids) == n
        for k in ids:
            self.streams[k].add(t, t + hold)
        return ids

    def book(self, t: int, reqs) -> None:
        for busy, off, length in reqs:
            busy.add(t + off, t + off + length)


# --- the schedule ---------------------------------------------------------------

@dataclass(frozen=True)
class Placement:
    cycle: int
    unit: str | None = None
    streams: tuple[int, ...] = ()


@dataclass(frozen=True)
class ScheduleResult:
    placements: tuple[Placement, ...]   # one per op, in program order
    cycles: int                         # the program's length: max c + lat
    critical_path: int                  # longest latency-weighted read-after-write path
    resource_bound: int                 # max over resources of work / capacity
    bound_resource: str                 # which resource gives resource_bound
    instructions: int

    @property
    def lower_bound(self) -> int:
        return max(self.critical_path, self.resource_bound)

    @property
    def gap(self) -> float:
        return self.cycles / self.lower_bound - 1 if self.lower_bound else 0.0


def _priorities(program: Program, n_ops: int) -> list[int]:
    """Longest latency-weighted path from each instruction to the end."""
    lat = {ins.index: ins.cost.latency for ins in program.instructions}
    succ: list[list[int]] = [[] for _ in range(n_ops)]
    for j in range(n_ops):
        for p, _ in program.raw[j]:
            succ[p].append(j)
    prio = [0] * n_ops
    for ins in reversed(program.instructions):
        i = ins.index
        prio[i] = lat[i] + max((prio[j] for j in succ[i]), default=0)
    return prio


def lower_bounds(program: Program, machine: Machine) -> tuple[int, int, str]:
    """(critical path, resource bound, the resource that gives it)."""
    prio = _priorities(program, len(program.preds))
    critical = max(prio, default=0)
    work: dict[str, int] = {}
    for ins in program.instructions:
        work[ins.unit_class] = work.get(ins.unit_class, 0) + ins.cost.occupancy
        work["streams"] = work.get("streams", 0) + ins.streams * ins.cost.latency
        for s, n in ins.cost.reads:
            work[f"slice{s}.read"] = work.get(f"slice{s}.read", 0) + -(-n // machine.sram.read_ports)
        for s, n in ins.cost.writes:
            work[f"slice{s}.write"] = work.get(f"slice{s}.write", 0) + -(-n // machine.sram.write_ports)
    capacity = {**units(machine), "streams": machine.streams.east + machine.streams.west}
    best, which = 0, "none"
    for name in sorted(work):
        b = -(-work[name] // capacity.get(name, 1))
        if b > best:
            best, which = b, name
    return critical, best, which


@dataclass(frozen=True)
class ListScheduler:
    """Options of the list scheduler (none yet beyond the machine)."""

    def __call__(self, module: Module, machine: Machine) -> Module:
        return apply_schedule(module, list_schedule(module, machine))


def list_schedule(module: Module, machine: Machine) -> ScheduleResult:
    ops = module.ops
    program = analyze(module, machine)
    by_index = {ins.index: ins for ins in program.instructions}
    prio = _priorities(program, len(ops))
    pair_of = dict(program.install_of)  # matmul -> install
    install_user = {inst: mm for mm, inst in program.install_of}

    # Scheduling items: single instructions, or (install, matmul) pairs keyed by the install.
    def item_of(i: int) -> int:
        return pair_of.get(i, i)

    members: dict[int, list[int]] = {}
    for ins in program.instructions:
        members.setdefault(item_of(ins.index), []).append(ins.index)
    waiting = {}
    succs: dict[int, list[int]] = {}
    for key, mem in members.items():
        ps = {item_of(p) for m in mem for p, _ in program.preds[m] if p in by_index} - {key}
        waiting[key] = len(ps)
        for p in sorted(ps):
            succs.setdefault(p, []).append(key)

    res = _Resources(machine)
    cycle: dict[int, int] = {}
    placement: dict[int, Placement] = {}
    ready = [(-prio[k], k) for k in sorted(members) if waiting[k] == 0]
    heapq.heapify(ready)

    def earliest(i: int) -> int:
        return max([0] + [cycle[p] + d for p, d in program.preds[i]])

    def place_single(i: int) -> None:
        ins = by_index[i]
        c, reqs, hold = ins.cost, res.windows(by_index[i].cost), ins.cost.latency
        t0 = earliest(i)
        best = None
        for k, busy in enumerate(res.units[ins.unit_class]):
            t = res.fit(t0, reqs + [(busy, 0, c.occupancy)], ins.streams, hold)
            if best is None or t < best[0]:
                best = (t, k, busy)
        t, k, busy = best
        res.book(t, reqs + [(busy, 0, c.occupancy)])
        cycle[i] = t
        placement[i] = Placement(t, f"{ins.unit_class}{k}", res.take_streams(t, ins.streams, hold))

    def place_pair(inst: int, mm: int) -> None:
        a, b = by_index[inst], by_index[mm]
        ra, rb = res.windows(a.cost), res.windows(b.cost)
        ta = earliest(inst)
        tb = max([0] + [cycle[p] + d for p, d in program.preds[mm] if p != inst])  # all but its install
        best = None
        for k, plane in enumerate(res.units["mxm"]):
            t2 = max(tb, ta + a.cost.latency)
            while True:
                t2 = res.fit(t2, rb + [(plane, 0, b.cost.occupancy)], b.streams, b.cost.latency)
                # Install as late as possible: the plane is held from its issue to the matmul's end.
                t1 = res.fit(max(ta, t2 - a.cost.latency), ra + [(plane, 0, a.cost.occupancy)],
                             a.streams, a.cost.latency)
                if t1 + a.cost.latency > t2:
                    t2 = t1 + a.cost.latency
                    continue
                span_end = t2 + b.cost.occupancy
                if not plane.free(t1, span_end - t1):
                    t2 = plane.first_fit(t1, span_end - t1) + a.cost.latency
                    continue
                break
            if best is None or (t2, t1) < best[:2]:
                best = (t2, t1, k, plane)
        t2, t1, k, plane = best
        res.book(t1, ra)
        cycle[inst] = t1
        placement[inst] = Placement(t1, f"mxm{k}", res.take_streams(t1, a.streams, a.cost.latency))
        res.book(t2, rb)
        plane.add(t1, t2 + b.cost.occupancy)
        cycle[mm] = t2
        placement[mm] = Placement(t2, f"mxm{k}", res.take_streams(t2, b.streams, b.cost.latency))

    while ready:
        _, key = heapq.heappop(ready)
        if key in install_user:
            place_pair(key, install_user[key])
        else:
            place_single(key)
        for s in succs.get(key, ()):
            waiting[s] -= 1
            if waiting[s] == 0:
                heapq.heappush(ready, (-prio[s], s))
    if len(cycle) != len(by_index):
        raise AssertionError("dependence cycle: some instructions were never ready")

    # Constants at 0; views when their words have all landed.
    available: dict[str, int] = {}
    out = []
    for i, op in enumerate(ops):
        if i in by_index:
            p = placement[i]
            for r in op.results:
                available[r.name] = p.cycle + by_index[i].cost.latency
        else:
            t = max([0] + [available.get(v.name, 0) for v in op.operands]) if op.name in mo.VIEWS else 0
            p = Placement(t)
            for r in op.results:
                available[r.name] = t
        out.append(p)
    cycles = max([0] + [cycle[i] + by_index[i].cost.latency for i in by_index])
    critical, resource, which = lower_bounds(program, machine)
    return ScheduleResult(tuple(out), cycles, critical, resource, which, len(by_index))


def apply_schedule(module: Module, result: ScheduleResult) -> Module:
    """Write cycle / unit / streams and order the ops by (cycle, program order)."""
    ops = []
    for i, (op, p) in enumerate(zip(module.ops, result.placements, strict=True)):
        attrs = {**dict(op.attrs), "cycle": p.cycle}
        if p.unit is not None:
            attrs.update(unit=p.unit, streams=p.streams)
        ops.append((p.cycle, i, type(op)(op.name, op.operands, op.results, attrs)))
    ops.sort(key=lambda x: (x[0], x[1]))
    return module.replace(ops=tuple(op for _, _, op in ops))


__all__ = ["ListScheduler", "Placement", "Program", "ScheduleResult", "analyze", "apply_schedule",
           "list_schedule", "lower_bounds"]
