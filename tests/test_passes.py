"""The pass interface: run = apply(plan); the pipeline verifies after every pass and keeps the plans; both
schedulers are passes with one result type; the pipeline is built from the compile options."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, fields

import pytest

from lpuc.compiler.allocate import Allocate, Allocation
from lpuc.compiler.lower import Lower
from lpuc.compiler.partition import Partition
from lpuc.compiler.passes import Pass
from lpuc.compiler.pipeline import PASSES, SCHEDULERS, CompileOptions, passes, run_passes
from lpuc.compiler.schedule_cpsat import CpSatScheduler
from lpuc.compiler.schedule_list import ListScheduler, ScheduleResult, apply_schedule
from lpuc.ir import Op, VerifyError, parse, schedule_facts
from lpuc.ir.machine import load_machine
from lpuc.ir.rewrite import rewrite_of
from lpuc.ir.target import Target
from lpuc.ir.verifier import verify

MACHINE = load_machine("tsp-v1")
ONE, TWO = Target(MACHINE), Target(MACHINE, 2)  # run_passes follows the partition to two chips
GRAPH = parse("""module @tiny {
  input %x : f32[2,4]
  %w = graph.constant {value = tensor<f32[4,3], [0.5, -1.0, 0.25, 1.5, 0.0, -0.5, 2.0, 1.0, -0.25, 0.75, 0.5, 1.0]>} : f32[4,3]
  %h = graph.matmul %x, %w : f32[2,3]
  %e = graph.exp %h : f32[2,3]
  %y = graph.add %e, %h : f32[2,3]
  output "y" = %y
}
""")


def test_run_is_apply_of_plan_and_the_pipeline_keeps_each_plan():
    pipeline = (Partition(chips=2), Lower(), Allocate(), ListScheduler())
    scheduled, plans = run_passes(GRAPH, ONE, pipeline)
    assert set(plans) == {"partition", "lower", "allocate", "schedule-list"}
    assert plans["partition"].attrs["chips"] == 2  # a partition is written on the IR
    # the lowering: the module, and which graph op emitted each machine op (-1: the outputs')
    assert plans["lower"].module.attrs["chips"] == 2 and len(plans["lower"].origins) == len(plans["lower"].module.ops)
    assert set(plans["lower"].origins) == {-1, 1, 2, 3}  # the constant (op 0) is emitted by its reader
    assert isinstance(plans["allocate"], Allocation) and isinstance(plans["schedule-list"], ScheduleResult)
    assert scheduled.attrs["chips"] == 2
    module = GRAPH
    for p in pipeline:
        module = p.run(module, TWO)
    assert module == scheduled
    assert scheduled == apply_schedule(_allocated(), plans["schedule-list"])


def _allocated():
    return run_passes(GRAPH, ONE, (Partition(chips=2), Lower(), Allocate()))[0]


def test_the_verifier_runs_after_every_pass():
    @dataclass(frozen=True)
    class Breaks(Pass):
        name = "breaks"

        def apply(self, module, target, plan):  # an op reading a value defined after it
            return module.replace(ops=tuple(reversed(module.ops)))

    with pytest.raises(VerifyError, match="used before its definition"):
        run_passes(GRAPH, ONE, (Breaks(),))


def _rewrite(module, change):
    """`module` with each op rebuilt with the attributes `change(op)` gives, order kept."""
    return module.replace(ops=tuple(Op(op.name, op.operands, op.results, change(op)) for op in module.ops))


def test_a_rewrite_is_checked_in_what_it_changes():
    """After a pass that only rewrites what allocation and scheduling write (ir.rewrite), the verifier checks
    those attributes and the order, the rest held before; anything else changed is checked in full."""
    allocated = _allocated()
    scheduled = apply_schedule(allocated, ListScheduler().plan(allocated, TWO))
    assert verify(scheduled, MACHINE, since=allocated) is scheduled
    bad_unit = _rewrite(scheduled, lambda op: {**dict(op.attrs), **({"unit": 3} if "unit" in op.attrs else {})})
    with pytest.raises(VerifyError, match="attribute 'unit' must be str"):
        verify(bad_unit, MACHINE, since=allocated)
    with pytest.raises(VerifyError, match="used before its definition"):
        verify(scheduled.replace(ops=tuple(reversed(scheduled.ops))), MACHINE, since=allocated)
    # a changed attribute no rewrite writes: not a rewrite, every rule checked
    bad_name = _rewrite(allocated, lambda op: {**dict(op.attrs), **({"name": 7} if "name" in op.attrs else {})})
    for since in (None, allocated):
        with pytest.raises(VerifyError, match="attribute 'name' must be str"):
            verify(bad_name, MACHINE, since=since)


def test_a_rewrite_is_found_once_and_keeps_no_module_alive():
    """The verifier and the schedule facts ask in turn how the scheduled program rewrites the allocated one
    (ir.rewrite): found once, kept only while both modules live."""
    allocated = _allocated()
    scheduled = apply_schedule(allocated, ListScheduler().plan(allocated, TWO))
    verify(scheduled, MACHINE, since=allocated)
    rewrite = rewrite_of(allocated, scheduled)
    assert rewrite is rewrite_of(allocated, scheduled) and rewrite.changed == {"cycle", "unit", "streams"}
    assert [allocated.ops[i].results for i in rewrite.order] == [op.results for op in scheduled.ops]
    schedule_facts.forget()  # (the facts of the last modules described keep them)
    gone = weakref.ref(allocated)
    del allocated
    assert gone() is None


def test_both_schedulers_give_one_result_type():
    allocated = _allocated()
    listed = ListScheduler().plan(allocated, TWO)
    solved = CpSatScheduler().plan(allocated, TWO)
    assert type(listed) is type(solved) is ScheduleResult
    assert (listed.solver_status, listed.list_cycles, listed.solve_seconds) == ("", 0, 0.0)
    assert solved.solver_status in ("optimal", "feasible") and solved.list_cycles == listed.cycles
    assert solved.cycles <= listed.cycles and solved.lower_bound <= solved.cycles
    # wall-clock is reported, never part of what a schedule is
    again = CpSatScheduler().plan(allocated, TWO)
    assert again == solved


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_the_pipeline_is_built_from_the_options(scheduler):
    options = CompileOptions(scheduler=scheduler, effort=0.3, workers=3, window=50, max_windows=4, rounds=1,
                             stripes=2)
    partition, lower, allocate, schedule = passes(options, 4, "tensor")
    assert (partition, lower, allocate) == (Partition(chips=4, strategy="tensor"), Lower(), Allocate(stripes=2))
    assert passes(options, 4, "given")[:2] == (Lower(), Allocate(stripes=2))  # partitioned already: no partition
    assert type(schedule) is SCHEDULERS[scheduler] and PASSES[schedule.name] is SCHEDULERS[scheduler]
    assert all(getattr(schedule, f.name) == getattr(options, f.name) for f in fields(schedule))
