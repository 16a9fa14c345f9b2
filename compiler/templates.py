"""Layer templates: schedule each distinct repeated block once, stamp it at every repeat.

A language model is one layer N times. Scheduling it instruction by instruction costs N times one layer and
leaves the solver a window of the program at a time; here a layer is scheduled once, as a whole, and its
schedule reused:

- Blocks: the graph's repeated layers (backends.graph.find_layers, the detector the viewer draws
  "layer x N" with), mapped onto the machine instructions their lowering emitted (Lowering.origins).
  At least MIN_REPEATS of them, or the program is scheduled as before.
- Templates: blocks whose instructions have the same costs, the same read-after-write dependences among
  themselves and the same pattern of resource sharing (the resources a block holds, renamed in order of
  appearance: which chips, slices and links it uses does not matter, only which of its holds share one)
  share a template when its cycles also meet the block's own write-after-read edges (they follow its
  addresses). A template is scheduled once, on its block alone (what it reads from outside ready at
  cycle 0): the list scheduler, then CP-SAT (compiler.schedule_cpsat.solve_cycles) within the program's
  `max_windows` budget. A block's placement (its chips, SRAM layout, the routes of its transfers) is in
  its own instructions; a template is relative cycles. The allocator gives equal layers equal slices
  (compiler.allocate, `layers`), so equal layers on the same chips share one.
- Stamping: in dependence order, each block is placed as a rigid whole at the earliest cycle offset where
  its dependences on everything placed so far are met and every resource it holds (unit classes, MXM
  planes, stream registers, slice ports, link directions: the CP-SAT model's resource groups) has room.
  The search jumps past each overload by the least shift that can clear it, so it never skips a feasible
  offset: block k+1 starts when its inputs are ready and its resources free, not at a padded period. The
  cycles a stamp waits for resources beyond what its dependences ask are reported ("lost at boundaries").
  Every other instruction (embedding, final norm, head; with its weight install, a pair) is placed the
  same way, one at a time, in program order; so is a block's load from the host that waits for nothing
  in the block (the layer's past K/V): it streams ahead of the layers instead of waiting for its block.
- Unit instances, planes and stream registers are assigned from the cycles at the end, as after CP-SAT.

The result is an ordinary schedule: the verifier and the interpreter check it like any other. Templates
are in the compiler only; the .lpu holds the stamped program (its size is that of the program either way).
Deterministic: blocks, templates and stamps in program order; the solver as in schedule_cpsat.
"""

from __future__ import annotations

import heapq
import time
from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass, replace

import numpy as np

from ..backends.graph import find_layers
from ..ir import Module
from ..ir.target import Target

from .schedule_cpsat import CpSatScheduler, _assign, _uses, solve_cycles
from .schedule_list import Program, ScheduleResult, analyze, list_placements, schedule_result

MIN_REPEATS = 3  # fewer repeated layers: not worth a template (and the samples' two layers keep their schedules)


def machine_blocks(graph: Module, origins: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Per repeated layer of `graph`, the machine op indices its lowering emitted (Lowering.origins),
    in program order; () when fewer than MIN_REPEATS layers repeat."""
    layers = find_layers(graph)
    if layers is None or layers.count < MIN_REPEATS:
        return ()
    block_of = {g: r for r, block in enumerate(layers.blocks) for g in block}
    out: list[list[int]] = [[] for _ in layers.blocks]
    for i, g in enumerate(origins):
        if g in block_of:
            out[block_of[g]].append(i)
    return tuple(tuple(b) for b in out)


# --- resource timelines -----------------------------------------------------------------------------

class _Timelines:
    """Per resource group, the holds placed so far: (start, end, demand), sorted by start."""

    def __init__(self, capacity: dict[tuple, int]):
        self.capacity = capacity
        self.starts: dict[tuple, list[int]] = defaultdict(list)
        self.holds: dict[tuple, list[tuple[int, int, int]]] = defaultdict(list)
        self.longest: dict[tuple, int] = defaultdict(int)

    def near(self, g, s: int, e: int) -> list[tuple[int, int, int]]:
        """The holds of group g overlapping [s, e)."""
        starts, holds = self.starts[g], self.holds[g]
        lo = bisect_left(starts, s - self.longest[g])
        hi = bisect_left(starts, e)
        return [h for h in holds[lo:hi] if h[1] > s]

    def add(self, g, s: int, e: int, d: int) -> None:
        if e <= s:
            return
        k = bisect_left(self.starts[g], s)
        self.starts[g].insert(k, s)
        self.holds[g].insert(k, (s, e, d))
        self.longest[g] = max(self.longest[g], e - s)

    def shift(self, by_group: dict[tuple, list[tuple[int, int, int]]], o: int) -> int:
        """The least shift of a segment at offset `o` (its holds (start, end, demand) relative to it, per
        group) that can clear an overload; 0 when it fits. No smaller shift fits: a hold overlapping an
        existing one of a no-overlap group overlaps it until it starts at that one's end; an overloaded
        cycle of a shared group stays covered by every hold over it until that hold starts after it."""
        need = 0
        for g, uses in by_group.items():
            lo, hi = o + min(u[0] for u in uses), o + max(u[1] for u in uses)
            existing = self.near(g, lo, hi)
            if not existing:
                continue
            cap = self.capacity[g]
            if cap == 1:
                for s, e, _ in uses:
                    s, e = s + o, e + o
                    for hs, he, _ in existing:
                        if hs < e and he > s:
                            need = max(need, he - s)
                continue
            events = [(hs, d) for hs, _, d in existing] + [(he, -d) for _, he, d in existing]
            events += [(s + o, d) for s, _, d in uses] + [(e + o, -d) for _, e, d in uses]
            events.sort()
            load = 0
            for k, (t, d) in enumerate(events):
                load += d
                nxt = events[k + 1][0] if k + 1 < len(events) else t
                if load > cap and nxt > t:  # overloaded over [t, nxt): clear its last cycle
                    x = nxt - 1
                    covering = [x + 1 - (s + o) for s, e, _ in uses if s + o <= x < e + o]
                    if covering:
                        need = max(need, min(covering))
        return need


# --- segments: templated blocks and single items ------------------------------------------------------

@dataclass
class _Segment:
    members: list[int]                    # instruction op indices, ascending
    template: int = -1                    # -1: a single item placed on its own


@dataclass(frozen=True)
class TemplateStats:
    blocks: int
    templates: int
    boundary_cycles: int                  # waited for resources beyond the dependences, over all stamps


def _sub_program(program: Program, members: list[int]) -> Program:
    """`program` restricted to `members` (dependences from outside dropped: they are ready at cycle 0)."""
    inside = set(members)
    by_index = {ins.index: ins for ins in program.instructions}
    preds = [()] * len(program.preds)
    raw = [()] * len(program.raw)
    for i in members:
        preds[i] = tuple((p, d) for p, d in program.preds[i] if p in inside)
        raw[i] = tuple((p, d) for p, d in program.raw[i] if p in inside)
    return Program(tuple(by_index[i] for i in members), tuple(preds), tuple(raw),
                   tuple((m, i) for m, i in program.install_of if m in inside))


def template_schedule(module: Module, target: Target, blocks: tuple[tuple[int, ...], ...],
                      options: CpSatScheduler | None, rounds: int, progress=None
                      ) -> tuple[ScheduleResult, TemplateStats] | None:
    """The schedule of `module` from templates of its repeated `blocks` (machine op indices); `options`:
    CP-SAT on each template (None: the list schedule alone). None when the blocks cannot be stamped in
    dependence order (an op outside them sits between two parts of one)."""
    t_start = time.perf_counter()
    machine = target.machine
    program = analyze(module, target)
    by_index = {ins.index: ins for ins in program.instructions}
    uses, capacity = _uses(program, machine)
    uses_of: dict[int, list] = defaultdict(list)
    for u in uses:
        uses_of[u.first].append(u)

    # Segments: each block's instructions (an install goes with its matmul); every other instruction
    # alone, or with its install.
    pair_of = dict(program.install_of)  # matmul -> install
    segment_of: dict[int, int] = {}
    segments: list[_Segment] = []
    for block in blocks:
        # a load from the host that waits for nothing in the block (the layer's past K/V) is not stamped
        # with its block: on its own it goes as early as it can, streaming ahead of the layers
        inside = set(block)
        members = sorted({i for i in block if i in by_index and not _streams_ahead(by_index[i], program, inside)}
                         | {pair_of[i] for i in block if i in pair_of})
        if members:
            for i in members:
                segment_of[i] = len(segments)
            segments.append(_Segment(members))
    n_blocks = len(segments)
    for i in sorted(by_index):
        if i in segment_of:
            continue
        if i in pair_of and pair_of[i] in segment_of:  # a matmul: with its install, placed just before
            segment_of[i] = segment_of[pair_of[i]]
            segments[segment_of[i]].members.append(i)
        else:
            segment_of[i] = len(segments)
            segments.append(_Segment([i]))

    # Templates: a block takes the first template of its shape (costs, resource sharing pattern) whose
    # cycles meet its own inner dependences (its write-after-read edges follow its addresses); else its
    # own, scheduled alone: list-scheduled, then CP-SAT.
    shapes: dict[tuple, list[int]] = defaultdict(list)
    rel_of: list[list[int]] = []
    solves = 0
    t_templates = time.perf_counter()
    for n in range(n_blocks):
        seg = segments[n]
        members = seg.members
        key = _shape(members, program, by_index, uses_of, capacity)
        seg.template = next((t for t in shapes[key] if _meets(rel_of[t], members, program)), -1)
        if seg.template >= 0:
            continue
        if progress:
            left = f", about {(time.perf_counter() - t_templates) / n * (n_blocks - n):.0f} s left at most" if n \
                else ""
            progress(f"templates: block {n + 1} of {n_blocks}: scheduling template {len(rel_of) + 1} "
                     f"({len(members):,} instructions){left}")
        sub = _sub_program(program, members)
        placed = list_placements(sub, machine, rounds)
        cycles = np.zeros(len(module.ops), dtype=np.int64)
        for i in members:
            cycles[i] = placed[i][0]
        if options is not None and solves < options.max_windows:  # the solver's budget: the whole program's
            better, _, _, n_solved = solve_cycles(sub, machine, cycles, 0,
                                                  replace(options, max_windows=options.max_windows - solves))
            solves += n_solved
            if better is not None:
                cycles = better
        base = int(min(cycles[i] for i in members))
        seg.template = len(rel_of)
        shapes[key].append(seg.template)
        rel_of.append([int(cycles[i]) - base for i in members])

    # Stamp the segments in dependence order (ties: program order).
    seg_preds: dict[int, set[int]] = defaultdict(set)
    seg_succs: dict[int, set[int]] = defaultdict(set)
    for i, ins in by_index.items():
        a = segment_of[i]
        for p, _ in program.preds[i]:
            b = segment_of.get(p)
            if b is not None and b != a:
                seg_preds[a].add(b)
                seg_succs[b].add(a)
    waiting = {n: len(seg_preds[n]) for n in range(len(segments))}
    ready = [(seg.members[0], n) for n, seg in enumerate(segments) if waiting[n] == 0]
    heapq.heapify(ready)
    lines = _Timelines(capacity)
    t_stamps = time.perf_counter()
    cycles = np.zeros(len(module.ops), dtype=np.int64)
    boundary = done = 0
    stamped_blocks = sum(1 for seg in segments if seg.template >= 0)
    while ready:
        _, n = heapq.heappop(ready)
        seg = segments[n]
        rel = rel_of[seg.template] if seg.template >= 0 else _asap(seg.members, program, by_index)
        pos = dict(zip(seg.members, rel))
        o = -min(rel)
        for i in seg.members:
            for p, d in program.preds[i]:
                if p not in pos:
                    o = max(o, int(cycles[p]) + d - pos[i])
        by_group: dict[tuple, list[tuple[int, int, int]]] = defaultdict(list)
        for i in seg.members:
            for u in uses_of.get(i, ()):
                by_group[u.group].append((pos[u.first] + u.first_off, pos[u.last] + u.last_off, u.demand))
        wanted = o
        while (step := lines.shift(by_group, o)) > 0:
            o += step
        for g, holds in by_group.items():
            for s, e, d in holds:
                lines.add(g, s + o, e + o, d)
        for i in seg.members:
            cycles[i] = o + pos[i]
        if seg.template >= 0:
            boundary += o - wanted
            done += 1
            if progress and (done == stamped_blocks or done % max(1, stamped_blocks // 8) == 0):
                spent = time.perf_counter() - t_stamps
                progress(f"templates: stamped {done} of {stamped_blocks} blocks, about "
                         f"{spent / done * (stamped_blocks - done):.0f} s left")
        for s in sorted(seg_succs[n]):
            waiting[s] -= 1
            if waiting[s] == 0:
                heapq.heappush(ready, (segments[s].members[0], s))
    if any(w for w in waiting.values()):
        return None
    result = schedule_result(module, program, machine, _assign(program, machine, cycles))
    stats = TemplateStats(stamped_blocks, len(rel_of), boundary)
    status = (f"templates: {stats.templates} for {stats.blocks} blocks, {boundary:,} cycles lost at boundaries"
              + (f"; CP-SAT: {solves} models solved (at most {options.max_windows})" if options is not None else ""))
    return replace(result, solver_status=status, solve_seconds=time.perf_counter() - t_start), stats


def _streams_ahead(ins, program: Program, block: set[int]) -> bool:
    return ins.unit_class == "host" and not any(p in block for p, _ in program.preds[ins.index])


def _asap(members: list[int], program: Program, by_index) -> list[int]:
    """Relative cycles of a single item (an instruction, or an install and its matmul) by its own dependences."""
    at: dict[int, int] = {}
    for i in members:
        at[i] = max([0] + [at[p] + d for p, d in program.preds[i] if p in at])
    return [at[i] for i in members]


def _meets(rel: list[int], members: list[int], program: Program) -> bool:
    """Whether relative cycles `rel` meet the dependences among `members` (in the same order)."""
    pos = {i: k for k, i in enumerate(members)}
    return all(rel[pos[i]] >= rel[pos[p]] + d for i in members for p, d in program.preds[i] if p in pos)


def _shape(members: list[int], program: Program, by_index, uses_of, capacity) -> tuple:
    """What a block is apart from where it sits: per instruction its costs and holds (groups renamed in
    order of appearance, with their capacities) and its read-after-write dependences within the block."""
    pos = {i: k for k, i in enumerate(members)}
    rename: dict[tuple, int] = {}
    rows = []
    for i in members:
        ins = by_index[i]
        holds = tuple((rename.setdefault(u.group, len(rename)), capacity[u.group], pos.get(u.last, -1),
                       u.first_off, u.last_off, u.demand) for u in uses_of.get(i, ()))
        edges = tuple((pos[p], d) for p, d in program.raw[i] if p in pos)
        rows.append((ins.unit_class, ins.cost.latency, ins.cost.occupancy, ins.streams, holds, edges))
    return tuple(rows)


__all__ = ["MIN_REPEATS", "TemplateStats", "machine_blocks", "template_schedule"]
