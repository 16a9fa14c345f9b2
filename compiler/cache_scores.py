"""Attention scores over a resident key cache without waiting for the step's key.

A decode step scores its query against every key of the cache: `Q @ transpose(K)`, K the cache after the
step's key is written into it. Transposing K is the step's largest SXM work (Llama-2-7B at context 2048:
16 MiB a layer), and written that way it cannot start before the step's key has been computed, rotated and
written: it sits on the critical path. Yet all of K but one row is the cache as it was. This pass rewrites

    K' = state_write(K, k, p);  S = Q @ transpose(K')             (k: one row, at position p)
into
    S_old = Q @ transpose(K)                      (the cache as it was: ready at the step's start)
    s_new = reduce_sum(Q * k, last axis)          (the new key's scores, on the VXM)
    S     = where(arange(slots) == p, s_new, S_old)

so that the transpose and most of the scoring overlap the step's first matmuls. The numbers are the same but
for the new key's scores, summed on the VXM rather than the MXM. The transpose is placed before the write in
program order: it reads the cache before the write lands (the scheduler orders the two:
`compiler.schedule_list.analyze`; the interpreter checks it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..ir import Module, Op, Value
from ..ir.attributes import AttrDict, Tensor
from ..ir.core import Block
from ..ir.types import DType, TensorType
from ..ir.verifier import verify

from .passes import Pass, dead_code_elimination, fresh_name


@dataclass(frozen=True)
class ScoreCacheBeforeWrite(Pass):
    """score_cache_before_write as a pass."""

    name = "cache-scores"

    def apply(self, module: Module, target, plan) -> Module:
        return score_cache_before_write(module)


def score_cache_before_write(module: Module) -> Module:
    """`module` with each decode step's scores over a resident key cache rewritten (module docstring); itself
    when it has none."""
    producer = {r.name: op for op in module.ops for r in op.results}
    readers: dict[str, int] = {}
    for op in module.ops:
        for v in op.operands:
            readers[v.name] = readers.get(v.name, 0) + 1
    found = {}  # id(scores matmul) -> its _Keys
    for op in module.ops:
        keys = _keys(op, producer, readers)
        if keys is not None:
            found[id(op)] = keys
    if not found:
        return module
    taken = {r.name for op in module.ops for r in op.results} | {v.name for v in module.inputs}
    writes = {id(keys.write): keys for keys in found.values()}
    chained = {id(c) for keys in found.values() for c in keys.chain}
    old_keys: dict[int, Value] = {}  # id(state write) -> the cache as it was, as the scores read it
    ops: list[Op] = []
    for op in module.ops:
        if id(op) in chained:
            continue
        if id(op) in writes:  # the cache as it was, through the keys' chain, before its write
            keys = writes[id(op)]
            old_keys[id(op)] = _through(keys.chain, op.operands[0], keys.old_shapes, "before_write", ops, taken,
                                        producer)
            ops.append(op)
            continue
        if id(op) not in found:
            ops.append(op)
            continue
        keys = found[id(op)]
        q, (key, position), y = op.operands[0], keys.write.operands[1:], op.result
        fresh = lambda hint: fresh_name(f"{y.name}.{hint}", taken)  # noqa: E731
        old = Value(fresh("cache"), y.type)
        ops.append(Op("graph.matmul", (q, old_keys[id(keys.write)]), (old,), op.attrs))
        # the new key as a row [..., 1, D] of the chain's batch axes: through the chain ([..., D, 1]) and back,
        # or (when the chain only moves its elements as a reshape would, and scales by scalars) reshaped
        final = keys.new_shapes[-1]
        row_type = key.type.with_shape(final[:-2] + (1, final[-2]))
        if keys.reshapes:  # (the scalar links as they come, on the row as it is)
            scalars = tuple(link for link in keys.chain if link.name not in ("graph.reshape", "graph.transpose"))
            row = _through(scalars, key, (key.type.shape,) * len(scalars), "new", ops, taken, producer)
        else:
            row = _through(keys.chain, key, keys.new_shapes, "new", ops, taken, producer)
        if row.type.shape != row_type.shape:
            reshaped = Value(fresh("new_key"), row.type.with_shape(row_type.shape))
            ops.append(Op("graph.reshape", (row,), (reshaped,), AttrDict({"shape": row_type.shape})))
            row = reshaped
        products = Value(fresh("new_products"), TensorType(_broadcast(q.type.shape, row.type.shape), y.type.dtype))
        ops.append(Op("graph.mul", (q, row), (products,)))
        new = Value(fresh("new"), y.type.with_shape(y.type.shape[:-1] + (1,)))
        ops.append(Op("graph.reduce_sum", (products,), (new,), AttrDict({"axes": (-1,), "keepdims": True})))
        slots = y.type.shape[-1]
        where = Value(fresh("slots"), TensorType((slots,), position.type.dtype))
        ops.append(Op("graph.constant", (), (where,), AttrDict(
            {"value": Tensor.from_array(np.arange(slots, dtype=position.type.dtype.numpy))})))
        at = Value(fresh("position"), position.type.with_shape((1,) * y.type.rank))
        ops.append(Op("graph.reshape", (position,), (at,), AttrDict({"shape": at.type.shape})))
        hit = Value(fresh("is_new"), TensorType((1,) * (y.type.rank - 1) + (slots,), DType.bool))
        ops.append(Op("graph.equal", (where, at), (hit,)))
        ops.append(Op("graph.where", (hit, new, old), (y,)))
    # (the chain from the cache as written, read by nobody now, goes)
    return verify(dead_code_elimination(Module(module.name, Block(module.inputs, tuple(ops), module.outputs),
                                               module.attrs)))


@dataclass(frozen=True)
class _Keys:
    """What a matmul's keys are: a state write's result through a chain of reshapes, transposes and
    elementwise ops by constants broadcast along the slots (e.g. a scale); the shapes each link of the chain
    gives the cache as it was (`old_shapes`) and the one new row (`new_shapes`: the slots axis 1)."""

    write: Op
    chain: tuple[Op, ...]
    old_shapes: tuple[tuple[int, ...], ...]
    new_shapes: tuple[tuple[int, ...], ...]
    reshapes: bool  # its layout links move the new row's elements as a reshape would, its others are by scalars


def _through(chain: tuple[Op, ...], x: Value, shapes, hint: str, ops: list[Op], taken: set[str], producer) -> Value:
    """`x` through the links of `chain`, their results of `shapes`: the new ops appended to `ops` (the
    constants a link reads emitted again first, so that the chain can stand anywhere)."""
    for link, shape in zip(chain, shapes):
        operands = []
        for v in link.operands:
            if v.name in producer and producer[v.name].name == "graph.constant":
                c = Value(fresh_name(f"{v.name}.{hint}", taken), v.type)
                ops.append(Op("graph.constant", (), (c,), producer[v.name].attrs))
                operands.append(c)
            else:
                operands.append(x)
        out = Value(fresh_name(f"{link.result.name}.{hint}", taken), link.result.type.with_shape(shape))
        attrs = {**link.attrs, "shape": shape} if link.name == "graph.reshape" else link.attrs
        ops.append(Op(link.name, tuple(operands), (out,), AttrDict(attrs)))
        x = out
    return x


def _keys(op: Op, producer: dict[str, Op], readers: dict[str, int]) -> _Keys | None:
    """The keys of `op` when it is Q @ K^T, K^T a decode step's key cache (one new row, at one position)
    through a chain (_Keys) whose slots axis ends last, each link read by the next alone; else None."""
    if op.name != "graph.matmul" or op.operands[1].name not in producer:
        return None
    chain, v = [], op.operands[1]
    while True:
        link = producer.get(v.name)
        if link is None or readers[v.name] != 1:
            return None
        if link.name == "graph.state_write":
            break
        inner = [u for u in link.operands if not (u.name in producer and producer[u.name].name == "graph.constant")]
        if len(inner) != 1 or len(link.results) != 1 or link.name not in _LINKS:
            return None
        chain.append((link, inner[0]))
        v = inner[0]
    write, chain = link, chain[::-1]
    state, key, position = write.operands
    if key.type.shape[-2] != 1 or position.type.numel != 1:
        return None
    axis, old, new = state.type.rank - 2, [], []
    shape_new = key.type.shape
    for link, x in chain:
        axis = _slots_axis(link, x, axis, state.type.shape[-2])
        if axis is None:
            return None
        out = link.result.type.shape
        old.append(out)
        shape_new = out[:axis] + (1,) + out[axis + 1:]
        new.append(shape_new)
    if not chain or axis != op.operands[1].type.rank - 1:
        return None
    q = op.operands[0].type
    try:
        _broadcast(q.shape, shape_new[:-2] + (1, shape_new[-2]))
    except ValueError:
        return None
    links = tuple(link for link, _ in chain)
    return _Keys(write, links, tuple(old), tuple(new), _moves_as_reshape(links, key.type.shape, new, producer))


def _moves_as_reshape(links, shape: tuple[int, ...], shapes, producer) -> bool:
    """Whether the layout links (the new row's `shapes` after each) leave its elements in row-major order (its
    slots axis is 1: a transpose may only move that), and every other link reads only scalar constants."""
    order = np.arange(math.prod(shape)).reshape(shape)
    for link, out in zip(links, shapes):
        if link.name == "graph.transpose":
            order = order.transpose(link.attrs["perm"])
        elif link.name == "graph.reshape":
            order = order.reshape(out)
        elif any(producer.get(v.name) is not None and producer[v.name].name == "graph.constant"
                 and v.type.numel != 1 for v in link.operands):
            return False
    return bool((order.reshape(-1) == np.arange(order.size)).all())


_LINKS = {"graph.reshape", "graph.transpose", "graph.mul", "graph.div", "graph.cast"}


def _slots_axis(link: Op, x: Value, axis: int, slots: int) -> int | None:
    """Where the slots axis (`axis` of the link's operand `x`, `slots` long) is in the link's result; None when
    the link mixes it with other axes (or a constant it reads varies along it)."""
    if link.name == "graph.transpose":
        return list(link.attrs["perm"]).index(axis)
    if link.name == "graph.reshape":
        before, out = math.prod(x.type.shape[:axis]), link.result.type.shape
        for b, d in enumerate(out):
            if math.prod(out[:b]) == before and d == slots:
                return b
        return None
    # elementwise: every other operand a constant of size 1 along the slots axis (as the result aligns it)
    rank = link.result.type.rank
    for v in link.operands:
        a = axis - (rank - v.type.rank)
        if v is not x and a >= 0 and v.type.shape[a] != 1:
            return None
    return axis if x.type.rank == rank else None


def _broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(np.broadcast_shapes(a, b))


__all__ = ["ScoreCacheBeforeWrite", "score_cache_before_write"]
