"""Layer templates: schedule each distinct repeated block once, stamp it at every repeat.

A language model is one layer N times. Scheduling it instruction by instruction costs N times one layer and
leaves the solver a window of the program at a time; here a layer is scheduled once, as a whole, and its
schedule reused:

- Blocks: the graph's repeated layers (backends.graph.find_layers, the detector the viewer draws
  "layer x N" with), mapped onto the machine instructions their lowering emitted (Lowering.origins),
  each cut into its part on each chip (a piece); at least MIN_REPEATS layers, or the program is
  scheduled as before. Transfers between chips are no part of a piece: their routes (hops, links) differ
  from layer to layer, so they are glue, placed one by one between the pieces. Pieces that wait for each
  other both ways (a split op's parts and their join, on the tensor partition) are stamped as one.
  The layer-aligned pipeline (compiler.partition) gives layer i's pieces the chips of layer i-k's shifted
  by a group's chips, and the allocator the same slices, so their pieces share templates.
- Templates: blocks whose instructions have the same costs, the same read-after-write dependences among
  themselves and the same pattern of resource sharing (the resources a block holds, renamed in order of
  appearance: which chips, slices and links it uses does not matter, only which of its holds share one)
  share a template when its cycles also meet the block's own write-after-read edges (they follow its
  addresses). A template is scheduled once, on its block alone (what it reads from outside ready at
  cycle 0): the list scheduler, then, unless that meets the template's own lower bound, CP-SAT
  (compiler.schedule_cpsat.solve_cycles) on one solver thread (the sequential search loads a model once;
  the interleaved one loads it per subsolver, which on a layer's windows cost thirty times the search).
  CP-SAT's budget is the program's, `max_windows` models of `effort` deterministic seconds, spent on the
  heaviest templates first (instances x instructions): the solver's time grows neither with the layers
  nor with the distinct templates a layout makes (Llama-2-70B's layer-aligned pipeline makes one per
  way a layer's chips fall). A block's placement (its chips, SRAM layout, the
  routes of its transfers) is in its own instructions; a template is relative cycles. The allocator gives
  equal layers equal slices (compiler.allocate, `layers`), so equal layers on the same chips share one.
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

The result is an ordinary schedule: the verifier and the interpreter check it like any other. The pieces
that are their template stamped (ir.pieces: the same ops at another cycle, with their chips and values
renamed and their own units, stream registers and words) are recorded in the module, so that the .lpu
writes each template once.
Deterministic: pieces, templates and stamps in program order; the solver as in schedule_cpsat.
"""

from __future__ import annotations

import heapq
import time
from array import array
from bisect import bisect_left
from collections import Counter, defaultdict
from dataclasses import dataclass, replace

import numpy as np

from ..backends.graph import find_layers
from ..ir import Module
from ..ir.target import Target

from .schedule_cpsat import CpSatScheduler, _assign, _uses, solve_cycles
from .schedule_list import Program, ScheduleResult, analyze, list_placements, lower_bounds, schedule_result

MIN_REPEATS = 3  # fewer repeated layers: not worth a template (and the samples' two layers keep their schedules)
GLUE = ("tx", "rx")  # unit classes of the transfers between chips: placed one by one, between the pieces


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
    """Per resource group, the holds placed so far: (start, end, demand), sorted by start. Every hold of the
    program stays (a later stamp may fill an earlier hole): kept as machine integers, not Python objects."""

    def __init__(self, capacity: dict[tuple, int]):
        self.capacity = capacity
        # group -> (starts, ends, demands)
        self.holds: dict[tuple, tuple[array, ...]] = defaultdict(lambda: tuple(array("q") for _ in range(3)))
        self.longest: dict[tuple, int] = defaultdict(int)

    def near(self, g, s: int, e: int) -> list[tuple[int, int, int]]:
        """The holds of group g overlapping [s, e)."""
        starts, ends, demands = self.holds[g]
        lo = bisect_left(starts, s - self.longest[g])
        hi = bisect_left(starts, e)
        return [h for h in zip(starts[lo:hi], ends[lo:hi], demands[lo:hi]) if h[1] > s]

    def add(self, g, s: int, e: int, d: int) -> None:
        if e <= s:
            return
        starts, ends, demands = self.holds[g]
        k = bisect_left(starts, s)
        starts.insert(k, s)
        ends.insert(k, e)
        demands.insert(k, d)
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


# --- segments: templated pieces and single items ------------------------------------------------------

@dataclass
class _Segment:
    members: list[int]                    # instruction op indices, ascending
    template: int = -1                    # -1: a single item placed on its own


@dataclass(frozen=True)
class TemplateStats:
    pieces: int
    templates: int
    boundary_cycles: int                  # waited for resources beyond the dependences, over all stamps


def _sub_program(program: Program, members: list[int], by_index, pair_of) -> Program:
    """`program` restricted to `members` (ascending; dependences from outside dropped: they are ready at
    cycle 0); `by_index`, `pair_of`: its instructions by index, its matmuls' installs."""
    inside = set(members)
    preds = [()] * len(program.preds)
    raw = [()] * len(program.raw)
    for i in members:
        preds[i] = tuple((p, d) for p, d in program.preds[i] if p in inside)
        raw[i] = tuple((p, d) for p, d in program.raw[i] if p in inside)
    return Program(tuple(by_index[i] for i in members), tuple(preds), tuple(raw),
                   tuple((m, pair_of[m]) for m in members if m in pair_of))


def template_schedule(module: Module, target: Target, blocks: tuple[tuple[int, ...], ...],
                      options: CpSatScheduler | None, rounds: int, progress=None
                      ) -> tuple[ScheduleResult, TemplateStats]:
    """The schedule of `module` from templates of its repeated `blocks` (machine op indices); `options`:
    CP-SAT on each template (None: the list schedule alone)."""
    t_start = time.perf_counter()
    machine = target.machine
    if progress:
        progress(f"templates: dependences and costs of {len(module.ops):,} ops")
    program = analyze(module, target)
    by_index = {ins.index: ins for ins in program.instructions}
    pair_of = dict(program.install_of)  # matmul -> install
    uses, capacity = _uses(program, machine)
    uses_of: dict[int, list] = defaultdict(list)
    for u in uses:
        uses_of[u.first].append(u)

    # Segments: each block's part on each chip, a piece (an install goes with its matmul); every other
    # instruction alone, or with its install. Segments that wait for each other both ways (a split op's
    # parts and their join; a piece and a transfer landing in words the piece read before) are one.
    segments, n_pieces = _segments(blocks, program, by_index, pair_of)
    segments, n_pieces = _merge_cycles(segments, n_pieces, program)
    segment_of = {i: n for n, seg in enumerate(segments) for i in seg.members}
    seg_preds, seg_succs = _segment_graph(segments, segment_of, program)

    # Templates: a block takes the first template of its shape (costs, resource sharing pattern) whose
    # cycles meet its own inner dependences (its write-after-read edges follow its addresses); else its
    # own, scheduled alone: list-scheduled, then CP-SAT.
    # A piece's shape is named by the first piece of that shape; the distinct shapes are about as many as the
    # templates to schedule (a shape whose template misses a piece's own dependences takes another).
    first_of_shape: dict[tuple, int] = {}
    shape_of, groups_of = [], []  # per piece: the first piece of its shape; the groups it holds, in order
    for n in range(n_pieces):
        shape, groups = _shape(segments[n].members, program, by_index, uses_of, capacity)
        shape_of.append(first_of_shape.setdefault(shape, n))
        groups_of.append(groups)
    del first_of_shape
    instances = Counter(shape_of)
    # CP-SAT's budget, `max_windows` models for the whole program, goes to the templates that weigh most
    # first (instances x instructions): the solver's time depends neither on the layers nor on how many
    # distinct pieces the layout makes (70B's 16 layers made 18).
    budget = options.max_windows if options is not None else 0
    solves = at_bound = improved = scheduled = 0
    t_templates = time.perf_counter()

    def schedule(members: list[int]) -> list[int]:
        """A new template: `members`' relative cycles, scheduled alone (list scheduler, then CP-SAT while the
        budget lasts, unless the list schedule meets the template's own lower bound)."""
        nonlocal budget, solves, at_bound, improved, scheduled
        if progress:
            left = (f", about {(time.perf_counter() - t_templates) / scheduled * max(1, len(instances) - scheduled):.0f}"
                    " s left" if scheduled else "")
            progress(f"templates: scheduling template {scheduled + 1} of about {len(instances)} ({len(members):,} "
                     f"instructions; {n_pieces} pieces){left}")
        scheduled += 1
        sub = _sub_program(program, members, by_index, pair_of)
        placed = list_placements(sub, machine, rounds)
        cycles = np.zeros(len(module.ops), dtype=np.int64)
        for i in members:
            cycles[i] = placed[i][0]
        if budget > 0:
            critical, resource, _, plain = lower_bounds(sub, machine)
            length = _length(sub, cycles)
            if length <= max(critical, resource):
                at_bound += 1  # optimal already: nothing to solve
            else:  # what is left of the budget, on one thread
                better, _, _, n_solved = solve_cycles(sub, machine, cycles, max(critical, plain),
                                                      replace(options, max_windows=budget), sequential=True)
                budget -= n_solved
                solves += n_solved
                if better is not None and (better_length := _length(sub, better)) <= length:
                    improved += better_length < length
                    cycles = better
        base = int(min(cycles[i] for i in members))
        return [int(cycles[i]) - base for i in members]

    heaviest_first = sorted(instances, key=lambda n: (-instances[n] * len(segments[n].members), n))
    first_rel = {n: schedule(segments[n].members) for n in heaviest_first}
    shapes: dict[int, list[int]] = defaultdict(list)
    rel_of: list[list[int]] = []
    for n in range(n_pieces):
        seg = segments[n]
        key = shape_of[n]
        if n == key:
            rel = first_rel.pop(n)
        else:  # the first template of its shape whose cycles meet its own dependences, else a new one
            seg.template = next((t for t in shapes[key] if _meets(rel_of[t], seg.members, program)), -1)
            if seg.template >= 0:
                continue
            rel = schedule(seg.members)
        seg.template = len(rel_of)
        shapes[key].append(seg.template)
        rel_of.append(rel)

    # Stamp the segments in dependence order (ties: program order).
    waiting = {n: len(seg_preds[n]) for n in range(len(segments))}
    ready = [(seg.members[0], n) for n, seg in enumerate(segments) if waiting[n] == 0]
    heapq.heapify(ready)
    lines = _Timelines(capacity)
    t_stamps = time.perf_counter()
    cycles = np.zeros(len(module.ops), dtype=np.int64)
    boundary = done = 0
    stamped = sum(1 for seg in segments if seg.template >= 0)
    holds_of: dict[int, list] = {}  # per template: its holds per group, relative to it (in `groups_of` order)
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
        if seg.template in holds_of:  # a piece of the template's shape holds what it holds, in its groups
            by_group = dict(zip(groups_of[n], holds_of[seg.template]))
        else:
            by_group: dict[tuple, list[tuple[int, int, int]]] = defaultdict(list)
            for i in seg.members:
                for u in uses_of.get(i, ()):
                    by_group[u.group].append((pos[u.first] + u.first_off, pos[u.last] + u.last_off, u.demand))
            if seg.template >= 0:
                holds_of[seg.template] = list(by_group.values())
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
            if progress and (done == stamped or done % max(1, stamped // 8) == 0):
                spent = time.perf_counter() - t_stamps
                progress(f"templates: stamped {done} of {stamped} pieces, about "
                         f"{spent / done * (stamped - done):.0f} s left")
        for s in sorted(seg_succs[n]):
            waiting[s] -= 1
            if waiting[s] == 0:
                heapq.heappush(ready, (segments[s].members[0], s))
    if progress:
        progress("templates: unit instances and the lower bounds")
    stats = TemplateStats(stamped, len(rel_of), boundary)
    pieces_of: dict[int, list[tuple[int, ...]]] = defaultdict(list)
    for seg in segments[:n_pieces]:
        pieces_of[seg.template].append(tuple(seg.members))
    # the assignment and the bounds below take as much memory again as the stamping did: let go of its
    # structures first
    del uses, uses_of, segments, segment_of, seg_preds, seg_succs, shapes, rel_of, lines, by_index, pair_of, holds_of
    placed = _assign(program, machine, cycles)
    result = schedule_result(module, program, machine, placed)
    status = (f"templates: {stats.templates} for {stats.pieces} pieces, {boundary:,} cycles lost at boundaries"
              + (f"; CP-SAT: {solves} models solved (at most {options.max_windows} in all, the heaviest templates "
                 f"first), {improved} templates shortened, {at_bound} at their bound already"
                 if options is not None else ""))
    return replace(result, solver_status=status, solve_seconds=time.perf_counter() - t_start,
                   templates=tuple(tuple(g) for _, g in sorted(pieces_of.items()) if len(g) > 1)), stats


def _segments(blocks, program: Program, by_index, pair_of) -> tuple[list[_Segment], int]:
    """(the segments: first each block's part on each chip, then every other instruction alone or with its
    install; how many are blocks' pieces)."""
    segment_of: dict[int, _Segment] = {}
    segments: list[_Segment] = []
    for block in blocks:
        # a load from the host that waits for nothing in the block (the layer's past K/V) is not stamped
        # with its block: on its own it goes as early as it can, streaming ahead of the layers; nor is a
        # transfer between chips (its route's links and hops differ from layer to layer: glue between pieces)
        inside = set(block)
        members = sorted({i for i in block if i in by_index and by_index[i].unit_class not in GLUE
                          and not _streams_ahead(by_index[i], program, inside)}
                         | {pair_of[i] for i in block if i in pair_of})
        parts: dict[int, list[int]] = {}
        for i in members:
            parts.setdefault(by_index[i].chip, []).append(i)
        for part in sorted(parts.values()):
            segments.append(_Segment(part))
            segment_of.update((i, segments[-1]) for i in part)
    n_pieces = len(segments)
    for i in sorted(by_index):
        if i in segment_of:
            continue
        if i in pair_of and pair_of[i] in segment_of:  # a matmul: with its install, placed just before
            seg = segment_of[pair_of[i]]
            seg.members.append(i)
        else:
            seg = _Segment([i])
            segments.append(seg)
        segment_of[i] = seg
    for seg in segments:
        seg.members.sort()
    return segments, n_pieces


def _segment_graph(segments, segment_of, program: Program):
    """Per segment, the segments it waits for and those waiting for it."""
    seg_preds: dict[int, set[int]] = defaultdict(set)
    seg_succs: dict[int, set[int]] = defaultdict(set)
    for a, seg in enumerate(segments):
        for i in seg.members:
            for p, _ in program.preds[i]:
                b = segment_of.get(p)
                if b is not None and b != a:
                    seg_preds[a].add(b)
                    seg_succs[b].add(a)
    return seg_preds, seg_succs


def _merge_cycles(segments: list[_Segment], n_pieces: int, program: Program) -> tuple[list[_Segment], int]:
    """Each strongly connected set of segments as one (a piece if it holds one), in the order of their first
    segment: blocks' pieces first."""
    segment_of = {i: n for n, seg in enumerate(segments) for i in seg.members}
    _, succs = _segment_graph(segments, segment_of, program)
    components = _strongly_connected(len(segments), {k: sorted(v) for k, v in succs.items()})
    if all(len(c) == 1 for c in components):
        return segments, n_pieces
    merged = sorted(components, key=min)
    out = [_Segment(sorted(i for n in c for i in segments[n].members)) for c in merged]
    return out, sum(1 for c in merged if min(c) < n_pieces)


def _strongly_connected(n: int, succs: dict[int, list[int]]) -> list[list[int]]:
    """Tarjan's strongly connected components of the graph on 0..n-1 (iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    for root in range(n):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, k = work.pop()
            if k == 0:
                index[v] = low[v] = len(index)
                stack.append(v)
                on_stack.add(v)
            nexts = succs.get(v, [])
            if k < len(nexts):
                work.append((v, k + 1))
                w = nexts[k]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            for w in nexts:  # (children done: take their lows)
                if w in on_stack:
                    low[v] = min(low[v], low[w])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                out.append(component)
    return out


def _streams_ahead(ins, program: Program, block: set[int]) -> bool:
    return ins.unit_class == "host" and not any(p in block for p, _ in program.preds[ins.index])


def _length(program: Program, cycles: np.ndarray) -> int:
    return max(int(cycles[ins.index]) + ins.cost.latency for ins in program.instructions)


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


def _shape(members: list[int], program: Program, by_index, uses_of, capacity) -> tuple[tuple, list[tuple]]:
    """What a block is apart from where it sits: per instruction its costs and holds (groups renamed in
    order of appearance, with their capacities) and its read-after-write dependences within the block; and
    the groups it holds, in that order."""
    pos = {i: k for k, i in enumerate(members)}
    rename: dict[tuple, int] = {}
    rows = []
    for i in members:
        ins = by_index[i]
        holds = tuple((rename.setdefault(u.group, len(rename)), capacity[u.group], pos.get(u.last, -1),
                       u.first_off, u.last_off, u.demand) for u in uses_of.get(i, ()))
        edges = tuple((pos[p], d) for p, d in program.raw[i] if p in pos)
        rows.append((ins.unit_class, ins.cost.latency, ins.cost.occupancy, ins.streams, holds, edges))
    return tuple(rows), list(rename)


__all__ = ["MIN_REPEATS", "TemplateStats", "machine_blocks", "template_schedule"]
