"""Op properties are declared once, in the registry, and every consumer asks it.

- a new machine op is one declaration plus its numpy implementation: a test op
  compiles (allocates, schedules with both schedulers), writes and reads as a
  .lpu, runs untimed and on the interpreter, with no other table touched;
- the unit class a graph op is drawn in is the one its lowering computes it on.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from lpuc.backends.graph import unit_class as drawn_class
from lpuc.backends.interpreter import run
from lpuc.backends.lpu import build_program, load_lpu, lpu_bytes
from lpuc.compiler.allocate import Allocate
from lpuc.compiler.lower import evaluate_machine, lower
from lpuc.compiler.schedule_cpsat import CpSatScheduler
from lpuc.compiler.schedule_list import ListScheduler
from lpuc.ir import machine_ops as mo
from lpuc.ir.builder import Builder
from lpuc.ir.evaluator import EVAL
from lpuc.ir.machine import SHIPPED, parse_machine
from lpuc.ir.registry import OPS, SRAM, defop
from lpuc.ir.target import Target
from lpuc.ir.types import DType, TensorType
from lpuc.ir.verifier import verify

from test_lower import HAND

MACHINE_TEXT = (SHIPPED / "tsp-v1.toml").read_text()
MACHINE = parse_machine(MACHINE_TEXT)
TSP_V1 = Target(MACHINE)


@contextmanager
def doubling_op():
    """`vxm.test_double`: x * 2 on the VXM, registered for the test's duration."""
    defop("vxm.test_double", 1, dict(mo.SCHEDULE_ATTRS), doc="twice x", unit="vxm", places=(SRAM,),
          result_place=SRAM)(lambda types, attrs: types[0])
    EVAL["vxm.test_double"] = lambda args, attrs: args[0] * 2
    try:
        yield
    finally:
        del OPS["vxm.test_double"], EVAL["vxm.test_double"]


def doubling_module():
    b = Builder()
    x = b.input("x", TensorType((5, 333), DType.f32))
    y = b.op("vxm.test_double", b.op("host.input", x, name="x"))
    b.output("y", b.op("host.output", y, name="y"))
    return b.build("double", machine=MACHINE.name)


def test_a_new_machine_op_is_one_declaration_and_its_implementation():
    x = np.random.default_rng(0).standard_normal((5, 333)).astype(np.float32)
    with doubling_op():
        module = verify(doubling_module())
        np.testing.assert_array_equal(evaluate_machine(module, {"x": x})["y"], x * 2)
        allocated = verify(Allocate().run(module, TSP_V1))
        for scheduled in (ListScheduler().run(allocated, TSP_V1), CpSatScheduler().run(allocated, TSP_V1)):
            program = load_lpu(lpu_bytes(verify(scheduled), MACHINE_TEXT))  # printed, parsed, verified
            op = next(op for op in program.module.ops if op.name == "vxm.test_double")
            assert op.attrs["unit"].startswith("vxm")
            result = run(program, {"x": x})
            np.testing.assert_array_equal(result.outputs["y"], x * 2)
            assert result.stats.cycles == program.cycles == build_program(scheduled, MACHINE_TEXT).cycles
    assert "vxm.test_double" not in OPS and "vxm.test_double" not in mo.machine_ops()


def test_graph_ops_are_drawn_in_the_class_their_lowering_computes_them_on():
    """Every graph op's declared unit class (what the graph viewer colours) is that of the instruction
    computing its result once lowered (through views), and its machine mirror runs on that class too."""
    seen = set()
    for graph in (make()[0] for make in HAND.values()):  # every graph op, matmuls of every shape
        seen |= _check_classes(graph)
    # (constants and states: placed before cycle 0, nothing computes them)
    assert seen == {n for n in OPS if n.startswith("graph.") and OPS[n].min_operands}
    for machine_op, graph_op in mo.GRAPH_EQUIVALENT.items():
        assert mo.unit_class(machine_op) == OPS[graph_op].unit == machine_op.split(".")[0]


def _check_classes(graph) -> set[str]:
    lowered = lower(graph, TSP_V1)
    producer = {r.name: op for op in lowered.ops for r in op.results}

    def computed_by(name, reshaping=False):
        """The instruction computing `name`: through views and (unless the op is a reshape itself) the
        reshape restoring its shape (a matmul by a vector is computed as one by a matrix)."""
        op = producer[name]
        while mo.is_view(op.name) or (not reshaping and mo.GRAPH_EQUIVALENT.get(op.name) == "graph.reshape"):
            op = producer[op.operands[0].name]
        return op

    seen = set()
    for op in graph.ops:
        if not op.operands:  # constants and states: placed before cycle 0, no instruction
            assert drawn_class(op.name) == "mem" and OPS[op.name].unit is None
            continue
        reshaping = op.name == "graph.reshape"
        inputs = {computed_by(v.name, reshaping).results[0].name for v in op.operands if v.name in producer}
        made = computed_by(op.results[0].name, reshaping)
        if made.results[0].name in inputs or made.name == "host.input":
            continue  # a reshape that is a view of its operand: nothing computes it
        assert drawn_class(op.name) == OPS[op.name].unit == mo.unit_class(made.name), (op.name, made.name)
        seen.add(op.name)
    return seen
