"""The CP-SAT scheduler: every instruction at a cycle chosen by OR-Tools CP-SAT,
warm-started from the list schedule, never worse than it, with the solver's
proven lower bound.

The model (../shared/DESIGN.md, "Scheduling"), over the dependences and costs
the list scheduler derives (`schedule_list.analyze`):
  - one start variable per instruction, c + lat <= makespan (minimized);
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

Determinism: a fixed seed, a deterministic time limit (`effort`, CP-SAT's
deterministic seconds — never wall-clock), and `interleave_search` with a fixed
batch size, so the schedule does not depend on the machine; `workers` is part of
the options recorded in the .lpu manifest.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from ortools.sat.python import cp_model

from ir import Module
from ir.costs import units
from ir.machine import Machine

from .schedule_list import (ListScheduler, ScheduleResult, analyze, list_schedule, port_and_link_windows,
                            schedule_result)

STATUS = {cp_model.OPTIMAL: "optimal", cp_model.FEASIBLE: "feasible", cp_model.INFEASIBLE: "infeasible",
          cp_model.MODEL_INVALID: "invalid", cp_model.UNKNOWN: "unknown"}


@dataclass(frozen=True)
class SolveInfo:
    status: str            # optimal / feasible (improved or not) / unknown / skipped
    seconds: float         # wall-clock solve time (reported, never used to decide anything)
    list_cycles: int       # the warm start's length
    proven_bound: int


@dataclass(frozen=True)
class CpSatScheduler:
    effort: float = 0.1     # CP-SAT deterministic seconds
    workers: int = 8        # solver threads (fixed; never the core count; at least 2 are run)
    rounds: int = 2         # the warm start's list-scheduler rounds
    max_instructions: int = 20000  # larger programs keep the list schedule (status "skipped")

    def schedule(self, module: Module, machine: Machine, progress=None) -> tuple[ScheduleResult, SolveInfo]:
        return cpsat_schedule(module, machine, self, progress)


class _Progress(cp_model.CpSolverSolutionCallback):
    """Reports each better schedule and the bound (it only watches: the search is the same without it)."""

    def __init__(self, makespan, progress):
        super().__init__()
        self.makespan, self.progress = makespan, progress

    def on_solution_callback(self):
        self.progress(f"CP-SAT: {int(self.value(self.makespan)):,} cycles, bound {int(self.best_objective_bound):,}")


def cpsat_schedule(module: Module, machine: Machine, options: CpSatScheduler,
                   progress=None) -> tuple[ScheduleResult, SolveInfo]:
    """`progress`, when given, hears of every better schedule the solver finds."""
    base = list_schedule(module, machine, options.rounds)
    program = analyze(module, machine)
    instrs = {ins.index: ins for ins in program.instructions}
    if not instrs or len(instrs) > options.max_instructions:
        return base, SolveInfo("skipped", 0.0, base.cycles, 0)
    horizon = base.cycles
    m = cp_model.CpModel()
    start = {i: m.new_int_var(0, horizon - ins.cost.latency, f"c{i}") for i, ins in instrs.items()}
    makespan = m.new_int_var(base.lower_bound, horizon, "makespan")
    for i, ins in instrs.items():
        m.add(start[i] + ins.cost.latency <= makespan)
    for j in instrs:
        for i, d in program.preds[j]:
            if i in start:
                m.add(start[j] >= start[i] + d)

    counts = units(machine)
    cumulative: dict[tuple, list] = {}   # (chip, resource) -> [(interval, demand)]
    disjoint: dict[tuple, list] = {}     # (kind, chip, slice / port / unit) -> [interval]
    pair_of = dict(program.install_of)   # matmul -> install
    paired = set(pair_of.values())
    for i, ins in instrs.items():
        c, chip, s = ins.cost, ins.chip, start[i]
        if ins.fixed_unit is not None:
            disjoint.setdefault((ins.unit_class, chip, ins.fixed_unit), []).append(
                m.new_fixed_size_interval_var(s, c.occupancy, f"u{i}"))
        elif ins.unit_class == "mxm":
            if i in pair_of:  # the plane is held from the install's issue to the end of its matmul
                inst = pair_of[i]
                hold = m.new_int_var(0, horizon, f"hold{i}")
                end = m.new_int_var(0, horizon, f"end{i}")
                m.add(end == s + c.occupancy)
                cumulative.setdefault((chip, "mxm"), []).append(
                    (m.new_interval_var(start[inst], hold, end, f"plane{i}"), 1))
            elif i not in paired:
                cumulative.setdefault((chip, "mxm"), []).append((m.new_fixed_size_interval_var(s, c.occupancy,
                                                                                               f"u{i}"), 1))
        else:
            cumulative.setdefault((chip, ins.unit_class), []).append(
                (m.new_fixed_size_interval_var(s, c.occupancy, f"u{i}"), 1))
        if ins.streams:
            cumulative.setdefault((chip, "streams"), []).append(
                (m.new_fixed_size_interval_var(s, c.latency, f"st{i}"), ins.streams))
        for key, off, length in port_and_link_windows(ins, machine):
            disjoint.setdefault(key, []).append(m.new_fixed_size_interval_var(s + off, length, f"p{i}"))
    streams = machine.streams.east + machine.streams.west
    for (chip, name), items in sorted(cumulative.items()):
        capacity = streams if name == "streams" else counts[name]
        m.add_cumulative([iv for iv, _ in items], [d for _, d in items], capacity)
    for key, items in sorted(disjoint.items()):
        if len(items) > 1:
            m.add_no_overlap(items)
    m.minimize(makespan)
    for i, p in enumerate(base.placements):
        if i in start:
            m.add_hint(start[i], p.cycle)

    solver = cp_model.CpSolver()
    prm = solver.parameters
    prm.random_seed = 1
    # CP-SAT's one-thread search is a different algorithm (it gave other schedules than 2 to 8 threads,
    # which agree with each other): run at least two.
    prm.num_workers = max(2, options.workers)
    prm.max_deterministic_time = options.effort
    prm.interleave_search = True
    prm.interleave_batch_size = 8
    t0 = time.perf_counter()
    status = solver.solve(m, _Progress(makespan, progress) if progress else None)
    seconds = time.perf_counter() - t0
    name = STATUS.get(status, "unknown")
    bound = int(solver.best_objective_bound) if status in (cp_model.OPTIMAL, cp_model.FEASIBLE) else 0
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE) or solver.value(makespan) >= base.cycles:
        info = SolveInfo(name, seconds, base.cycles, bound)
        return schedule_result(module, program, machine, _as_placed(base), bound), info
    cycles = {i: solver.value(start[i]) for i in instrs}
    placed = _assign(program, machine, cycles)
    return schedule_result(module, program, machine, placed, bound), SolveInfo(name, seconds, base.cycles, bound)


def _as_placed(result: ScheduleResult) -> dict[int, tuple[int, int, tuple[int, ...]]]:
    out = {}
    for i, p in enumerate(result.placements):
        if p.unit is not None:
            out[i] = (p.cycle, int(re.search(r"\d+$", p.unit).group()), p.streams)
    return out


def _assign(program, machine: Machine, cycles: dict[int, int]) -> dict[int, tuple[int, int, tuple[int, ...]]]:
    """Unit instances, planes and stream registers for solved cycles: greedily in start order (the
    cumulatives guarantee enough are free)."""
    counts = units(machine)
    n_streams = machine.streams.east + machine.streams.west
    instrs = {ins.index: ins for ins in program.instructions}
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
        ids = tuple(k for k, t in enumerate(slots) if t <= cycles[i])[:ins.streams]
        for k in ids:
            slots[k] = cycles[i] + ins.cost.latency
        streams[i] = ids
    return {i: (cycles[i], unit[i], streams[i]) for i in instrs}


__all__ = ["CpSatScheduler", "ListScheduler", "SolveInfo", "cpsat_schedule"]
