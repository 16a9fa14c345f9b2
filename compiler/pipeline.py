"""The compile driver: a verified graph-level module and a machine -> the
scheduled machine-level module and a frozen summary.

    partition -> lower -> verify -> allocate -> verify -> schedule -> verify

The chip count defaults to the fewest chips whose SRAM holds the weights; the
partition (compiler/partition.py) is the one asked for, or with `auto` the
fastest of pipeline and tensor by a quick schedule of each. A module that is
partitioned already (it has the `chips` attribute, e.g. an IR file with its
partition written by hand) keeps its partition ("given").
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir import LpucError, Module
from ..ir.layout import words
from ..ir.machine import Machine
from ..ir.registry import LINK, OPS
from ..ir.topology import network, round_chips
from ..ir.verifier import verify

from .allocate import Allocate, DoesNotFit, apply_allocation
from .lower import lower
from .partition import STRATEGIES, describe, partition
from .schedule_cpsat import CpSatScheduler
from .schedule_list import ListScheduler, apply_schedule

SCHEDULERS = ("list", "cpsat")


@dataclass(frozen=True)
class CompileOptions:
    scheduler: str = "cpsat"     # cpsat: CP-SAT warm-started from the list schedule, or list
    effort: float = 0.1          # cpsat: CP-SAT's deterministic time budget (never wall-clock)
    workers: int = 8             # cpsat: solver threads (fixed by default, never the core count)
    window: int = 300            # cpsat: instructions per model (larger programs: window by window)
    max_windows: int = 12        # cpsat: models solved at most (later windows keep the list schedule)
    stripes: int | None = None   # SRAM slices a value is spread over (None: one per byte-plane)
    rounds: int = 2              # list scheduler: forward-backward improvement rounds
    chips: int | None = None     # None: the fewest chips whose SRAM holds the model
    partition: str = "auto"      # auto (the fastest of pipeline and tensor), pipeline or tensor


@dataclass(frozen=True)
class CompileSummary:
    machine: str
    cycles: int                  # the program's length: max issue + latency
    lower_bound: int             # max(critical_path, resource_bound)
    critical_path: int
    resource_bound: int
    bound_resource: str          # the resource whose work / capacity gives resource_bound
    instructions: int
    ops: int                     # instructions + views + constants
    sram_peak_bytes: int         # the largest chip's
    sram_image_bytes: int        # constants (weights), placed before cycle 0, all chips
    clock_mhz: float
    chips: int = 1
    partition: str = "single"    # the strategy used ("given": the module's own)
    partition_lines: tuple[str, ...] = ()        # per chip: what it runs
    candidates: tuple[tuple[str, str], ...] = ()  # (strategy, cycles or why not) of those tried
    transfers: int = 0           # c2c.send instructions
    solver_status: str = ""      # cpsat: optimal / feasible / skipped ...
    solve_seconds: float = 0.0   # cpsat: wall-clock (reported only; never decides anything)
    list_cycles: int = 0         # cpsat: the warm start's length
    proven_bound: int = 0        # cpsat: the solver's proven lower bound (0: none)

    @property
    def gap(self) -> float:
        """cycles / lower_bound - 1: how far the schedule may be from optimal."""
        return self.cycles / self.lower_bound - 1 if self.lower_bound else 0.0

    @property
    def microseconds(self) -> float:
        return self.cycles / self.clock_mhz

    @property
    def bound(self) -> str:
        """What the lower bound comes from: a resource, the critical path, or CP-SAT's proof."""
        if self.proven_bound > max(self.resource_bound, self.critical_path):
            return "CP-SAT proof"
        return self.bound_resource if self.resource_bound >= self.critical_path else "critical path"

    def facts(self) -> dict:
        """What the .lpu manifest records of this compile (deterministic: no timings)."""
        return {"lower_bound_cycles": self.lower_bound, "critical_path_cycles": self.critical_path,
                "resource_bound_cycles": self.resource_bound, "bound": self.bound,
                "instructions": self.instructions, "sram_allocated_bytes": self.sram_peak_bytes,
                "sram_image_bytes": self.sram_image_bytes, "chips": self.chips, "partition": self.partition,
                "partition_lines": list(self.partition_lines), "transfers": self.transfers,
                "candidates": [list(c) for c in self.candidates], "solver_status": self.solver_status,
                "list_cycles": self.list_cycles}


def _allocate(partitioned: Module, machine: Machine, strategy: str, options: CompileOptions, progress=None):
    say = progress or (lambda line: None)
    chips = partitioned.attrs.get("chips", 1)
    where = f" on {chips} chips ({strategy})" if chips > 1 else ""
    say(f"lowering {len(partitioned.ops):,} graph ops{where}")
    lowered = verify(lower(partitioned, machine))
    say(f"allocating SRAM for {len(lowered.ops):,} machine ops")
    allocation = Allocate(options.stripes).plan(lowered, machine)
    return verify(apply_allocation(lowered, allocation)), allocation


def _schedule(allocated: Module, machine: Machine, options: CompileOptions, rounds: int, progress=None,
              scheduler: str = "list"):
    if progress:
        progress(f"scheduling {len(allocated.ops):,} ops ({scheduler}, {rounds} list improvement rounds"
                 + (f", effort {options.effort:g})" if scheduler == "cpsat" else ")"))
    info = None
    if scheduler == "cpsat":
        result, info = CpSatScheduler(options.effort, options.workers, rounds, options.window,
                                      options.max_windows).schedule(allocated, machine, progress)
    else:
        result = ListScheduler(rounds).schedule(allocated, machine)
    return verify(apply_schedule(allocated, result)), result, info


def default_chips(graph: Module, machine: Machine) -> int:
    """The fewest chips (a size the topology supports) whose SRAM holds the model's constants with room to
    spare (a tenth of each chip for activations)."""
    need = sum(words(op.result.type) for op in graph.ops if op.name == "graph.constant")
    usable = machine.sram.slices * machine.sram.words_per_slice * 9 // 10
    return round_chips(machine, -(-need // usable))


def compile_module(graph_module: Module, machine: Machine, options: CompileOptions = CompileOptions(),
                   progress=None) -> tuple[Module, CompileSummary]:
    """`progress`, when given, is called with one line per stage (for long compiles)."""
    if options.scheduler not in SCHEDULERS:
        raise LpucError(f"unknown scheduler {options.scheduler!r} (choose from {', '.join(SCHEDULERS)})")
    if options.effort <= 0 or min(options.workers, options.window, options.max_windows) < 1:
        raise LpucError(f"--effort must be positive, --workers, --window and --max-windows at least 1 (got "
                        f"{options.effort:g}, {options.workers}, {options.window}, {options.max_windows})")
    if options.partition not in STRATEGIES:
        raise LpucError(f"unknown partition {options.partition!r} (choose from {', '.join(STRATEGIES)})")
    if "chips" in graph_module.attrs:  # partitioned already
        chips = graph_module.attrs["chips"]
        if options.chips not in (None, chips) or options.partition != "auto":
            raise LpucError(f"{graph_module.name} is partitioned already, over {chips} chips (its `chips` attribute): "
                            "leave out --chips and --partition, or remove the partition from the IR")
        return _compile_on(graph_module, machine, options, chips, progress)
    if options.chips is not None:
        return _compile_on(graph_module, machine, options, options.chips, progress)
    # The default: the fewest chips whose SRAM holds the weights; when the partition leaves one chip too
    # full, the next size the topology has.
    chips = default_chips(graph_module, machine)
    for _ in range(8):
        try:
            return _compile_on(graph_module, machine, options, chips, progress)
        except DoesNotFit as e:
            if progress:
                progress(f"{e}; trying more chips")
            chips = round_chips(machine, chips + 1)
    return _compile_on(graph_module, machine, options, chips, progress)


def _compile_on(graph_module: Module, machine: Machine, options: CompileOptions, chips: int,
                progress=None) -> tuple[Module, CompileSummary]:
    network(machine, chips)  # a size the topology has
    strategies = ("pipeline", "tensor") if options.partition == "auto" else (options.partition,)
    if "chips" in graph_module.attrs:
        strategies = ("given",)
    elif chips == 1:
        strategies = ("single",)
    tried, best = [], None
    for strategy in strategies:
        partitioned = graph_module if strategy == "given" else partition(graph_module, machine, chips, strategy)
        try:
            allocated, allocation = _allocate(partitioned, machine, strategy, options, progress)
        except DoesNotFit as e:
            if len(strategies) == 1:
                raise
            tried.append((strategy, f"does not fit: {e}"))
            continue
        if len(strategies) == 1:
            best = (strategy, partitioned, allocated, allocation)
            break
        # Candidates are compared by a quick list schedule (no improvement rounds): the cost model is the
        # scheduler itself. Only the winner is scheduled in earnest.
        if progress:
            progress(f"quick list schedule of the {strategy} candidate")
        cycles = ListScheduler(0).schedule(allocated, machine).cycles
        tried.append((strategy, str(cycles)))
        if best is None or cycles < best[4]:
            best = (strategy, partitioned, allocated, allocation, cycles)
    if best is None:
        raise DoesNotFit(f"no partition of {graph_module.name} fits {chips} chips: "
                        + "; ".join(f"{s}: {why}" for s, why in tried))
    strategy, partitioned, allocated, allocation = best[:4]
    scheduled, result, info = _schedule(allocated, machine, options, options.rounds, progress, options.scheduler)
    summary = CompileSummary(machine.name, result.cycles, result.lower_bound, result.critical_path,
                             result.resource_bound, result.bound_resource, result.instructions,
                             len(scheduled.ops), allocation.peak_bytes, allocation.image_bytes, machine.clock_mhz,
                             chips, strategy, tuple(describe(partitioned)) if chips > 1 else (),
                             tuple(tried) if len(strategies) > 1 else (),
                             sum(1 for op in scheduled.ops if OPS[op.name].result_place == LINK),  # sends
                             info.status if info else "", info.seconds if info else 0.0,
                             info.list_cycles if info else 0, result.proven_bound)
    return scheduled, summary


__all__ = ["CompileOptions", "CompileSummary", "ListScheduler", "compile_module", "default_chips"]
