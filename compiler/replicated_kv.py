"""KV heads copied so that a layout's stage has a head group per chip.

Attention is split by KV heads (compiler/split_heads.py): a head group's chip computes its q, k and v, holds its
part of the cache and computes its rows of the output projection. A model with fewer KV heads than its stage
has chips (Llama-2-70B: 8 KV heads, 64 query heads) leaves the other chips idle while attention runs, one
layer after another at batch 1: at `tp=32` eight chips each install 1,280 columns of q, k and v and 1,024 rows
of the output projection (about 17k cycles a layer) while 24 chips wait.

The query heads sharing a KV head need not run on one chip. Kept `s` times, each KV head serves `r / s` of its
`r` query heads per copy: the cache grows to `kv * s` heads, each copy written with the same new row, and the
model's repeat of its KV heads (`repeat_kv`: reshape, expand r times, reshape) repeats `r / s` times instead.
The copies are identical, so every score and output is the number the model computes; the cache takes `s`
times the SRAM, spread over `s` times the chips. Each copy's chip computes its own k and v (their columns of
the weights: one more tile column, not a transfer of about 2k cycles a way), its `r / s` query heads and
their rows of the output projection.

`s`: the largest divisor of `r` with `kv * s` heads no more than the stage's chips, which split_heads then cuts
a head a chip. A state is copied only
when the step reads it through such repeats alone (what grouped_heads.GroupHeads then groups); anything else
keeps one copy.
"""

from __future__ import annotations

from ..ir import Module, Op, Value
from ..ir.attributes import AttrDict
from ..ir.core import Block
from ..ir.registry import OPS
from ..ir.verifier import verify

from .grouped_heads import repeat_factor
from .passes import dead_code_elimination, fresh_name
from .split_heads import heads_axis


def copies(kv_heads: int, repeat: int, chips: int, most: int | None = None) -> int:
    """How many copies of each of `kv_heads` KV heads, each serving `repeat` query heads, a stage of `chips`
    chips runs: the largest divisor s of `repeat` with kv_heads * s <= chips (split_heads then cuts a head, a
    copy, a chip), and no more than `most` when given (a layout's `kv`)."""
    return max(s for s in range(1, repeat + 1) if repeat % s == 0 and (s == 1 or kv_heads * s <= chips)
               and (most is None or s <= most))


def planned_copies(module: Module, chips: int, most: int | None = None) -> int:
    """The most copies replicate_kv(module, chips, most) keeps of a KV head (1: none)."""
    return max((plan[1] for plan in _plans(module, chips, most).values()), default=1)


def replicate_kv(module: Module, chips: int, most: int | None = None) -> Module:
    """`module` with each KV cache kept in copies for a stage of `chips` chips, at most `most` of a head when
    given (module docstring); itself when no cache is read only through a repeat of its heads, or none needs
    copies."""
    plans = _plans(module, chips, most)
    if not plans:
        return module
    taken = {r.name for op in module.ops for r in op.results} | {v.name for v in module.inputs}
    renamed: dict[str, Value] = {}  # old value name -> the copied value, under the same name
    replaced: dict[int, list[Op]] = {}  # op id -> its rewrite (the state's write; each repeat's first two ops)
    ops: list[Op] = []
    for op in module.ops:
        plan = plans.get(id(op))
        if plan is not None:
            axis, s, write, repeats = plan
            state = _widened(op.result, axis, s)
            renamed[op.result.name] = state
            ops.append(Op(op.name, (), (state,), AttrDict({**op.attrs, "shape": state.type.shape})))
            new = write.operands[1]
            heads = [Value(fresh_name(f"{new.name}.head{h}", taken), _narrowed(new.type, axis))
                     for h in range(new.type.shape[axis])]
            copied = Value(fresh_name(f"{new.name}.copies", taken), _widened(new, axis, s).type)
            written = _widened(write.result, axis, s)
            renamed[write.result.name] = written
            replaced[id(write)] = [
                *(Op("graph.slice", (new,), (head,), AttrDict(
                    {"starts": (h,), "ends": (h + 1,), "axes": (axis,), "steps": (1,)})) for h, head in enumerate(heads)),
                # each head s times in a row: copy h*s + j of the cache is head h
                Op("graph.concat", tuple(head for head in heads for _ in range(s)), (copied,), AttrDict({"axis": axis})),
                Op(write.name, (state, copied, *write.operands[2:]), (written,), write.attrs)]
            for unsqueeze, expand in repeats:
                ones = _widened(unsqueeze.result, axis, s)
                wide = expand.result.type.shape
                fewer = wide[:axis] + (wide[axis] * s, wide[axis + 1] // s) + wide[axis + 2:]
                wider = Value(expand.result.name, expand.result.type.with_shape(fewer))
                # (a copy per query head: no repeat left, the copies read as the model's heads)
                renamed[unsqueeze.result.name], renamed[expand.result.name] = ones, wider if fewer[axis + 1] > 1 else ones
                replaced[id(unsqueeze)] = [Op(unsqueeze.name, (written,), (ones,),
                                              AttrDict({**unsqueeze.attrs, "shape": ones.type.shape}))]
                replaced[id(expand)] = [Op(expand.name, (ones,), (wider,), AttrDict({**expand.attrs, "shape": fewer}))
                                        ] if fewer[axis + 1] > 1 else []
            continue
        if id(op) in replaced:
            ops.extend(replaced[id(op)])
            continue
        operands = tuple(renamed.get(v.name, v) for v in op.operands)
        ops.append(op if operands == op.operands else Op(op.name, operands, op.results, op.attrs))
    return verify(dead_code_elimination(Module(module.name, Block(module.inputs, tuple(ops), module.outputs),
                                               module.attrs)))


def _plans(module: Module, chips: int, most: int | None) -> dict:
    """state op id -> (heads axis, copies, its write, [(unsqueeze, expand)]), for each state wanting copies."""
    users: dict[str, list[Op]] = {}
    for op in module.ops:
        for v in op.operands:
            users.setdefault(v.name, []).append(op)
    plans = {}
    for op in module.ops:
        if OPS[op.name].persistent:
            plan = _plan(op, users, chips, most)
            if plan is not None:
                plans[id(op)] = plan
    return plans


def _plan(state: Op, users: dict[str, list[Op]], chips: int, most: int | None):
    """(heads axis, copies, the state's write, its repeats as (unsqueeze, expand)) when `state` is written once
    and read only through repeats of its heads by a common factor (then merged by reshapes) and wants copies;
    else None."""
    axis = heads_axis(state.result.type.shape)
    writes = users.get(state.result.name, [])
    if axis is None or len(writes) != 1 or writes[0].name != "graph.state_write" or \
            writes[0].operands[0].name != state.result.name:
        return None
    write = writes[0]
    repeats = _repeats(write.result, axis, users)
    if users.get(write.result.name) and repeats is None:
        return None
    # A prefill writes its cache without reading it (its attention reads the rows it writes): copied all the
    # same, as its decode partner reads it, by the repeat of those rows
    rows = write.operands[1]
    if repeats is None:
        repeats_of_rows = _repeats(rows, axis, {**users, rows.name: [u for u in users[rows.name] if u is not write]})
    factor = {expand.result.type.shape[axis + 1] for _, expand in repeats or repeats_of_rows or ()}
    if len(factor) != 1:
        return None
    s = copies(state.result.type.shape[axis], factor.pop(), chips, most)
    return (axis, s, write, repeats or []) if s > 1 else None


def _repeats(v: Value, axis: int, users: dict[str, list[Op]]) -> list[tuple[Op, Op]] | None:
    """[(unsqueeze, expand)] of each read of `v`, when each repeats its heads axis (a new axis of 1 after it,
    expanded) and only reshapes read the repeat; else None."""
    out = []
    for unsqueeze in users.get(v.name, []):
        expands = users.get(unsqueeze.result.name, []) if unsqueeze.name == "graph.reshape" else []
        if len(expands) != 1 or expands[0].name != "graph.expand" or repeat_factor(
                v.type.shape, unsqueeze.result.type.shape, expands[0].result.type.shape, axis) is None:
            return None
        if not all(u.name == "graph.reshape" for u in users.get(expands[0].result.name, [])):
            return None  # (only a reshape reads the same numbers from the copies, in the same order)
        out.append((unsqueeze, expands[0]))
    return out or None


def _narrowed(t, axis: int):
    return t.with_shape(t.shape[:axis] + (1,) + t.shape[axis + 1:])


def _widened(v: Value, axis: int, s: int) -> Value:
    """`v` under its own name with its heads axis `s` times as wide."""
    shape = v.type.shape
    return Value(v.name, v.type.with_shape(shape[:axis] + (shape[axis] * s,) + shape[axis + 1:]))


__all__ = ["copies", "planned_copies", "replicate_kv"]
