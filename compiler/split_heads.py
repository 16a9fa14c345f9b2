"""Attention split by heads: each resident cache cut into head groups, and the attention over it with it.

A decode step's attention reads its whole cache every step. On one chip, that is the step's largest cost:
Llama-2-7B's layer at context 2048 reads 2 x 16 MiB of cache through the MXM and transposes the keys, several
times what its 8-way split weights cost (docs/partition.md, "Layouts"). A layout's stage has T chips; this
pass (run for `--layout tp=T,...`, T > 1) cuts each cache of H heads into G groups (G = H, a head a chip, when
H <= T; else the largest common divisor of H and the groups asked for, T times the SXM units) and rewrites
what computes on it group by group, so that the partition can put group g on chip g mod T of the stage (the
ops carry `group = g`):

- Each `graph.state` with a heads axis (the first axis wider than one before its rows) becomes G states of
  H/G heads, named `NAME.heads<first>-<last>`.
- An op reading such a group value becomes G ops when its rule maps the heads axis through (elementwise ops
  with broadcasting, transpose, a reshape keeping heads a leading factor, softmax and reductions along other
  axes, slices and concats along other axes, matmul over batch axes, state writes); an operand from outside
  that broadcasts over the heads axis enters as it is, one that spans it as its group's part: made by its
  producer's work on that part alone where the work can be cut so (`_pulled`: back through elementwise ops,
  transposes, reshapes, slices, splits, concats and reductions to a matmul by a constant's columns, so that
  each group computes its own q, k and v), else a `graph.slice` of the whole.
- A matmul contracting the groups joined along its last axis by a 2-D constant (the output projection) becomes
  one matmul per group by the constant's rows for that group's columns (Megatron-LM's row split: a group's
  heads never leave its chip), the partial products added up on each chip, then over the chips
  (`passes.add_up`: `chips` is the stage's, group g running on chip g mod chips).
- Anything else reads the groups joined back by one `graph.concat`, made once per value.

The result computes the same numbers (each head's attention is its own), checked against onnxruntime and
Hugging Face's greedy tokens (tests/test_layouts.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..ir import Module, Op, Value
from ..ir.attributes import AttrDict, Tensor
from ..ir.core import Block
from ..ir.graph_ops import ELEMENTWISE, REDUCTIONS
from ..ir.registry import OPS
from ..ir.target import Target
from ..ir.topology import spanned_nodes
from ..ir.verifier import verify

from .passes import Pass, add_up, cut_constant, dead_code_elimination, fresh_name

REDUCING = {f"graph.{n}" for n in REDUCTIONS}


@dataclass(frozen=True)
class SplitHeads(Pass):
    """split_heads as a pass: `groups` head groups per cache (a layout's chips per stage)."""

    name = "split-heads"
    groups: int = 1
    chips: int = 1

    def plan(self, module: Module, target: Target, progress=None) -> Module:
        return split_heads(module, self.groups, self.chips, spanned_nodes(target.machine, self.chips))

    def apply(self, module: Module, target: Target, plan: Module) -> Module:
        return plan


def heads_axis(shape: tuple[int, ...]) -> int | None:
    """A cache's heads axis: the first axis wider than one before its rows (second to last); None: none."""
    return next((a for a, d in enumerate(shape[:-2]) if d > 1), None)


@dataclass(frozen=True)
class _Grouped:
    axis: int                 # the heads axis of the value
    parts: tuple[Value, ...]  # the value of each group, in order


def split_heads(module: Module, groups: int, chips: int = 1, node: int = 0) -> Module:
    """`module` with each cache cut into head groups (module docstring), group g to run on chip g mod `chips`
    (their sums added node by node first when the chips span nodes of `node`: passes.add_up); itself when
    there is nothing to cut."""
    if groups < 2 or not any(OPS[op.name].persistent for op in module.ops):
        return module
    taken = {r.name for op in module.ops for r in op.results} | {v.name for v in module.inputs}
    constants = {op.result.name: op.attrs["value"] for op in module.ops if op.name == "graph.constant"}
    producer = {r.name: op for op in module.ops for r in op.results}
    grouped: dict[str, _Grouped] = {}
    sliced: dict[tuple[str, int, int, int], Value] = {}  # (value, axis, first, end) -> that part of it
    joined: dict[str, Value] = {}                       # grouped value -> the groups concatenated
    ops: list[Op] = []

    def fresh(hint: str) -> str:
        return fresh_name(hint, taken)

    def join(v: Value) -> Value:
        if v.name not in joined:
            g = grouped[v.name]
            out = Value(fresh(f"{v.name}.joined"), v.type)
            ops.append(Op("graph.concat", g.parts, (out,), AttrDict({"axis": g.axis})))
            joined[v.name] = out
        return joined[v.name]

    def part(v: Value, axis: int, n: int, k: int) -> Value:
        size = v.type.shape[axis] // n
        return span(v, axis, range(k * size, (k + 1) * size), k)

    def span(v: Value, axis: int, rows: range, k: int) -> Value:
        """`v`'s `rows` along `axis`, made by group k: its producer's work on them alone when that can be cut so
        (_pulled: back to a matmul's columns, whose chip then computes only what its group reads), else a slice."""
        key = (v.name, axis, rows.start, rows.stop, k)  # (k: copies of a KV head each compute their own)
        if key in sliced:
            return sliced[key]
        if v.name in grouped:  # a group's value already: its part, or the groups joined and cut
            g = grouped[v.name]
            size = v.type.shape[axis] // len(g.parts)
            if g.axis == axis and rows.start % size == 0 and len(rows) == size:
                return g.parts[rows.start // size]
            v = join(v)
        made = producer.get(v.name)
        inside = _inside(made, v, axis, rows)
        if inside is not None:  # the rows of one part of a split or a concat along the axis: that part's
            sliced[key] = span(*inside, k)
        else:
            hint = f"{v.name}.heads{rows.start}-{rows.stop - 1}"
            cut_type = v.type.with_shape(v.type.shape[:axis] + (len(rows),) + v.type.shape[axis + 1:])
            pulled = _pulled(made, v, axis, rows, constants)
            if pulled is None:
                out = Value(fresh(hint), cut_type)
                ops.append(Op("graph.slice", (v,), (out,), AttrDict(
                    {"starts": (rows.start,), "ends": (rows.stop,), "axes": (axis,), "steps": (1,), "group": k})))
            else:
                op, how, attrs = pulled
                operands = []
                for u, cut in zip(op.operands, how):
                    if cut is None:
                        operands.append(join(u) if u.name in grouped else u)
                    elif isinstance(cut, Tensor):
                        operands.append(Value(fresh(f"{u.name}.heads{rows.start}-{rows.stop - 1}"), cut.type))
                        ops.append(Op("graph.constant", (), (operands[-1],), AttrDict({"value": cut})))
                    else:
                        operands.append(span(u, cut[0], cut[1], k))
                out = Value(fresh(hint), cut_type)
                ops.append(Op(op.name, tuple(operands), (out,), AttrDict({**attrs, "group": k})))
            sliced[key] = out
        return sliced[key]

    for op in module.ops:
        if OPS[op.name].persistent:
            shape, axis = op.result.type.shape, heads_axis(op.result.type.shape)
            # a head a group when the chips have room for them all (a group a chip); else groups spread evenly
            n = (shape[axis] if shape[axis] <= chips else math.gcd(groups, shape[axis])) if axis is not None else 1
            if n < 2:
                ops.append(op)
                continue
            size, parts = shape[axis] // n, []
            for k in range(n):
                name = f"{op.attrs['name']}.heads{k * size}-{(k + 1) * size - 1}"
                t = _cut(op.result.type, axis, n)
                parts.append(Value(fresh(f"{op.result.name}.heads{k * size}-{(k + 1) * size - 1}"), t))
                attrs = {a: v for a, v in op.attrs.items() if a not in ("home", "out")}
                ops.append(Op(op.name, (), (parts[-1],), AttrDict({**attrs, "name": name, "shape": t.shape})))
            grouped[op.result.name] = _Grouped(axis, tuple(parts))
            continue
        if _contracts_groups(op, grouped, constants):
            x, w = grouped[op.operands[0].name], op.operands[1]
            size, partials = x.parts[0].type.shape[-1], []
            for k, part_x in enumerate(x.parts):
                rows = range(k * size, (k + 1) * size)
                cut = cut_constant(constants[w.name], rows=rows)
                part_w = Value(fresh(f"{w.name}.rows{rows.start}-{rows.stop - 1}"), cut.type)
                ops.append(Op("graph.constant", (), (part_w,), AttrDict({"value": cut})))
                partials.append(Value(fresh(f"{op.result.name}.group{k}"), op.result.type))
                ops.append(Op(op.name, (part_x, part_w), (partials[-1],), AttrDict({**op.attrs, "group": k})))
            ops.extend(add_up(partials, op.result, fresh, chips, node))
            continue
        mapped = _through(op, grouped)
        if mapped is None:
            operands = tuple(join(v) if v.name in grouped else v for v in op.operands)
            ops.append(op if operands == op.operands else Op(op.name, operands, op.results, op.attrs))
            continue
        axis, n, entering = mapped
        results = [[] for _ in op.results]
        for k in range(n):
            operands = []
            for v, how in zip(op.operands, entering):
                if v.name in grouped:
                    operands.append(grouped[v.name].parts[k])
                elif how is None:
                    operands.append(v)  # broadcast over the heads
                else:
                    operands.append(part(v, how, n, k))
            outs = []
            for r, out in zip(op.results, results):
                t = _cut(r.type, axis, n)
                size = r.type.shape[axis] // n
                outs.append(Value(fresh(f"{r.name}.heads{k * size}-{(k + 1) * size - 1}"), t))
                out.append(outs[-1])
            ops.append(Op(op.name, tuple(operands), tuple(outs), AttrDict({**_attrs(op, axis, n), "group": k})))
        for r, parts in zip(op.results, results):
            grouped[r.name] = _Grouped(axis, tuple(parts))
    outputs = tuple((name, join(v) if v.name in grouped else v) for name, v in module.outputs)
    # (a weight now read only by rows goes)
    return verify(dead_code_elimination(Module(module.name, Block(module.inputs, tuple(ops), outputs),
                                               module.attrs)))


def _inside(op: Op | None, v: Value, axis: int, rows: range) -> tuple[Value, int, range] | None:
    """(value, axis, rows) that `rows` of `v` along `axis` are, when `op` splits one value along that axis or
    concatenates several (each KV head's copies: compiler/replicated_kv.py) and the rows lie in one part."""
    if op is None or op.name not in ("graph.split", "graph.concat") or op.attrs["axis"] % v.type.rank != axis:
        return None
    if op.name == "graph.split":
        start = sum(op.attrs["sizes"][:[r.name for r in op.results].index(v.name)])
        return op.operands[0], axis, range(start + rows.start, start + rows.stop)
    start = 0
    for u in op.operands:
        size = u.type.shape[axis]
        if start <= rows.start and rows.stop <= start + size:
            return u, axis, range(rows.start - start, rows.stop - start)
        start += size
    return None


def _pulled(op: Op | None, v: Value, axis: int, rows: range, constants: dict):
    """How `op` (making `v`) computes just `rows` of `v` along `axis`: (op, per operand None (read whole), a
    constant's cut (Tensor) or (axis, rows) of an operand to pull in turn, the attributes), or None when it
    cannot (then the rows are sliced out of `v`). A matmul by a 2-D constant cut along its columns ends the
    pull: its group's chip multiplies by its columns of the weight alone."""
    if op is None or len(op.results) > 1:
        return None
    out, name = v.type, op.name
    if name == "graph.matmul" and axis == out.rank - 1 and op.operands[1].name in constants \
            and op.operands[1].type.rank == 2:
        return op, (None, cut_constant(constants[op.operands[1].name], columns=rows)), op.attrs
    if name in ELEMENTWISE:
        how = []
        for u in op.operands:
            a = axis - (out.rank - u.type.rank)
            if a < 0 or u.type.shape[a] == 1:
                how.append(None)
            elif u.type.shape[a] != out.shape[axis]:
                return None
            elif u.name in constants:
                how.append(cut_constant(constants[u.name], columns=rows) if a == u.type.rank - 1 else None)
                if how[-1] is None:
                    return None
            else:
                how.append((a, rows))
        return op, tuple(how), op.attrs
    x = op.operands[0].type if op.operands else None
    if name == "graph.transpose":
        return op, ((op.attrs["perm"][axis], rows),), op.attrs
    if name == "graph.slice" and len(op.operands) == 1:
        axes = [a % x.rank for a in op.attrs["axes"]]
        if axis not in axes:
            return op, ((axis, rows),), op.attrs
        i = axes.index(axis)
        start = op.attrs["starts"][i]
        if op.attrs["steps"][i] != 1 or start < 0:
            return None
        inside = range(start + rows.start, start + rows.stop)
        attrs = {**op.attrs, "starts": tuple(s if j != i else 0 for j, s in enumerate(op.attrs["starts"])),
                 "ends": tuple(e if j != i else len(rows) for j, e in enumerate(op.attrs["ends"]))}
        return op, ((axis, inside),), attrs
    if name == "graph.concat" and op.attrs["axis"] % out.rank != axis:
        return op, tuple((axis, rows) for _ in op.operands), op.attrs
    if name in REDUCING and len(op.operands) == 1 and op.attrs["keepdims"] and \
            axis not in {a % x.rank for a in op.attrs["axes"]}:
        return op, ((axis, rows),), op.attrs
    if name == "graph.reshape":
        before, inner = math.prod(out.shape[:axis]), math.prod(out.shape[axis + 1:])
        for a, d in enumerate(x.shape):
            inner_x = math.prod(x.shape[a + 1:])
            if math.prod(x.shape[:a]) == before and d > 1 and rows.start * inner % inner_x == 0 \
                    and rows.stop * inner % inner_x == 0 and d * inner_x == out.shape[axis] * inner:
                inside = range(rows.start * inner // inner_x, rows.stop * inner // inner_x)
                shape = out.shape[:axis] + (len(rows),) + out.shape[axis + 1:]
                return op, ((a, inside),), {**op.attrs, "shape": shape}
        return None
    return None


def _contracts_groups(op: Op, grouped: dict[str, _Grouped], constants: dict) -> bool:
    """`op` is a matmul of groups joined along its last axis (its contraction) by a 2-D constant."""
    if op.name != "graph.matmul" or op.operands[0].name not in grouped or op.operands[1].name not in constants:
        return False
    x, w = grouped[op.operands[0].name], op.operands[1].type
    return x.axis == op.operands[0].type.rank - 1 and w.rank == 2 and op.operands[0].type.rank >= 2


def _cut(t, axis: int, n: int):
    return t.with_shape(d // n if a == axis else d for a, d in enumerate(t.shape))


def _attrs(op: Op, axis: int, n: int) -> dict:
    """`op`'s attributes for one of `n` groups along `axis` of its result (a reshape's or expand's shape)."""
    attrs = dict(op.attrs)
    if op.name in ("graph.reshape", "graph.expand"):
        attrs["shape"] = tuple(d // n if a == axis else d for a, d in enumerate(attrs["shape"]))
    return attrs


def _through(op: Op, grouped: dict[str, _Grouped]) -> tuple[int, int, list[int | None]] | None:
    """How `op` computes group by group: (its result's heads axis, the groups, per operand the axis a
    value from outside is sliced along or None: used whole), or None when it cannot (it reads the groups
    joined)."""
    ins = [(k, grouped[v.name]) for k, v in enumerate(op.operands) if v.name in grouped]
    ns = {len(g.parts) for _, g in ins}
    if len(ns) != 1 or len(op.results) != 1:
        return None
    n, out = ns.pop(), op.result.type
    name = op.name
    if name in ELEMENTWISE or name == "graph.state_write" or name == "graph.matmul":
        # aligned from the right (numpy broadcasting; a matmul's batch axes, a state write's same-rank operands)
        axes = {g.axis + out.rank - op.operands[k].type.rank for k, g in ins}
        if len(axes) != 1:
            return None
        axis = axes.pop()
        if name == "graph.matmul" and axis >= out.rank - 2:
            return None  # the heads are a matmul's rows or columns, not a batch axis
        if name == "graph.state_write" and 0 not in dict(ins):
            return None  # writing a group into a whole cache
        return _entering(op, axis, n, out.rank)
    if name == "graph.concat" and len(ins) == len(op.operands) and len({g.axis for _, g in ins}) == 1:
        a = ins[0][1].axis
        return (a, n, [None] * len(ins)) if op.attrs["axis"] % out.rank != a else None
    if len(ins) != 1 or len(op.operands) != 1:
        return None
    a, t = ins[0][1].axis, op.operands[0].type
    if name == "graph.transpose":
        return list(op.attrs["perm"]).index(a), n, [None]
    if name == "graph.softmax" and op.attrs["axis"] % t.rank != a:
        return a, n, [None]
    if name in REDUCING and a not in {x % t.rank for x in op.attrs["axes"]}:
        if op.attrs["keepdims"]:
            return a, n, [None]
        return a - sum(1 for x in op.attrs["axes"] if x % t.rank < a), n, [None]
    if name == "graph.slice" and a not in {x % t.rank for x in op.attrs["axes"]}:
        return a, n, [None]
    if name == "graph.reshape":
        # the heads stay a leading factor: the axes before them hold as many elements before and after, and
        # the new axis there splits into n groups as the old one does
        before = math.prod(t.shape[:a])
        shape, p = out.shape, 1
        for b, d in enumerate(shape):
            if p == before and d % n == 0 and d > 1:
                return b, n, [None]
            p *= d
            if p > before:
                break
    return None


def _entering(op: Op, axis: int, n: int, rank: int) -> tuple[int, int, list[int | None]] | None:
    """(axis, n, how each operand enters) for a broadcasting op whose result's heads axis is `axis`."""
    out_heads = op.result.type.shape[axis]
    how: list[int | None] = []
    for v in op.operands:
        a = axis - (rank - v.type.rank)
        if op.name == "graph.state_write" and v is op.operands[2]:
            how.append(None)  # the position
        elif a < 0 or v.type.shape[a] == 1:
            how.append(None)
        elif v.type.shape[a] == out_heads:
            how.append(a)
        else:
            return None
    return axis, n, how


__all__ = ["SplitHeads", "heads_axis", "split_heads"]
