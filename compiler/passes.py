"""The pass interface, and the passes that do not belong to one stage.

A pass is a frozen dataclass: its fields are its options, its class attribute
`name` is what pipelines and golden IR files call it, and `str(pass)` spells it
the way they do (`allocate stripes=1`; options at their defaults are left out,
and so are those the driver derives, declared with `field(repr=False)`).
It takes a module and the target (ir.target.Target: the machine, the chips and their
network) and gives a module:

    run(module, target) = apply(module, target, plan(module, target))

`plan` is the pure analysis, returning what the pass decided as a frozen value
(a Partition, an Allocation, a ScheduleResult; None for a pass that decides
nothing worth reporting), and `apply` writes it into the module. The pipeline
(compiler/pipeline.py) keeps the plans, so the compile summary reports them
without deriving anything again.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from ..ir import Module, Op, Value
from ..ir.attributes import AttrDict, Tensor
from ..ir.registry import OPS
from ..ir.verifier import verify


@dataclass(frozen=True)
class Pass:
    name: ClassVar[str]

    def plan(self, module: Module, target, progress=None) -> Any:
        """What the pass decides for `module` (no module is built). `progress`, when given, may be called with
        a line now and then (long passes)."""
        return None

    def apply(self, module: Module, target, plan) -> Module:
        raise NotImplementedError

    def run(self, module: Module, target) -> Module:
        return self.apply(module, target, self.plan(module, target))

    def __str__(self) -> str:
        options = [f"{f.name}={getattr(self, f.name)}" for f in fields(self)
                   if f.repr and getattr(self, f.name) != f.default]
        return " ".join([self.name, *options])


@dataclass(frozen=True)
class Verify(Pass):
    """The verifier as a pass (it raises on the first broken rule; the module is unchanged)."""

    name = "verify"

    def apply(self, module: Module, target, plan) -> Module:
        return verify(module)


@dataclass(frozen=True)
class DeadCodeElimination(Pass):
    """Drop ops none of whose results reach an output and that write no state (the one side effect)."""

    name = "dce"

    def apply(self, module: Module, target, plan) -> Module:
        return dead_code_elimination(module)


def dead_code_elimination(module: Module) -> Module:
    live = {v.name for _, v in module.outputs}
    kept = []
    for op in reversed(module.ops):
        if any(r.name in live for r in op.results) or OPS[op.name].in_place:
            kept.append(op)
            live.update(v.name for v in op.operands)
    return module.replace(ops=tuple(reversed(kept)))


def fresh_name(hint: str, taken: set[str], sep: str = ".") -> str:
    """`hint`, or `hint` + sep + n for the first n that is not `taken`; added to `taken` (a rewrite's new
    values get names no value of the module has)."""
    name, n = hint, 1
    while name in taken:
        name, n = f"{hint}{sep}{n}", n + 1
    taken.add(name)
    return name


def cut_constant(t: Tensor, rows: range | None = None, columns: range | None = None) -> Tensor:
    """Rows (of a 2-D weight) or columns (the last axis) of a constant, read from it when its data is (lazily:
    a model compiled from shapes is never read)."""
    index = (slice(rows.start, rows.stop),) if rows is not None else (Ellipsis, slice(columns.start, columns.stop))
    shape = (len(rows),) + t.type.shape[1:] if rows is not None else t.type.shape[:-1] + (len(columns),)
    where = f"[{rows.start}:{rows.stop},:]" if rows is not None else f"[...,{columns.start}:{columns.stop}]"
    loader = (lambda: np.ascontiguousarray(t.array[index])) if t.has_data else None
    return Tensor(t.type.with_shape(shape), t.key + where, loader)


def add_up(partials: list[Value], result: Value, fresh: Callable[[str], str], chips: int, node: int = 0,
           groups: list[int] | None = None) -> list[Op]:
    """The ops adding `partials` (partial k carrying `group = k`, so on chip k mod `chips` of its stage; or
    `groups[k]`, ascending) into `result`: first those on one chip, there (the sum carrying that chip's group),
    then the chips' sums one after another where `result` is placed: one transfer from each chip. `node`: when
    the chips reach past the stage's first node of that many chips, each node's chips are first summed on the
    first of them, so that one transfer a node crosses the global links, not one a chip."""
    groups = groups or list(range(min(chips, len(partials))))
    ops, per_chip = [], []  # (group, the chip's sum)
    for c, group in enumerate(groups):
        total = partials[c]
        for k in range(c + chips, len(partials), chips):
            out = Value(fresh(f"{result.name}.chip{group}"), result.type)
            ops.append(Op("graph.add", (total, partials[k]), (out,), AttrDict({"group": group})))
            total = out
        per_chip.append((group, total))
    if node and per_chip[-1][0] >= node:
        per_node = []
        for _, chips_of_node in itertools.groupby(per_chip, key=lambda gv: gv[0] // node):
            (group, total), *more = chips_of_node
            for _, part in more:
                out = Value(fresh(f"{result.name}.node{group // node}"), result.type)
                ops.append(Op("graph.add", (total, part), (out,), AttrDict({"group": group})))
                total = out
            per_node.append((group, total))
        per_chip = per_node
    if len(per_chip) == 1:  # (the chips all in one node past the first: its sum is the result, on its first chip)
        last = ops[-1]
        assert last.result is per_chip[0][1], "add_up: one partial needs no sum"
        return [*ops[:-1], Op(last.name, last.operands, (result,), last.attrs)]
    total = per_chip[0][1]
    for k, (_, part) in enumerate(per_chip[1:], 1):
        out = result if k == len(per_chip) - 1 else Value(fresh(f"{result.name}.sum{k}"), result.type)
        ops.append(Op("graph.add", (total, part), (out,)))
        total = out
    return ops


__all__ = ["DeadCodeElimination", "Pass", "Verify", "add_up", "cut_constant", "dead_code_elimination",
           "fresh_name"]
