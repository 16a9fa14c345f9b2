"""The CP-SAT scheduler: every instruction at a cycle chosen by OR-Tools CP-SAT,
warm-started from the list schedule, never worse than it, with the solver's
proven lower bound.

The model (docs/design.md, "Scheduling"), over the instructions, costs and
holds of ir.schedule_facts and the dependences the list scheduler derives from
them (`schedule_list.analyze`):
  - one start variable per instruction;
  - precedence: c_j >= c_i + d for every read-after-write, write-after-read and
    transfer-arrival edge;
  - per chip and unit class, a cumulative of capacity = instances (VXM ALUs,
    SXM, MEM, host) over [c, c + occ); the MXM planes as a cumulative over each
    install + matmul pair's hold [c_install, c_matmul + occ_matmul); link ports
    (tx / rx) are fixed by their routes: a no-overlap each;
  - per chip and slice, a no-overlap of the read-port windows and one of the
    write-port windows; per chip, a cumulative of the stream registers over
    [c, c + lat); per link direction, a no-overlap of the sends' hop windows.
Unit instances, planes and stream registers are then assigned from the solved
cycles greedily in start order, which always succeeds when the cumulatives hold
(interval colouring).

Scale: a program of up to `window` instructions is one model whose objective is
the makespan (and whose proven bound is reported). A larger one is solved window
by window, in the order the list schedule starts its instructions: every other
instruction is held where it is (its resource holds and dependences become
constants), and the window minimizes when it ends, then how early its
instructions start. Each window is feasible at its current cycles, so every step
keeps a valid schedule, and pulling one window earlier lets the next ones move
up. Windows are cut where the instructions' content says (content-defined
chunking), so repeated layers give windows of equal structure; a window equal to
one solved before first tries that schedule, shifted, and keeps it without a
solve when it fits and is no worse. At most `max_windows` models are solved; the
windows past them keep the list schedule, so compile time stays linear in the
program (the list scheduler's) plus a bounded solver time.

Determinism: a fixed seed, a deterministic time limit (`effort`, CP-SAT's
deterministic seconds per model -- never wall-clock), and `interleave_search`
with a fixed batch size, so the schedule depends neither on the machine nor on
the number of threads. Every solver parameter is set here from the recorded
options; none is read from the environment.
"""

from __future__ import annotations

import functools
import re
import time
import zlib
from dataclasses import dataclass, replace
from itertools import islice
from typing import NamedTuple

import numpy as np

from ..ir import Module
from ..ir.costs import units
from ..ir.machine import Machine
from ..ir.target import Target

from .schedule_list import (Program, ScheduleResult, Scheduler, analyze, list_schedule, lower_bounds,
                            schedule_result)


@dataclass(frozen=True)
class CpSatScheduler(Scheduler):
    """The CP-SAT scheduler as a pass; its ScheduleResult says how the solve went (status: optimal / feasible /
    unknown for one model, "windowed: ..." for many; the warm start's cycles; the proven bound)."""

    name = "schedule-cpsat"
    effort: float = 0.1     # CP-SAT deterministic seconds per model (the program, or each window)
    workers: int = 8        # solver threads (fixed; never the core count; at least 2 are run)
    rounds: int = 2         # the warm start's list-scheduler rounds
    window: int = 300       # instructions per model; larger programs are solved window by window
    max_windows: int = 12   # models solved per program (templated: over all templates, compiler.templates):
                            # past them, windows keep the list schedule

    def plan(self, module: Module, target: Target, progress=None) -> ScheduleResult:
        return cpsat_schedule(module, target, self, progress)


# --- resource uses ------------------------------------------------------------------------------------

class _Use(NamedTuple):
    """An instruction's (or an install + matmul pair's) hold on a resource group:
    [c_first + first_off, c_last + last_off) with `demand` of the group's capacity. (A tuple: a program has
    millions, made faster than a frozen dataclass's.)"""
    group: tuple
    first: int
    first_off: int
    last: int
    last_off: int
    demand: int = 1


def _uses(program: Program, machine: Machine) -> tuple[list[_Use], dict[tuple, int]]:
    """Every resource use, and each group's capacity (a no-overlap group has capacity 1)."""
    counts = units(machine)
    n_streams = machine.streams.east + machine.streams.west
    pair_of = dict(program.install_of)   # matmul -> install
    paired = set(pair_of.values())
    uses, capacity = [], {}
    groups: dict[tuple, tuple] = {}  # each group's key, one object for all its uses (a few groups, millions of uses)

    def use(group: tuple, cap: int, first: int, first_off: int, last: int, last_off: int, demand: int = 1) -> None:
        group = groups.setdefault(group, group)
        uses.append(_Use(group, first, first_off, last, last_off, demand))
        capacity[group] = cap

    for ins in program.instructions:
        i, c, chip = ins.index, ins.cost, ins.chip
        if ins.fixed_unit is not None:
            use((ins.unit_class, chip, ins.fixed_unit), 1, i, 0, i, c.occupancy)
        elif i in pair_of:  # the plane is held from the install's issue to the end of its matmul
            use((chip, "mxm"), counts["mxm"], pair_of[i], 0, i, c.occupancy)
        elif i not in paired:
            use((chip, ins.unit_class), counts[ins.unit_class], i, 0, i, c.occupancy)
        if ins.streams:
            use((chip, "streams"), n_streams, i, 0, i, c.latency, ins.streams)
        for key, off, length in ins.holds(machine):
            use(key, 1, i, off, i, off + length)
    return uses, capacity


# --- one model: its canonical description, and the solve ----------------------------------------------

@dataclass(frozen=True)
class _Spec:
    """Everything a window's model is built from, relative to the window's first cycle, with resources
    numbered in order of appearance: equal specs give equal models and so equal solutions."""
    latency: tuple[int, ...]
    lo: tuple[int, ...]
    hi: tuple[int, ...]
    hint: tuple[int, ...]
    edges: tuple[tuple[int, int, int], ...]          # (a, b, d): c_b >= c_a + d
    # per group: (capacity, free uses (first, first_off, last, last_off, demand) with -1 for a fixed end
    # whose offset is then the cycle, fixed holds (start, end, demand))
    groups: tuple[tuple[int, tuple, tuple], ...]
    makespan_only: bool                             # the whole program: minimize its length, nothing else
    floor: int = 0                                  # a known lower bound on the end (the structural one)

    def structure(self) -> tuple:
        """What a window is, apart from where it sits: its instructions, dependences and resource uses."""
        return (self.latency, self.edges,
                tuple((cap, tuple((a, a_off if a >= 0 else None, b, b_off if b >= 0 else None, d)
                                  for a, a_off, b, b_off, d in free)) for cap, free, _ in self.groups))

    def cost(self, cycles) -> int:
        """The window's objective at these (relative) cycles."""
        end = max(c + lat for c, lat in zip(cycles, self.latency))
        return end if self.makespan_only else (len(cycles) + 1) * end + sum(cycles)

    def admits(self, cycles) -> bool:
        """Whether these relative cycles meet this window's bounds, dependences and resources."""
        if any(not lo <= c <= hi for c, lo, hi in zip(cycles, self.lo, self.hi)):
            return False
        if any(cycles[b] < cycles[a] + d for a, b, d in self.edges):
            return False
        for cap, free, fixed in self.groups:
            events = []
            for a, a_off, b, b_off, d in free:
                s = cycles[a] + a_off if a >= 0 else a_off
                e = cycles[b] + b_off if b >= 0 else b_off
                if e > s:
                    events += [(s, d), (e, -d)]
            for s, e, d in fixed:
                events += [(s, d), (e, -d)]
            load = 0
            for _, d in sorted(events, key=lambda x: (x[0], x[1])):  # ends before starts at the same cycle
                load += d
                if load > cap:
                    return False
        return True


def _solve(spec: _Spec, options: CpSatScheduler, progress=None, sequential: bool = False):
    """-> (status, cycles relative to the window or None when nothing better was found, proven bound).
    `sequential`: one solver thread (`options.workers` does not apply)."""
    from ortools.sat.python import cp_model  # (imported once a model is solved: with pandas, a fifth of a second)

    m = cp_model.CpModel()
    n = len(spec.latency)
    start = [m.new_int_var(lo, hi, f"c{k}") for k, (lo, hi) in enumerate(zip(spec.lo, spec.hi))]
    end_lo = max([spec.floor] + [lo + lat for lo, lat in zip(spec.lo, spec.latency)])
    end_hint = max(h + lat for h, lat in zip(spec.hint, spec.latency))
    finish = m.new_int_var(end_lo, end_hint, "end")
    for k in range(n):
        m.add(start[k] + spec.latency[k] <= finish)
        m.add_hint(start[k], spec.hint[k])
    m.add_hint(finish, end_hint)
    for a, b, d in spec.edges:
        m.add(start[b] >= start[a] + d)

    def at(k, off):
        return start[k] + off if k >= 0 else off

    def hinted(k, off):
        return spec.hint[k] + off if k >= 0 else off

    for g, (cap, free, fixed) in enumerate(spec.groups):
        intervals, demands = [], []
        for u, (a, a_off, b, b_off, demand) in enumerate(free):
            if a == b:
                intervals.append(m.new_fixed_size_interval_var(at(a, a_off), b_off - a_off, f"g{g}u{u}"))
            else:  # a plane hold: from the install to the end of its matmul
                size = m.new_int_var(0, spec.hi[b] + b_off if b >= 0 else b_off, f"g{g}s{u}")
                m.add_hint(size, hinted(b, b_off) - hinted(a, a_off))
                intervals.append(m.new_interval_var(at(a, a_off), size, at(b, b_off), f"g{g}u{u}"))
            demands.append(demand)
        for u, (s, e, demand) in enumerate(fixed):
            intervals.append(m.new_fixed_size_interval_var(s, e - s, f"g{g}f{u}"))
            demands.append(demand)
        if cap == 1:
            m.add_no_overlap(intervals)
        else:
            m.add_cumulative(intervals, demands, cap)
    if spec.makespan_only:
        m.minimize(finish)
    else:  # end the window early, then start each instruction early (it frees the next windows)
        m.minimize((n + 1) * finish + sum(start))

    solver = cp_model.CpSolver()
    prm = solver.parameters
    prm.random_seed = 1
    prm.max_deterministic_time = options.effort
    if sequential:
        # One thread, CP-SAT's sequential search: deterministic by itself, and the model is loaded once, not
        # once per subsolver (on a layer's windows of a thousand port holds, eight subsolvers' loading took
        # 10 of 11 CPU seconds for a 0.1 s deterministic budget; alone it takes 0.3 s)
        prm.num_workers = 1
    else:
        # CP-SAT's one-thread search is a different algorithm (it gave other schedules than 2 to 8 threads,
        # which agree with each other): run at least two, interleaved in fixed batches.
        prm.num_workers = max(2, options.workers)
        prm.interleave_search = True
        prm.interleave_batch_size = 8
    status = solver.solve(m, _progress_class()(finish, progress) if progress and spec.makespan_only else None)
    name = {cp_model.OPTIMAL: "optimal", cp_model.FEASIBLE: "feasible", cp_model.INFEASIBLE: "infeasible",
            cp_model.MODEL_INVALID: "invalid"}.get(status, "unknown")
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return name, None, 0
    bound = int(solver.best_objective_bound) if spec.makespan_only else 0
    return name, tuple(solver.value(s) for s in start), bound


@functools.cache
def _progress_class() -> type:
    """The solver's callback reporting progress (a class of OR-Tools', made once it is imported)."""
    from ortools.sat.python import cp_model

    class _Progress(cp_model.CpSolverSolutionCallback):
        """Reports each better schedule and the bound (it only watches: the search is the same without it)."""

        def __init__(self, makespan, progress):
            super().__init__()
            self.makespan, self.progress = makespan, progress

        def on_solution_callback(self):
            self.progress(f"CP-SAT: {int(self.value(self.makespan)):,} cycles, "
                          f"bound {int(self.best_objective_bound):,}")

    return _Progress


# --- windows ------------------------------------------------------------------------------------------

class _Windows:
    """The current cycle of every instruction, and the specs of windows over it."""

    def __init__(self, program: Program, machine: Machine, cycles: np.ndarray):
        self.program, self.cycles = program, cycles
        self.latency = np.zeros(len(cycles), dtype=np.int64)
        for ins in program.instructions:
            self.latency[ins.index] = ins.cost.latency
        self.succs: dict[int, list[tuple[int, int]]] = {}
        for ins in program.instructions:
            for p, d in program.preds[ins.index]:
                self.succs.setdefault(p, []).append((ins.index, d))
        uses, self.capacity = _uses(program, machine)
        self.uses_of: dict[int, list[_Use]] = {}
        by_group: dict[tuple, list[_Use]] = {}
        for u in uses:
            for i in {u.first, u.last}:
                self.uses_of.setdefault(i, []).append(u)
            by_group.setdefault(u.group, []).append(u)
        # per group, as arrays: to find the holds near a window fast
        self.arrays = {g: tuple(np.array(col, dtype=np.int64) for col in
                                zip(*[(u.first, u.first_off, u.last, u.last_off, u.demand) for u in us]))
                       for g, us in by_group.items()}

    def spec(self, free: list[int], whole: bool, floor: int = 0) -> tuple[_Spec, int]:
        """The spec of the window of instructions `free` (sorted) and its first cycle."""
        cyc, lat = self.cycles, self.latency
        local = {i: k for k, i in enumerate(free)}
        lo = {i: 0 for i in free}
        outside_pred = set()
        edges = []
        for i in free:
            for p, d in self.program.preds[i]:
                if p in local:
                    edges.append((local[p], local[i], d))
                else:
                    lo[i] = max(lo[i], int(cyc[p]) + d)
                    outside_pred.add(i)
        t0 = 0 if whole else min(lo[i] if i in outside_pred else int(cyc[i]) for i in free)
        t1 = max(int(cyc[i] + lat[i]) for i in free)
        hi = {}
        for i in free:
            lo[i] = max(lo[i], t0)
            hi[i] = t1 - int(lat[i])
            for s, d in self.succs.get(i, ()):
                if s not in local:
                    hi[i] = min(hi[i], int(cyc[s]) - d)
        # per resource group (in order of appearance: that is the renaming), the window's holds and the
        # cycles they can reach: a free start is >= its lower bound, a free end <= its upper bound + offset
        free_uses: dict[tuple, list] = {}
        span: dict[tuple, list[int]] = {}
        seen = set()
        for i in free:
            for u in self.uses_of.get(i, ()):
                if id(u) in seen:
                    continue
                seen.add(id(u))
                a, b = local.get(u.first, -1), local.get(u.last, -1)
                first = (a, u.first_off) if a >= 0 else (-1, int(cyc[u.first]) + u.first_off - t0)
                last = (b, u.last_off) if b >= 0 else (-1, int(cyc[u.last]) + u.last_off - t0)
                free_uses.setdefault(u.group, []).append((*first, *last, u.demand))
                lo_s = lo[u.first] + u.first_off if a >= 0 else t0 + first[1]
                hi_e = hi[u.last] + u.last_off if b >= 0 else t0 + last[1]
                reach = span.setdefault(u.group, [lo_s, hi_e])
                reach[0], reach[1] = min(reach[0], lo_s), max(reach[1], hi_e)
        mask = np.zeros(len(cyc), dtype=bool)
        mask[free] = True
        groups = []
        for g, items in free_uses.items():
            first, first_off, last, last_off, demand = self.arrays[g]
            s, e = cyc[first] + first_off, cyc[last] + last_off
            near = (s < span[g][1]) & (e > span[g][0]) & ~mask[first] & ~mask[last]
            fixed = sorted(zip((s[near] - t0).tolist(), (e[near] - t0).tolist(), demand[near].tolist()))
            cap = self.capacity[g]
            if len(items) + len(fixed) > 1 and (cap == 1 or sum(x[-1] for x in items) + sum(f[2] for f in fixed) > cap):
                groups.append((cap, tuple(items), tuple(fixed)))
        spec = _Spec(tuple(int(lat[i]) for i in free), tuple(lo[i] - t0 for i in free),
                     tuple(hi[i] - t0 for i in free), tuple(int(cyc[i]) - t0 for i in free), tuple(sorted(edges)),
                     tuple(groups), whole, floor)
        return spec, t0


def cpsat_schedule(module: Module, target: Target, options: CpSatScheduler, progress=None) -> ScheduleResult:
    """`progress`, when given, hears of every better schedule the solver finds (or of the windows done)."""
    machine = target.machine
    program = analyze(module, target)
    base = list_schedule(module, target, options.rounds, program)
    t_start = time.perf_counter()
    cycles = np.array([p.cycle for p in base.placements], dtype=np.int64)
    # The model's floor on the length is the plain bound (critical path, work / capacity), not the chained
    # one: a floor is part of the model, and the chained one changed CP-SAT's search (it gave two samples
    # 1 and 115 cycles longer schedules).
    critical, _, _, plain = lower_bounds(program, machine)
    solved, status, bound, _ = solve_cycles(program, machine, cycles, max(critical, plain), options, progress)
    placed = _as_placed(base) if solved is None else _assign(program, machine, solved)
    return replace(schedule_result(module, program, machine, placed, bound), solver_status=status,
                   list_cycles=base.cycles, solve_seconds=time.perf_counter() - t_start)


def solve_cycles(program: Program, machine: Machine, cycles: np.ndarray, floor: int, options: CpSatScheduler,
                 progress=None, sequential: bool = False) -> tuple[np.ndarray | None, str, int, int]:
    """Improve a valid schedule's `cycles` (per op index; those of `program`'s instructions count) with
    CP-SAT: -> (the better cycles, or None when none was found; the status; the proven bound, 0: none;
    the models solved). `floor`: a known lower bound on the length; `sequential`: one solver thread."""
    order = sorted((ins.index for ins in program.instructions), key=lambda i: (cycles[i], i))
    if not order:
        return None, "skipped", 0, 0
    cycles = cycles.copy()
    windows = _Windows(program, machine, cycles)
    length = int(max(cycles[i] + windows.latency[i] for i in order))
    if len(order) <= options.window:
        spec, t0 = windows.spec(sorted(order), whole=True, floor=floor)
        status, solved, bound = _solve(spec, options, progress, sequential)
        if solved is None or max(c + lat for c, lat in zip(solved, spec.latency)) >= length:
            return None, status, bound, 1
        cycles[sorted(order)] = solved
        return cycles, status, bound, 1

    chunks = _chunks(order, program, options.window)
    solved: dict[tuple, tuple[int, ...]] = {}   # a window's structure -> the relative cycles solved for it
    reused = solves = 0
    for n, free in enumerate(chunks, 1):
        spec, t0 = windows.spec(free, whole=False)
        shape = spec.structure()
        earlier = solved.get(shape)
        if earlier is not None and spec.admits(earlier) and spec.cost(earlier) <= spec.cost(spec.hint):
            reused += 1   # a repeat of a window solved before: its schedule, shifted, fits here
            found = earlier
            solving = False
        elif solves < options.max_windows:
            solves += 1
            found = _solve(spec, options, sequential=sequential)[1]
            if found is not None:
                solved.setdefault(shape, found)
            solving = True
        else:
            found, solving = None, False  # over the budget: the list schedule stays
        if found is not None and spec.cost(found) < spec.cost(spec.hint):
            cycles[free] = np.array(found, dtype=np.int64) + t0
        if progress and (solving or n % max(1, len(chunks) // 10) == 0 or n == len(chunks)):
            now = int(max(cycles[i] + windows.latency[i] for i in order))
            progress(f"CP-SAT: window {n:,} of {len(chunks):,}: {now:,} cycles "
                     f"(list schedule {length:,}; {reused:,} windows took the schedule of an equal one)")
    status = (f"windowed: {solves} of {len(chunks)} windows solved, {reused} took an equal one's schedule"
              + (f" (at most {options.max_windows} are solved)" if solves == options.max_windows else ""))
    return cycles, status, 0, solves


def _chunks(order: list[int], program: Program, window: int) -> list[list[int]]:
    """`order` cut into windows of `window` // 2 to `window` instructions where the content says so
    (content-defined chunking): a window ends after an instruction whose signature, with the few before it,
    hashes to 0 mod `window` // 2, so repeated layers are cut at the same places and give equal windows."""
    kind = {ins.index: f"{ins.unit_class}/{ins.cost.latency}/{ins.cost.occupancy}/{ins.streams}"
            for ins in program.instructions}
    chunks, current = [], []
    for k, i in enumerate(order):
        current.append(i)
        recent = "|".join(kind[j] for j in order[max(0, k - 3):k + 1])
        boundary = zlib.crc32(recent.encode()) % max(1, window // 2) == 0 and len(current) >= window // 2
        if boundary or len(current) >= window:
            chunks.append(sorted(current))
            current = []
    if current:
        chunks.append(sorted(current))
    return chunks


def _as_placed(result: ScheduleResult) -> dict[int, tuple[int, int, tuple[int, ...]]]:
    out = {}
    for i, p in enumerate(result.placements):
        if p.unit is not None:
            out[i] = (p.cycle, int(re.search(r"\d+$", p.unit).group()), p.streams)
    return out


def _assign(program, machine: Machine, cycles) -> dict[int, tuple[int, int, tuple[int, ...]]]:
    """Unit instances, planes and stream registers for solved cycles: greedily in start order (the
    cumulatives guarantee enough are free)."""
    counts = units(machine)
    n_streams = machine.streams.east + machine.streams.west
    instrs = {ins.index: ins for ins in program.instructions}
    cycles = {i: int(cycles[i]) for i in instrs}
    pair_of = dict(program.install_of)
    paired = set(pair_of.values())
    free_at: dict[tuple, list[int]] = {}    # (chip, class) -> per instance: busy until
    regs: dict[int, list[int]] = {}         # chip -> per stream register: busy until
    unit: dict[int, int] = {}
    holds = []                              # (start, end, instruction or pair)
    for i, ins in instrs.items():
        c = cycles[i]
        if ins.fixed_unit is not None:
            unit[i] = ins.fixed_unit
        elif i in paired:
            continue  # with its matmul
        elif i in pair_of:
            holds.append((cycles[pair_of[i]], c + ins.cost.occupancy, i, ins.chip, "mxm"))
        else:
            holds.append((c, c + ins.cost.occupancy, i, ins.chip, ins.unit_class))
    for s, e, i, chip, cls in sorted(holds):
        slots = free_at.setdefault((chip, cls), [0] * counts[cls])
        k = next(k for k, t in enumerate(slots) if t <= s)
        slots[k] = e
        unit[i] = k
        if i in pair_of:
            unit[pair_of[i]] = k
    streams: dict[int, tuple[int, ...]] = {}
    for i in sorted(instrs, key=lambda i: (cycles[i], i)):
        ins = instrs[i]
        if not ins.streams:
            streams[i] = ()
            continue
        slots = regs.setdefault(ins.chip, [0] * n_streams)
        ids = tuple(islice((k for k, t in enumerate(slots) if t <= cycles[i]), ins.streams))  # the lowest free
        for k in ids:
            slots[k] = cycles[i] + ins.cost.latency
        streams[i] = ids
    return {i: (cycles[i], unit[i], streams[i]) for i in instrs}


__all__ = ["CpSatScheduler", "cpsat_schedule", "solve_cycles"]
