"""The compile driver: a verified graph-level module and a machine -> the
scheduled machine-level module and a frozen summary.

    lower -> verify -> allocate -> verify -> schedule -> verify
"""

from __future__ import annotations

from dataclasses import dataclass

from ir import Module
from ir.machine import Machine
from ir.verifier import verify

from .allocate import Allocate, apply_allocation
from .lower import lower
from .schedule_list import ListScheduler, apply_schedule

SCHEDULERS = ("list",)


@dataclass(frozen=True)
class CompileOptions:
    scheduler: str = "list"
    stripes: int | None = None   # SRAM slices a value is spread over (None: one per byte-plane)
    rounds: int = 2              # list scheduler: forward-backward improvement rounds


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
    sram_peak_bytes: int
    sram_image_bytes: int        # constants (weights), placed before cycle 0
    clock_mhz: float

    @property
    def gap(self) -> float:
        """cycles / lower_bound - 1: how far the schedule may be from optimal."""
        return self.cycles / self.lower_bound - 1 if self.lower_bound else 0.0

    @property
    def microseconds(self) -> float:
        return self.cycles / self.clock_mhz

    @property
    def bound(self) -> str:
        """What the lower bound comes from: a resource, or the critical path."""
        return self.bound_resource if self.resource_bound >= self.critical_path else "critical path"

    def facts(self) -> dict:
        """What the .lpu manifest records of this compile (deterministic: no timings)."""
        return {"lower_bound_cycles": self.lower_bound, "critical_path_cycles": self.critical_path,
                "resource_bound_cycles": self.resource_bound, "bound": self.bound,
                "instructions": self.instructions, "sram_allocated_bytes": self.sram_peak_bytes,
                "sram_image_bytes": self.sram_image_bytes}


def compile_module(graph_module: Module, machine: Machine,
                   options: CompileOptions = CompileOptions()) -> tuple[Module, CompileSummary]:
    if options.scheduler not in SCHEDULERS:
        from ir import LpucError
        raise LpucError(f"unknown scheduler {options.scheduler!r} (choose from {', '.join(SCHEDULERS)})")
    lowered = verify(lower(graph_module, machine))
    allocation = Allocate(options.stripes).plan(lowered, machine)
    allocated = verify(apply_allocation(lowered, allocation))
    result = ListScheduler(options.rounds).schedule(allocated, machine)
    scheduled = verify(apply_schedule(allocated, result))
    summary = CompileSummary(machine.name, result.cycles, result.lower_bound, result.critical_path,
                             result.resource_bound, result.bound_resource, result.instructions,
                             len(scheduled.ops), allocation.peak_bytes, allocation.image_bytes, machine.clock_mhz)
    return scheduled, summary


__all__ = ["CompileOptions", "CompileSummary", "ListScheduler", "compile_module"]
