"""Transposes folded: the keys' per-head transpose as one transpose of the tokens.

Attention's keys come out of their projection as [batch, seq, heads * dim]. Exports split them into heads,
`reshape` to [batch, seq, heads, dim], move the heads forward, `transpose (0, 2, 1, 3)`, and transpose each
head for the scores, `transpose (0, 1, 3, 2)`: [batch, heads, dim, seq]. Lowered as written, the reshape moves
each head's dim lanes to a row of their own (a row of 64 in a 320-lane vector: five times the words), and the
last transpose moves them again. The same result is one transpose of [seq, heads * dim] to
[heads * dim, seq], whose rows split into heads for free (a reshape keeping rows and columns is a view).

`fold_transposes` rewrites, where the intermediate values have no other reader:
- a transpose of a transpose into one (the permutations composed);
- a transpose of a reshape that only splits the last axis into (A, B), where the transpose keeps A and B
  side by side and in order, into the transpose of the unsplit value followed by a reshape.

`hoist_casts` (after precision, which casts attention's operands to fp16 for the MXM) moves a cast of a
value that only moves data (a reshape or a transpose of a value read once) before the move: the move then
carries the narrower type, half the words of fp32, and the cast runs on the value as it was laid out (a
head of 64 lanes padded to a vector is five times the vectors of its rows of 768).

Only data moves, and a cast is elementwise: the numbers are the same.
"""

from __future__ import annotations

from collections import Counter

from ..ir import Module, Op, Value
from ..ir.attributes import AttrDict
from ..ir.registry import OPS

from .passes import dead_code_elimination, fresh_name


def _readers_and_names(module: Module) -> tuple[Counter, set[str]]:
    """How many times each value is read (outputs count), and the names the module's values take."""
    readers = Counter(v.name for op in module.ops for v in op.operands)
    readers.update(v.name for _, v in module.outputs)
    return readers, {v.name for op in module.ops for v in op.results} | {v.name for v in module.inputs}


def fold_transposes(module: Module) -> Module:
    """`module` with transposes folded (module docstring); itself when none folds."""
    readers, taken = _readers_and_names(module)
    producer = {r.name: op for op in module.ops for r in op.results}
    ops, changed = [], False
    for op in module.ops:
        folded = _folded(op, producer, readers, taken) if op.name == "graph.transpose" else None
        if folded is None:
            ops.append(op)
            continue
        ops += folded
        producer.update((r.name, o) for o in folded for r in o.results)
        changed = True
    return dead_code_elimination(module.replace(ops=tuple(ops))) if changed else module


MOVES = ("graph.reshape", "graph.transpose")


def hoist_casts(module: Module) -> Module:
    """`module` with each cast of a move (reshape, transpose) of a value read once done before the move,
    repeatedly (a cast after a reshape and a transpose goes before both); itself when none moves."""
    readers, taken = _readers_and_names(module)
    producer = {r.name: i for i, op in enumerate(module.ops) for r in op.results}
    ops = list(module.ops)
    changed = False
    for i, op in enumerate(module.ops):
        if op.name != "graph.cast":
            continue
        at = i  # where the cast is now
        while True:
            cast = ops[at]
            j = producer.get(cast.operands[0].name)
            move = ops[j] if j is not None else None
            if move is None or move.name not in MOVES or not _only_read_once(cast.operands[0], readers):
                break
            # the cast moves to where the move was, on the move's operand; the move takes the cast's place
            x, dtype = move.operands[0], cast.results[0].type.dtype
            early = Value(fresh_name(cast.results[0].name + ".early", taken), x.type.with_dtype(dtype))
            ops[j] = Op("graph.cast", (x,), (early,), cast.attrs)
            ops[at] = Op(move.name, (early,), cast.results, move.attrs)
            producer[early.name] = j
            readers[early.name] = 1
            at, changed = j, True
    return module.replace(ops=tuple(ops)) if changed else module


def _only_read_once(v: Value, readers: Counter) -> bool:
    return readers[v.name] == 1


def _folded(op: Op, producer, readers, taken) -> list[Op] | None:
    """The ops computing `op`'s result with its transposes folded, or None."""
    x, perm, out = op.operands[0], tuple(op.attrs["perm"]), op.results[0]
    inner = producer.get(x.name)
    ops = []
    if inner is not None and inner.name == "graph.transpose" and _only_read_once(x, readers):
        first = tuple(inner.attrs["perm"])
        x, perm = inner.operands[0], tuple(first[p] for p in perm)
        inner = producer.get(x.name)
        ops = [_transpose(x, perm, out.name, op)]
    if inner is not None and _only_read_once(x, readers) and _split_last(inner, x):
        source = inner.operands[0]
        rank = len(perm)
        at = perm.index(rank - 2)
        if at + 1 < rank and perm[at + 1] == rank - 1:  # the split axes side by side, in order
            merged = tuple(p for p in perm if p != rank - 1)  # axis rank - 2 stands for the unsplit last axis
            whole = _transpose(source, merged, fresh_name(out.name + ".unsplit", taken), op)
            shaped = Op("graph.reshape", (whole.results[0],), (out,), AttrDict({"shape": out.type.shape}))
            return [whole, shaped]
    return ops or None


def _split_last(op: Op, x: Value) -> bool:
    """`op` (making x) is a reshape splitting its operand's last axis in two and nothing else."""
    if op.name != "graph.reshape":
        return False
    (a,) = op.operands
    lead = a.type.shape[:-1]
    return x.type.rank == a.type.rank + 1 and x.type.shape[:len(lead)] == lead and a.type.numel == x.type.numel


def _transpose(x: Value, perm: tuple[int, ...], name: str, like: Op) -> Op:
    """graph.transpose of x by perm, its result named `name`, with `like`'s other attributes (its placement)."""
    attrs = AttrDict({**{k: v for k, v in like.attrs.items() if k != "perm"}, "perm": perm})
    (t,) = OPS["graph.transpose"].result_types([x.type], attrs)
    return Op("graph.transpose", (x,), (Value(name, t),), attrs)
