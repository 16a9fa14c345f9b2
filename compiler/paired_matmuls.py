"""Paired matmuls: a matmul split by columns and the matmul that reads it split by rows, one branch per chip.

At a layout, each matmul with a constant weight is split over its stage's chips on its own: its activation
goes out and its parts come back to meet on one chip (docs/partition.md, "Layouts"). An MLP does that twice,
and between the two the parts meet only to be cut again. Megatron-LM's pairing removes the meeting: the first
matmul is split by its weight's columns, what runs on its result column by column runs on each chip's
columns, and the second matmul is split by its weight's rows, the same ones, so that chip g needs nothing but
its own columns; the partial sums come back and are added once. This pass (run at layouts of several chips
a stage, after the heads are split and before fusion and precision) rewrites each such region into `parts`
branches:

    H = f(X @ W1, X @ W1', ...)   (f: elementwise ops, the constants they read of width N)
    Y = H @ W2                    (W1 [K, N], W2 [N, M] constants)

becomes, for each part g with columns C_g (whole vector tiles of N, as even as they come; the chips holding
attention's head groups, which run before, the fewest: _share),

    H_g = f(X @ W1[:, C_g], ...);  Y_g = H_g @ W2[C_g, :]      (ops of branch g carry `group = g`)
    Y   = Y_0 + Y_1 + ...

A region qualifies when everything reading its values is in it (or is the second matmul) and its every value
has N columns; the first matmuls are those with a constant weight of N columns whose activation comes from
outside. The partition puts branch g on chip g of the stage (an expert's MLP: on its share of the stage,
compiler/experts.py). The numbers are those of the model up to the
order of the sum (and, at int8, each branch quantizes its own columns of H: a scale per row and part).
"""

from __future__ import annotations

from ..ir import Module, Op, Value
from ..ir.attributes import AttrDict
from ..ir.core import Block
from ..ir.graph_ops import ELEMENTWISE
from ..ir.verifier import verify

from .passes import add_up, cut_constant, dead_code_elimination, fresh_name


def pair_matmuls(module: Module, parts: int, lanes: int, node: int = 0, spans: dict[str, range] | None = None
                 ) -> Module:
    """`module` with each column-then-row region (module docstring) in up to `parts` branches of whole
    `lanes`-wide column tiles (their sums added node by node first when the branches' chips span nodes of
    `node`: passes.add_up); itself when it has none. `spans`: of a region whose second matmul's result is
    named there, the groups (chips of the stage) its branches take, instead of 0 .. parts - 1 (an expert's
    MLP its share of the stage: compiler/experts.py)."""
    if parts < 2:
        return module
    regions = _regions(module, parts, lanes, spans or {})
    if not regions:
        return module
    taken = {r.name for op in module.ops for r in op.results} | {v.name for v in module.inputs}
    constants = {op.result.name: op.attrs["value"] for op in module.ops if op.name == "graph.constant"}
    member = {id(op): region for region in regions for op in region.ops}
    exits = {id(region.exit): region for region in regions}
    ops: list[Op] = []
    for op in module.ops:
        if id(op) in member:
            continue  # (emitted with its region's exit, in program order)
        region = exits.get(id(op))
        if region is None:
            ops.append(op)
            continue
        partial = []
        for g, cols in enumerate(region.columns):
            renamed: dict[str, Value] = {}

            def cut(v: Value, rows: bool = False) -> Value:
                """v as branch g reads it: its own version, or a constant's columns (rows) C_g."""
                if v.name in renamed:
                    return renamed[v.name]
                t = constants.get(v.name)
                if t is None or not (rows or (v.type.rank >= 1 and v.type.shape[-1] == region.width)):
                    return v  # from outside, broadcast over the columns: read whole
                part = cut_constant(t, rows=cols) if rows else cut_constant(t, columns=cols)
                renamed[v.name] = Value(fresh_name(f"{v.name}.part{g}", taken), part.type)
                ops.append(Op("graph.constant", (), (renamed[v.name],), AttrDict({"value": part})))
                return renamed[v.name]

            for r_op in region.ops:
                operands = tuple(cut(v) for v in r_op.operands)
                results = tuple(Value(fresh_name(f"{r.name}.part{g}", taken),
                                      r.type.with_shape(r.type.shape[:-1] + (len(cols),))) for r in r_op.results)
                ops.append(Op(r_op.name, operands, results, AttrDict({**r_op.attrs, "group": region.groups[g]})))
                renamed.update({old.name: new for old, new in zip(r_op.results, results)})
            y = op.result if len(region.columns) == 1 else Value(fresh_name(f"{op.result.name}.part{g}", taken),
                                                                  op.result.type)
            ops.append(Op(op.name, (renamed[op.operands[0].name], cut(op.operands[1], rows=True)), (y,),
                          AttrDict({**op.attrs, "group": region.groups[g]})))
            partial.append(y)
        if len(partial) > 1:
            ops.extend(add_up(partial, op.result, lambda hint: fresh_name(hint, taken), len(partial), node,
                              region.groups))
    # (the whole weights, now read by nobody, go)
    return verify(dead_code_elimination(Module(module.name, Block(module.inputs, tuple(ops), module.outputs),
                                               module.attrs)))


class _Region:
    """A column-then-row region: its ops in program order (the first matmuls among them), the second matmul
    (`exit`), the width N, and each branch's columns and group (ascending)."""

    def __init__(self, ops: list[Op], exit_op: Op, width: int, columns: list[range], groups: list[int]):
        self.ops, self.exit, self.width, self.columns, self.groups = ops, exit_op, width, columns, groups


def _regions(module: Module, parts: int, lanes: int, spans: dict[str, range]) -> list[_Region]:
    """The column-then-row regions of `module` (module docstring), each split into up to `parts` branches (or
    as many as its span has groups), the chips holding head groups taking the fewest tiles (_share)."""
    producer = {r.name: op for op in module.ops for r in op.results}
    readers: dict[str, list[Op]] = {}
    for op in module.ops:
        for v in op.operands:
            readers.setdefault(v.name, []).append(op)
    outputs = {v.name for _, v in module.outputs}
    constant = {op.result.name for op in module.ops if op.name == "graph.constant"}

    def weight(op: Op) -> tuple[int, int] | None:
        """(K, N) of a matmul by a 2-D constant weight, else None."""
        if op.name != "graph.matmul" or op.operands[1].name not in constant or op.operands[1].type.rank != 2 \
                or op.operands[0].type.rank < 1:
            return None
        return op.operands[1].type.shape

    index = {id(op): i for i, op in enumerate(module.ops)}
    found, used = [], set()
    busy: set[int] = set()  # the chips (groups mod parts) of the head groups' matmuls since the last region
    for exit_op in module.ops:
        if exit_op.name == "graph.matmul" and "group" in exit_op.attrs:
            busy.add(exit_op.attrs["group"] % parts)
        shape = weight(exit_op)
        if shape is None or id(exit_op) in used or "group" in exit_op.attrs:
            continue
        width = shape[0]
        tiles = -(-width // lanes)
        if tiles < 2 and exit_op.result.name not in spans:
            continue
        region, seen, stack, ok = [], set(), [exit_op.operands[0].name], True
        while stack and ok:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            op = producer.get(name)
            if op is None or id(op) in used or "group" in op.attrs or len(op.results) != 1 \
                    or op.result.type.rank < 1 or op.result.type.shape[-1] != width or name in outputs:
                ok = False
                break
            region.append(op)
            if weight(op) is not None:  # a first matmul: its activation comes from outside
                if op.operands[0].name in seen:
                    ok = False
                continue
            if op.name not in ELEMENTWISE:
                ok = False
                break
            for v in op.operands:
                if v.name in constant:
                    t = v.type.shape
                    if t and t[-1] not in (1, width):
                        ok = False
                elif v.type.rank >= 1 and v.type.shape[-1] == width:
                    stack.append(v.name)  # (must be made in the region)
                elif v.type.rank >= 1 and v.type.shape[-1] != 1:
                    ok = False
        if not ok or not any(weight(op) is not None for op in region):
            continue
        region_ids = {id(op) for op in region}
        # every reader of a region value is in the region or is the exit
        if any(r is not exit_op and id(r) not in region_ids for op in region for r in readers[op.result.name]):
            continue
        groups, sizes = _share(tiles, spans.get(exit_op.result.name, range(parts)), busy)
        starts = [sum(sizes[:k]) for k in range(len(sizes))]
        columns = [range(min(width, s * lanes), min(width, (s + n) * lanes)) for s, n in zip(starts, sizes)]
        found.append(_Region(sorted(region, key=lambda op: index[id(op)]), exit_op, width, columns, groups))
        used |= region_ids | {id(exit_op)}
        busy = set()
    return found


def _share(tiles: int, span: range, busy: set[int]) -> tuple[list[int], list[int]]:
    """(the groups, ascending, and each one's count of column tiles) of a region of `tiles` tiles over the
    groups of `span`: no chip more than the even split's most, and the chips `busy` with attention's head
    groups (which run before the MLP, one after the other) the fewest, so that their SRAM holds more
    layers' attention: at a stage wider than the model has KV heads, none."""
    count = min(len(span), tiles)
    if not busy & set(span):  # as even as they come
        return list(span[:count]), [(g + 1) * tiles // count - g * tiles // count for g in range(count)]
    most = -(-tiles // len(span))
    free = [g for g in span if g not in busy]
    taken = [g for g in span if g in busy]
    on_free = min(tiles, most * len(free))
    sizes = {g: (k + 1) * on_free // len(free) - k * on_free // len(free) for k, g in enumerate(free)} if free else {}
    rest = tiles - on_free
    sizes.update({g: (k + 1) * rest // len(taken) - k * rest // len(taken) for k, g in enumerate(taken)})
    groups = [g for g in span if sizes[g]]
    return groups, [sizes[g] for g in groups]


__all__ = ["pair_matmuls"]
