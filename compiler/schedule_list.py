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
  - a c2c.recv issues once its send's words have all arrived (c_send + lat_send).
Resources, per chip: unit instances, per-slice read ports [c, c+n), write ports
[c+lat-n, c+lat), stream registers [c, c+lat); and every link direction a send's
route takes (ir.costs.link_windows). A send's unit is the transmit side of its
first port, a receive's the receive side of its arrival port: both fixed by the
route, not chosen.

Views and constants are not instructions: constants get cycle 0; a view gets
the cycle its words have all landed (the latest landing of its operands), so
the scheduled op list, sorted by (cycle, program order), stays in SSA order.
"""

from __future__ import annotations

import heapq
from array import array
from bisect import bisect_right
from collections import defaultdict
from itertools import islice
from dataclasses import dataclass, field

import numpy as np

from ..ir import machine_ops as mo
from ..ir import Module
from ..ir.costs import units
from ..ir.machine import Machine
from ..ir.pieces import find_pieces
from ..ir.target import Target
from ..ir.registry import LINK, OPS, PLANE
from ..ir.schedule_facts import Facts, Instruction, describe, view_bases

from .passes import Pass


# --- the instructions and their dependences ---------------------------------------

@dataclass(frozen=True)
class Program:
    """What the scheduler needs of an allocated module: its instructions (ir.schedule_facts) and the
    dependences between them."""

    instructions: tuple[Instruction, ...]
    preds: tuple[tuple[tuple[int, int], ...], ...]  # per op index: (pred op index, delay): c >= c_pred + delay
    raw: tuple[tuple[tuple[int, int], ...], ...]    # the read-after-write subset (the critical path's edges)
    install_of: tuple[tuple[int, int], ...]         # (matmul index, install index)


def analyze(module: Module, target: Target, facts: Facts | None = None) -> Program:
    """`facts`: the module's description, when the caller has it already."""
    machine = target.machine
    facts = facts or describe(module, target)
    where, bases = facts.places, view_bases(module)
    ops = module.ops
    producer = {r.name: i for i, op in enumerate(ops) for r in op.results}
    results_out = {b.name: b.extents for b in facts.bases}
    costs = {ins.index: ins.cost for ins in facts.instructions}
    install_of = []
    readers: dict[str, list[int]] = {}        # SRAM value -> instructions reading it (directly or via views)
    preds: list[list[tuple[int, int]]] = [[] for _ in ops]
    raw: list[list[tuple[int, int]]] = [[] for _ in ops]
    for ins in facts.instructions:
        i = ins.index
        for v in ins.op.operands:
            if where[v.name] in (PLANE, LINK):
                if where[v.name] == PLANE:
                    install_of.append((i, producer[v.name]))
                raw[i].append((producer[v.name], costs[producer[v.name]].latency))
            for b in bases.get(v.name, ()):
                readers.setdefault(b, []).append(i)
                p = producer[b]
                if not mo.is_pinned(ops[p].name):
                    raw[i].append((p, costs[p].latency))
    for i in range(len(ops)):
        preds[i] = list(raw[i])
    # A state write lands in its state's own words: whatever reads the state as it was (before it in program
    # order, e.g. attention scoring the cache while the step's key is still on its way) finishes first.
    for ins in facts.instructions:
        i = ins.index
        if OPS[ins.op.name].in_place:
            for b in bases.get(ins.op.operands[0].name, ()):
                for rd in readers.get(b, ()):
                    if rd > i:
                        raise AssertionError(f"{ops[i].label()}: overwrites {b}, read after it by op {rd}")
                    if rd != i:
                        preds[i].append((rd, costs[rd].occupancy - costs[i].latency))

    # Write after read / write after write, from which earlier value held each word: chip by chip (chips share
    # no words), so one table of owners (slice x word -> the value there) serves every chip in turn.
    results_on: dict[int, list[tuple[int, str]]] = {}  # chip -> its SRAM results (op index, name), in order
    for i, op in enumerate(ops):
        for r in op.results:
            if r.name in results_out and not OPS[op.name].in_place:  # (a state write: its state's own words)
                results_on.setdefault(mo.chip_of(op), []).append((i, r.name))
    owner = np.empty((machine.sram.slices, machine.sram.words_per_slice), np.int32)
    for chip in sorted(results_on):
        owner.fill(-1)
        names = []
        for i, name in results_on[chip]:
            vid = len(names)
            names.append(name)
            previous = set()
            for s, w, n in results_out[name]:
                held = owner[s, w:w + n]
                if not n:
                    continue
                if held[0] == held[-1] and (held == held[0]).all():  # (the usual case: one earlier value)
                    previous.add(int(held[0]))
                else:
                    previous.update(int(x) for x in np.unique(held))
                held[:] = vid
            previous.discard(-1)  # (words no value held)
            lat = costs[i].latency if i in costs else 0
            for u in sorted(previous):
                u_name = names[u]
                p = producer[u_name]
                if mo.is_constant(ops[p].name) or i not in costs:
                    raise AssertionError(f"{ops[i].label()}: overwrites the SRAM image ({u_name})")
                preds[i].append((p, costs[p].latency - lat + 1))
                for rd in readers.get(u_name, ()):
                    if rd >= i:
                        raise AssertionError(f"{ops[i].label()}: reuses the words of {u_name}, still read by "
                                             f"op {rd}")
                    preds[i].append((rd, costs[rd].occupancy - lat))
    # Several paths can give the same predecessor: keep its largest delay (sorted, the last of each), in a
    # fixed order.
    def tidy(edges):
        return tuple(dict(sorted(edges)).items())

    return Program(facts.instructions, tuple(tidy(e) for e in preds), tuple(tidy(e) for e in raw),
                   tuple(install_of))


# --- resource tables ----------------------------------------------------------

class _Busy:
    """Disjoint busy intervals [start, end) of one resource, sorted."""

    __slots__ = ("starts", "ends")

    def __init__(self):
        self.starts: list[int] = []
        self.ends: list[int] = []

    def first_fit(self, t: int, length: int) -> int:
        """The earliest t' >= t with [t', t'+length) free."""
        starts, ends = self.starts, self.ends
        if length <= 0 or not ends or t >= ends[-1]:  # (the usual case: past everything booked)
            return t
        i = bisect_right(starts, t) - 1
        if i >= 0 and ends[i] > t:
            t = ends[i]
        i += 1
        n = len(starts)
        while i < n and starts[i] < t + length:
            t = ends[i]  # (> t: the intervals are disjoint and sorted)
            i += 1
        return t

    def free(self, t: int, length: int) -> bool:
        """first_fit(t, length) == t: nothing booked overlaps [t, t+length)."""
        starts = self.starts
        if length <= 0 or not starts or t >= self.ends[-1]:
            return True
        i = bisect_right(starts, t)
        return (i == 0 or self.ends[i - 1] <= t) and (i == len(starts) or starts[i] >= t + length)

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


class _Chip:
    """One chip's resources."""

    def __init__(self, machine: Machine):
        self.units = {cls: [_Busy() for _ in range(n)] for cls, n in units(machine).items()}
        self.read = [_Busy() for _ in range(machine.sram.slices)]
        self.write = [_Busy() for _ in range(machine.sram.slices)]
        self.streams = [_Busy() for _ in range(machine.streams.east + machine.streams.west)]


class _Resources:
    def __init__(self, machine: Machine):
        self.machine = machine
        self.chips: dict[int, _Chip] = {}
        self.links: dict[tuple[int, int], _Busy] = {}

    def chip(self, c: int) -> _Chip:
        if c not in self.chips:
            self.chips[c] = _Chip(self.machine)
        return self.chips[c]

    def windows(self, ins: Instruction, reverse: bool = False) -> list[tuple[_Busy, int, int]]:
        """(resource, offset from issue, length) of the port and link windows of an instruction.
        Reversed time mirrors every window: [off, off+len) -> [lat-off-len, lat-off)."""
        c, chip = ins.cost, self.chip(ins.chip)
        out = []
        for (kind, ch, k), off, length in ins.holds(self.machine):
            busy = (chip.read[k] if kind == "read" else chip.write[k] if kind == "write"
                    else self.links.setdefault((ch, k), _Busy()))
            out.append((busy, off, length))
        if reverse:
            out = [(busy, c.latency - off - length, length) for busy, off, length in out]
        return out

    def fit(self, t: int, reqs, streams: list[_Busy], n_streams: int, hold: int) -> int:
        """The earliest cycle >= t where every window of `reqs` and `n_streams` of `streams`
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
            free = 0
            # usually enough are free: stop counting at n_streams, from the top (take_streams fills the
            # lowest free registers, so the highest are the likeliest free)
            for b in reversed(streams):
                free += b.free(t, hold)
                if free == n_streams:
                    return t
            fits = sorted(b.first_fit(t, hold) for b in streams)
            if fits[n_streams - 1] == t:
                return t
            t = fits[n_streams - 1]

    @staticmethod
    def take_streams(streams: list[_Busy], t: int, n: int, hold: int) -> tuple[int, ...]:
        ids = tuple(islice((k for k, b in enumerate(streams) if b.free(t, hold)), n))
        assert len(ids) == n
        for k in ids:
            streams[k].add(t, t + hold)
        return ids

    def book(self, t: int, reqs) -> None:
        for busy, off, length in reqs:
            busy.add(t + off, t + off + length)


# --- the schedule ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Placement:
    cycle: int
    unit: str | None = None
    streams: tuple[int, ...] = ()


@dataclass(frozen=True)
class ScheduleResult:
    """What a scheduler decides (every scheduler gives one), with the bounds and, from a solver, how it went."""

    placements: tuple[Placement, ...]   # one per op, in program order
    cycles: int                         # the program's length: max c + lat
    critical_path: int                  # longest latency-weighted read-after-write path
    resource_bound: int                 # max over resources of work / capacity
    bound_resource: str                 # which resource gives resource_bound
    instructions: int
    proven_bound: int = 0               # a solver's proven bound on the optimum (0: none)
    solver_status: str = ""             # a solver's: optimal / feasible / skipped / windowed: ... ("": no solver)
    list_cycles: int = 0                # a solver's warm start: the list schedule's length (0: no solver)
    # per template (compiler.templates), its pieces' op indices, in program order: the module records those
    # that are their template stamped (ir.pieces)
    templates: tuple[tuple[tuple[int, ...], ...], ...] = ()
    # wall-clock, reported only: it never decides anything, and two equal schedules are equal whatever it says
    solve_seconds: float = field(default=0.0, compare=False)

    @property
    def lower_bound(self) -> int:
        return max(self.critical_path, self.resource_bound, self.proven_bound)

    @property
    def gap(self) -> float:
        return self.cycles / self.lower_bound - 1 if self.lower_bound else 0.0


def _priorities(program: Program, n_ops: int) -> list[int]:
    """Longest latency-weighted path from each instruction to the end."""
    lat = {ins.index: ins.cost.latency for ins in program.instructions}
    succ: dict[int, list[int]] = {}
    for ins in program.instructions:  # (not every op: a template's program is a few of a module's)
        for p, _ in program.raw[ins.index]:
            succ.setdefault(p, []).append(ins.index)
    prio = [0] * n_ops
    for ins in reversed(program.instructions):
        i = ins.index
        prio[i] = lat[i] + max((prio[j] for j in succ.get(i, ())), default=0)
    return prio


JOIN_WINDOW = 1000  # ops before a matmul's reader whose holds may count towards its head (any subset is a bound)
MXM = ("mxm", "mxm planes")  # the resources a matmul's reader counts: its phase's planes
CHAIN_BATCH = 1 << 18  # holds whose chain bounds are taken at once (their arrays take ~200 bytes a hold)


def _heads(program: Program, machine: Machine, table: _HoldTable) -> np.ndarray:
    """The earliest cycle each instruction can issue: by its dependences (preds precede in program order)
    and, where the program leaves a chip (a send, a host output) or takes a matmul's result on, by the work
    before it on the chip too -- for every resource, the chain bound (`_chain`) of the holds of its ancestors
    on that chip, followed by the longest path from each to it (for a matmul's reader, the MXM planes' holds
    of the ancestors among the JOIN_WINDOW ops before it: a phase of matmuls, at a bounded cost). So a
    pipeline over one token stream adds up its stages: each stage's transfer out waits for the stage's own
    resource bound, and the next stage starts from there; within a layer, what reads a phase of matmuls
    waits for the phase's installs and matmuls on the four planes, not just for its longest chain."""
    head = [0] * len(program.preds)
    heads = np.zeros(len(program.preds), dtype=np.int64)  # (the same, for the chain bounds' numpy)
    by_index = {ins.index: ins for ins in program.instructions}
    for ins in program.instructions:
        i = ins.index
        h = max([0] + [head[p] + d for p, d in program.preds[i]])
        leaves = ins.unit_class == "tx" or (ins.unit_class == "host" and not ins.writes)
        reads_matmul = ins.unit_class != "mxm" and any(by_index[p].unit_class == "mxm" for p, _ in program.raw[i]
                                                       if p in by_index)
        if leaves or reads_matmul:
            after = _ancestors_on_chip(program, by_index, i, None if leaves else JOIN_WINDOW)
            if after:
                ancestors = np.fromiter(after, dtype=np.int64, count=len(after))
                rows, of = table.rows(ancestors, mxm_only=not leaves)
                if rows.size:
                    tails = np.fromiter(after.values(), dtype=np.int64, count=len(after))
                    _, bounds, _ = table.chains(rows, heads[ancestors][of], tails[of], machine)
                    h = max(h, int(bounds.max()))
        head[i] = h
        heads[i] = h
    return heads


def _ancestors_on_chip(program: Program, by_index, i: int, window: int | None = None) -> dict[int, int]:
    """The instructions on i's chip that i waits for (at most `window` ops before it, when given), each with
    the longest path from its issue to i's (its dependences' delays; a path through another chip is the
    head's business)."""
    chip = by_index[i].chip
    reach = {i: 0}
    stack = [i]
    seen = {i}
    while stack:  # the ancestors first, then their longest paths in reverse program order
        j = stack.pop()
        for p, _ in program.preds[j]:
            if p not in seen and p in by_index and by_index[p].chip == chip and (window is None or p >= i - window):
                seen.add(p)
                stack.append(p)
    for j in sorted(seen, reverse=True):
        for p, d in program.preds[j]:
            if p in seen and j in reach:
                reach[p] = max(reach.get(p, d + reach[j]), d + reach[j])
    del reach[i]
    return reach


class _HoldTable:
    """Every resource hold of a program, as numpy columns in program order (instruction by instruction):
    its instruction, its resource (an index into `names`, which are sorted), when it starts and ends from the
    instruction's issue, its work and the work that may run early (see `_chain`). The resources are named as
    in the summary: a unit class, "streams", sliceN.read / .write, link ... (on several chips, "chipN ...");
    an install and its matmul are also one hold of the MXM planes, the matmul's ("mxm planes")."""

    def __init__(self, program: Program, machine: Machine):
        many = len({ins.chip for ins in program.instructions} - {0}) > 0
        install_of = dict(program.install_of)
        installs = set(install_of.values())
        by_index = {ins.index: ins for ins in program.instructions}
        rp, wp = machine.sram.read_ports, machine.sram.write_ports
        ids: dict[tuple, int] = {}  # resource -> its number in order of appearance
        names: list[str] = []
        # An instruction's holds follow from its chip, unit class, cost, streams, links (and, a matmul's, its
        # install's occupancy): instructions alike in those (most, in a repeated program) share a pattern,
        # its rows (resource, start, end, work, early) made once.
        patterns: dict[tuple, int] = {}
        rows: list[tuple[int, int, int, int, int]] = []
        firsts = [0]  # per pattern, its first row

        def add(chip, name: str, start: int, work: int, end: int, early: int = 0) -> None:
            r = ids.get((chip, name))
            if r is None:
                r = ids[(chip, name)] = len(names)
                names.append(name if chip is None else f"chip{chip} {name}" if many else name)
            rows.append((r, start, end, work, early))

        pattern_of = []
        for ins in program.instructions:
            i, c, chip = ins.index, ins.cost, ins.chip
            # (an install: with its matmul, whose plane hold counts the install's work as early)
            inst = (by_index[install_of[i]].cost.occupancy if i in install_of else 0) \
                if ins.unit_class == "mxm" and i not in installs else None
            key = (chip, ins.unit_class, c, ins.streams, ins.links, inst)
            p = patterns.get(key)
            if p is None:
                p = patterns[key] = len(patterns)
                add(chip, ins.unit_class, 0, c.occupancy, c.occupancy)
                if inst is not None:
                    add(chip, "mxm planes", 0, inst + c.occupancy, c.occupancy, inst)
                if ins.streams:
                    add(chip, "streams", 0, ins.streams * c.latency, c.latency)
                for s, n in c.reads:
                    k = -(-n // rp)
                    add(chip, f"slice{s}.read", 0, k, k)
                for s, n in c.writes:
                    k = -(-n // wp)
                    add(chip, f"slice{s}.write", c.latency - k, k, c.latency)
                for link_chip, port, off, length in ins.links:
                    add(None, f"link c{link_chip}.l{port}", off, length, off + length)
                firsts.append(len(rows))
            pattern_of.append(p)
        order = sorted(range(len(names)), key=names.__getitem__)
        rank = np.empty(len(names), dtype=np.int32)
        rank[order] = np.arange(len(names))
        self.names = [names[r] for r in order]
        self.capacity = np.array([_capacity(machine, name) for name in self.names], dtype=np.int64)
        self.mxm = np.array([name.endswith(MXM) for name in self.names], dtype=bool)
        # the instructions' rows, in program order: each its pattern's (as 32-bit integers: Llama-2-70B has
        # ten million)
        instructions = np.array([ins.index for ins in program.instructions], dtype=np.int64)
        pattern = np.array(pattern_of, dtype=np.int64)
        firsts = np.array(firsts, dtype=np.int64)
        counts = np.zeros(len(program.preds), dtype=np.int64)
        counts[instructions] = firsts[pattern + 1] - firsts[pattern]
        self.offsets = np.append(0, np.cumsum(counts))  # per op index: its first row (and the next op's)
        self.instruction = np.repeat(instructions.astype(np.int32), counts[instructions])
        columns = np.array(rows, dtype=np.int32).reshape(-1, 5).T[:, _expand(firsts[pattern], counts[instructions])]
        resource, self.start, self.end, self.work, self.early = columns
        self.resource = rank[resource]

    def rows(self, instructions: np.ndarray, mxm_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The rows of `instructions`' holds (of the MXM's resources only, when asked), and for each, its
        instruction's position in `instructions`."""
        first, n = self.offsets[instructions], self.offsets[instructions + 1] - self.offsets[instructions]
        rows, of = _expand(first, n), np.repeat(np.arange(len(instructions)), n)
        if mxm_only:
            keep = self.mxm[self.resource[rows]]
            rows, of = rows[keep], of[keep]
        return rows, of

    def chains(self, rows: np.ndarray, heads: np.ndarray, tails: np.ndarray, machine: Machine
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For the holds `rows`, their instructions' `heads` (earliest issue) and `tails` (least cycles from
        the issue to the end), per resource among them (ascending): the resource, `_chain`'s bound of its
        holds and their work. All resources at once: the holds sorted by resource, then as `_chain` does."""
        resource, work, early = self.resource[rows], self.work[rows], self.early[rows]
        items = (heads + self.start[rows], tails - self.end[rows])  # (earliest start, least cycles after)
        sorter = np.argsort(resource, kind="stable")
        by_resource = resource[sorter]
        new = np.append(True, by_resource[1:] != by_resource[:-1])
        firsts, group = np.flatnonzero(new), np.cumsum(new) - 1  # each resource's first row; each row's resource
        which = by_resource[firsts]
        cap = self.capacity[which]
        planes = np.logical_or.reduceat(early[sorter] > 0, firsts)
        slack = np.where(planes, machine.latency.mxm, 0)
        totals = np.add.reduceat(work[sorter], firsts, dtype=np.int64)
        best = np.zeros(len(which), dtype=np.int64)
        for key in items:
            o = np.lexsort((-key, resource))  # by resource, then the largest first (stable)
            least_head = _group_min_accumulate(items[0][o], group)
            least_tail = _group_min_accumulate(items[1][o], group)
            counted = np.cumsum(work[o])
            counted -= (counted[firsts] - work[o][firsts])[group]
            for g in np.flatnonzero(planes):
                span = slice(firsts[g], firsts[g + 1] if g + 1 < len(firsts) else len(o))
                counted[span] -= _largest_prefix_sums(early[o][span], 2 * int(cap[g]))
            k = key[o]
            ends = np.flatnonzero(np.append((group[1:] != group[:-1]) | (k[1:] != k[:-1]), True))
            g = group[ends]
            b = least_head[ends] - slack[g] + -(-counted[ends] // cap[g]) + least_tail[ends]
            np.maximum.at(best, g, b)
        return which, best, totals


def _expand(firsts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The ranges [firsts[k], firsts[k] + counts[k]) one after another."""
    return np.arange(int(counts.sum())) + np.repeat(firsts - (np.cumsum(counts) - counts), counts)


def _group_min_accumulate(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """np.minimum.accumulate within each run of equal `group` (ascending): each later group is lowered by
    more than the values' range, so no earlier group's values reach into it, then raised back."""
    if not len(values):
        return values
    span = int(values.max()) - int(values.min()) + 1
    lowered = values - group * span
    return np.minimum.accumulate(lowered) + group * span


def _capacity(machine: Machine, key: str) -> int:
    name = key.rsplit(" ", 1)[-1]
    return {**units(machine), "planes": units(machine)["mxm"],
            "streams": machine.streams.east + machine.streams.west}.get(name, 1)


def _chain(items: np.ndarray, cap: int, machine: Machine) -> tuple[int, int, int]:
    """(the chain bound of a resource's holds `items` (rows of earliest start, work, least cycles after and work
    that may be early, or those numbers one after another) on `cap` instances, the first cycle and the cycles
    after of the set giving it): for any set S of holds, the program takes at least min over S of the earliest
    start, plus S's work over the capacity, plus min over S of what must follow. S runs over the holds with the
    largest starts (one threshold at a time), and those followed by the most.

    An MXM plane's item is an install and its matmul, starting when the matmul may: the matmul streams only
    once its weights landed and until the next install lands on the plane, so on each plane at most two
    installs of S (the first S lands, and one landing after its matmul) may run before the earliest matmul of
    S, and every other install issues after it, less the MXM latency. Their work (`early`, the two largest
    per plane) is not counted, and the set starts that latency earlier."""
    best = (0, 0, 0)
    if not len(items):
        return best
    a = np.array(items, dtype=np.int64).reshape(-1, 4)  # (head, work, tail, early) per hold
    planes = bool(a[:, 3].any())
    slack = machine.latency.mxm if planes else 0
    for key in (0, 2):  # S: the holds by head, latest first; then by tail, most followed first
        s = a[np.argsort(-a[:, key], kind="stable")]
        least_head, least_tail = np.minimum.accumulate(s[:, 0]), np.minimum.accumulate(s[:, 2])
        counted = np.cumsum(s[:, 1]) - (_largest_prefix_sums(s[:, 3], 2 * cap) if planes else 0)
        ends = np.flatnonzero(np.append(s[1:, key] != s[:-1, key], True))  # a threshold takes every hold at it
        b = least_head[ends] - slack + -(-counted[ends] // cap) + least_tail[ends]
        k = int(np.argmax(b))
        if b[k] > best[0]:
            best = (int(b[k]), int(least_head[ends[k]]), int(least_tail[ends[k]]))
    return best


def _largest_prefix_sums(values: np.ndarray, k: int) -> np.ndarray:
    """Per prefix of `values`, the sum of its k largest."""
    largest: list[int] = []  # a min-heap
    total, out = 0, []
    for v in values.tolist():
        if v:
            heapq.heappush(largest, v)
            total += v
            if len(largest) > k:
                total -= heapq.heappop(largest)
        out.append(total)
    return np.array(out, dtype=np.int64)


def lower_bounds(program: Program, machine: Machine) -> tuple[int, int, str, int]:
    """(critical path, resource bound, what gives it, the plain resource bound: work / capacity alone).

    The resource bound is the chain of stages: for a resource and any set S of its holds, the program
    is at least min over S of the earliest cycle a hold can start (its instruction's head: its dependences
    from cycle 0 and, where it leaves a chip, the chain bound of the stage before it, `_heads`), plus the
    work of S over the resource's capacity, plus min over S of what must follow a hold once it ends (the
    latency-weighted path from its instruction to the end, less the hold). Taking S = the holds that cannot
    start before h (for every h; and symmetrically those followed by at least q) gives, for a pipeline over
    one token stream, each stage's resource bound after the chain of stages before it; with h = q = 0 it is
    the plain bound work / capacity. Named "chain: R from cycle h, then q" when the chain adds to R's work."""
    prio = np.array(_priorities(program, len(program.preds)), dtype=np.int64)
    table = _HoldTable(program, machine)
    head = _heads(program, machine, table)
    critical = int(prio.max(initial=0))
    if not table.names:
        return critical, 0, "none", 0
    # resource by resource, CHAIN_BATCH holds at a time (at once, the chains' arrays would take ten times the
    # table)
    by_resource = np.argsort(table.resource, kind="stable")
    firsts = np.searchsorted(table.resource[by_resource], np.arange(len(table.names) + 1))
    parts, r = [], 0
    while r < len(table.names):
        end = max(r + 1, int(np.searchsorted(firsts, firsts[r] + CHAIN_BATCH, side="right")) - 1)
        rows = by_resource[firsts[r]:firsts[end]]
        parts.append(table.chains(rows, head[table.instruction[rows]], prio[table.instruction[rows]], machine))
        r = end
    which, chained, works = (np.concatenate(column) for column in zip(*parts))
    plain = -(-works // table.capacity[which])
    bound = np.maximum(plain, chained)
    k = int(np.argmax(bound))  # (the first of the largest: the resources are in name order)
    if bound[k] <= 0:
        return critical, 0, "none", 0
    where = table.names[which[k]]
    if chained[k] > plain[k]:  # where the chain is: its set's first cycle and the cycles after
        mine = np.flatnonzero(table.resource == which[k])
        items = np.stack([head[table.instruction[mine]] + table.start[mine], table.work[mine],
                          prio[table.instruction[mine]] - table.end[mine], table.early[mine]], axis=1)
        _, least_head, least_tail = _chain(items.ravel(), int(table.capacity[which[k]]), machine)
        where = f"chain: {where} from cycle {least_head:,}, then {least_tail:,}"
    return critical, int(bound[k]), where, int(plain.max())


@dataclass(frozen=True)
class Scheduler(Pass):
    """A scheduling pass: its plan is the ScheduleResult (one type for every scheduler), applied by
    `apply_schedule`."""

    def plan(self, module: Module, target: Target, progress=None) -> ScheduleResult:
        raise NotImplementedError

    def apply(self, module: Module, target: Target, plan: ScheduleResult) -> Module:
        return apply_schedule(module, plan)


@dataclass(frozen=True)
class ListScheduler(Scheduler):
    """The list scheduler as a pass. `rounds`: forward-backward improvement rounds
    after the critical-path pass (each: a backward pass in order of the best
    schedule's finish times, then a forward pass in order of that one's start
    times; the shortest schedule wins)."""

    name = "schedule-list"
    rounds: int = 2

    def plan(self, module: Module, target: Target, progress=None) -> ScheduleResult:
        return list_schedule(module, target, self.rounds)


def _pass(program: Program, machine: Machine, priority: dict[int, int], reverse: bool
          ) -> dict[int, tuple[int, int, tuple[int, ...]]]:
    """One serial list-scheduling pass: instruction -> (cycle, unit instance, streams).

    Items (single instructions, or install+matmul pairs keyed by the install) are
    taken by `priority` (higher first; ties by program order) once their
    predecessors are placed, each at its earliest feasible cycle. With
    `reverse`, time runs backwards: an instruction at tau stands for
    c = H - tau - lat, dependences and windows are mirrored, and the caller
    converts back."""
    by_index = {ins.index: ins for ins in program.instructions}
    lat = {i: ins.cost.latency for i, ins in by_index.items()}
    preds: dict[int, list[tuple[int, int]]] = {i: [] for i in by_index}
    for j in by_index:
        for i, d in program.preds[j]:
            if reverse:  # c_j >= c_i + d  <=>  tau_i >= tau_j + lat_j - lat_i + d
                preds[i].append((j, lat[j] - lat[i] + d))
            else:
                preds[j].append((i, d))
    pair_of = dict(program.install_of)  # matmul -> install
    install_user = {inst: mm for mm, inst in program.install_of}

    def item_of(i: int) -> int:
        return pair_of.get(i, i)

    members: dict[int, list[int]] = {}
    for i in sorted(by_index):
        members.setdefault(item_of(i), []).append(i)
    waiting, succs = {}, {}
    for key, mem in members.items():
        ps = {item_of(p) for m in mem for p, _ in preds[m]} - {key}
        waiting[key] = len(ps)
        for p in sorted(ps):
            succs.setdefault(p, []).append(key)

    res = _Resources(machine)
    cycle: dict[int, int] = {}
    placed: dict[int, tuple[int, int, tuple[int, ...]]] = {}
    ready = [(-priority[k], k) for k in sorted(members) if waiting[k] == 0]
    heapq.heapify(ready)

    def earliest(i: int, skip: int = -1) -> int:
        return max([0] + [cycle[p] + d for p, d in preds[i] if p != skip])

    def unit_window(i: int) -> int:  # offset of the unit's window [c, c+occ), mirrored in reverse
        c = by_index[i].cost
        return c.latency - c.occupancy if reverse else 0

    def place_single(i: int) -> None:
        ins = by_index[i]
        c, reqs, hold = ins.cost, res.windows(ins, reverse), ins.cost.latency
        chip = res.chip(ins.chip)
        t0, off = earliest(i), unit_window(i)
        # The earliest (cycle, instance): try instances by a cheap lower bound, stop when none can win.
        t_free = res.fit(t0, reqs, chip.streams, ins.streams, hold)
        instances = chip.units[ins.unit_class]
        choices = range(len(instances)) if ins.fixed_unit is None else (ins.fixed_unit,)
        order = sorted((max(t_free, instances[k].first_fit(t0 + off, c.occupancy) - off), k) for k in choices)
        best = None
        for lb, k in order:
            if best is not None and (lb, k) >= best[:2]:
                break
            t = res.fit(lb, reqs + [(instances[k], off, c.occupancy)], chip.streams, ins.streams, hold)
            if best is None or (t, k) < best[:2]:
                best = (t, k)
        t, k = best
        res.book(t, reqs + [(instances[k], off, c.occupancy)])
        cycle[i] = t
        placed[i] = (t, k, res.take_streams(chip.streams, t, ins.streams, hold))

    def place_pair(inst: int, mm: int) -> None:
        # F runs first in this pass's time, S second (forward: the install, then the matmul);
        # the plane is held from F's window to S's, so no other install lands in between.
        f, s_ = (mm, inst) if reverse else (inst, mm)
        F, S = by_index[f], by_index[s_]
        gap = F.cost.latency                      # S >= F + gap: the weight has landed
        a, b = unit_window(f), unit_window(s_) + S.cost.occupancy
        rf = res.windows(F, reverse)
        rs = res.windows(S, reverse)
        chip = res.chip(F.chip)
        tf0, ts0 = earliest(f), earliest(s_, skip=f)
        planes, s_off, start = chip.units["mxm"], unit_window(s_), max(ts0, tf0 + gap)
        # Planes by a cheap lower bound on S's cycle there (its own window free); stop when none can win.
        order = sorted((max(start, plane.first_fit(start + s_off, S.cost.occupancy) - s_off), k)
                       for k, plane in enumerate(planes))
        best = None
        for lb, k in order:
            if best is not None and lb > best[0]:
                break
            plane, ts = planes[k], start
            while True:
                ts = res.fit(ts, rs + [(plane, s_off, S.cost.occupancy)], chip.streams, S.streams,
                             S.cost.latency)
                # F as late as possible: the plane is idle but held from F to the end of S.
                tf = res.fit(max(tf0, ts - gap), rf + [(plane, a, F.cost.occupancy)], chip.streams, F.streams,
                             F.cost.latency)
                if tf + gap > ts:
                    ts = tf + gap
                    continue
                if not plane.free(tf + a, ts + b - tf - a):
                    ts = plane.first_fit(tf + a, ts + b - tf - a) - a + gap
                    continue
                break
            if best is None or (ts, -tf, k) < best[:3]:
                best = (ts, -tf, k)
        ts, tf, k = best[0], -best[1], best[2]
        plane = chip.units["mxm"][k]
        res.book(tf, rf)
        res.book(ts, rs)
        plane.add(tf + a, ts + b)
        cycle[f], cycle[s_] = tf, ts
        placed[f] = (tf, k, res.take_streams(chip.streams, tf, F.streams, F.cost.latency))
        placed[s_] = (ts, k, res.take_streams(chip.streams, ts, S.streams, S.cost.latency))

    while ready:
        _, key = heapq.heappop(ready)
        if key in install_user:
            place_pair(key, install_user[key])
        else:
            place_single(key)
        for s in succs.get(key, ()):
            waiting[s] -= 1
            if waiting[s] == 0:
                heapq.heappush(ready, (-priority[s], s))
    if len(placed) != len(by_index):
        raise AssertionError("dependence cycle: some instructions were never ready")
    if reverse:  # back to forward time, the earliest instruction at cycle 0
        horizon = max(t + lat[i] for i, (t, _, _) in placed.items())
        placed = {i: (horizon - t - lat[i], k, st) for i, (t, k, st) in placed.items()}
        shift = min(t for t, _, _ in placed.values())
        placed = {i: (t - shift, k, st) for i, (t, k, st) in placed.items()}
    return placed


def _length(program: Program, placed) -> int:
    return max([0] + [placed[ins.index][0] + ins.cost.latency for ins in program.instructions])


def list_schedule(module: Module, target: Target, rounds: int = ListScheduler.rounds,
                  program: Program | None = None) -> ScheduleResult:
    """`program`: the module's analysis, when the caller has it already."""
    program = program or analyze(module, target)
    return schedule_result(module, program, target.machine, list_placements(program, target.machine, rounds))


def list_placements(program: Program, machine: Machine, rounds: int = ListScheduler.rounds
                    ) -> dict[int, tuple[int, int, tuple[int, ...]]]:
    """The list schedule of `program` (its instructions only: preds must stay among them):
    instruction -> (cycle, unit instance, streams)."""
    by_index = {ins.index: ins for ins in program.instructions}
    pair_of = dict(program.install_of)
    keys = [i for i in sorted(by_index) if i not in pair_of]  # items: pairs are keyed by their install
    user_of = {inst: mm for mm, inst in program.install_of}
    members = {k: [k] + ([user_of[k]] if k in user_of else []) for k in keys}

    cp = _priorities(program, len(program.preds))
    best = _pass(program, machine, {k: cp[k] for k in keys}, reverse=False)
    for _ in range(rounds):
        # Backward: latest-finishing first; then forward: earliest-starting first.
        finish = {k: max(best[m][0] + by_index[m].cost.latency for m in members[k]) for k in keys}
        backward = _pass(program, machine, finish, reverse=True)
        start = {k: -min(backward[m][0] for m in members[k]) for k in keys}
        forward = _pass(program, machine, start, reverse=False)
        improved = False
        for candidate in (backward, forward):
            if _length(program, candidate) < _length(program, best):
                best, improved = candidate, True
        if not improved:
            break
    return best


def schedule_result(module: Module, program: Program, machine: Machine,
                    placed: dict[int, tuple[int, int, tuple[int, ...]]], proven_bound: int = 0) -> ScheduleResult:
    """The ScheduleResult of instruction placements (op index -> (cycle, unit instance, streams)):
    constants at 0, views when their words have all landed, and the lower bounds."""
    critical, resource, which, _ = lower_bounds(program, machine)  # (first: the placements wait for it to end)
    ops, best = module.ops, placed
    by_index = {ins.index: ins for ins in program.instructions}
    placements = []
    available: dict[str, int] = {}
    shared: dict = {}  # each unit name and stream tuple one object (a few hundred of each, millions of instructions)
    for i, op in enumerate(ops):
        if i in by_index:
            t, k, streams = best[i]
            unit = f"{by_index[i].unit_class}{k}"
            p = Placement(t, shared.setdefault(unit, unit), shared.setdefault(streams, streams))
            for r in op.results:
                available[r.name] = t + by_index[i].cost.latency
        else:  # constants at 0; views when their words have all landed
            t = max([0] + [available.get(v.name, 0) for v in op.operands]) if mo.is_view(op.name) else 0
            p = Placement(t)
            for r in op.results:
                available[r.name] = t
        placements.append(p)
    return ScheduleResult(tuple(placements), _length(program, best), critical, resource, which, len(by_index),
                          proven_bound)


def apply_schedule(module: Module, result: ScheduleResult) -> Module:
    """Write cycle / unit / streams and order the ops by (cycle, program order); record the templates' pieces
    that are their template stamped (ir.pieces)."""
    ops = []
    for i, (op, p) in enumerate(zip(module.ops, result.placements, strict=True)):
        changes = {"cycle": p.cycle} if p.unit is None else {"cycle": p.cycle, "unit": p.unit, "streams": p.streams}
        ops.append((p.cycle, i, type(op)(op.name, op.operands, op.results, op.attrs.updated(changes))))
    ops.sort(key=lambda x: (x[0], x[1]))
    position = [0] * len(ops)
    for k, (_, i, _) in enumerate(ops):
        position[i] = k
    ordered = tuple(op for _, _, op in ops)
    groups = [[sorted(position[i] for i in piece) for piece in group] for group in result.templates]
    return module.replace(ops=ordered, pieces=find_pieces(ordered, groups))


__all__ = ["ListScheduler", "Placement", "Program", "ScheduleResult", "Scheduler", "analyze", "apply_schedule",
           "list_placements", "list_schedule", "lower_bounds", "schedule_result"]
