"""A module rewritten op for op: the same ops (known by their results), in any
order, some attributes changed. Allocation writes each op's `out`, scheduling its
`cycle`, `unit` and `streams` and orders the ops by cycle, the .lpu's image gives a
constant its `sha256`. What was derived of the module before holds for the
rewritten one but for the attributes changed: the verifier checks only those
(ir.verifier); the schedule facts, which read none of them, are renumbered
(ir.schedule_facts).
"""

from __future__ import annotations

from collections.abc import Collection

from .core import Module, Op


def rewritten_from(before: Module, after: Module, changing: Collection[str]) -> list[int] | None:
    """For each op of `after`, the index in `before` of the op it rewrites, when `after` has the ops of
    `before` (the same op names, operands and results, and inputs), in any order, with attributes changed,
    added or dropped only among `changing`; else None."""
    old_ops = before.ops
    if len(old_ops) != len(after.ops) or after.inputs != before.inputs:
        return None
    at = {op.results[0].name: i for i, op in enumerate(old_ops) if op.results}
    order = []
    for op in after.ops:
        i = at.get(op.results[0].name, -1) if op.results else -1
        if i < 0:
            return None
        old = old_ops[i]
        if old is not op and (old.name != op.name or old.operands != op.operands or old.results != op.results
                              or (old.attrs is not op.attrs and not _same_but(old, op, changing))):
            return None
        order.append(i)
    return order


def _same_but(old: Op, new: Op, changing: Collection[str]) -> bool:
    """`old` and `new` have the same attributes, values and all (a rewrite carries them over: an equal value
    that is another object counts as changed), but for those named in `changing`."""
    kept = [k for k in old.attrs if k not in changing]
    return kept == [k for k in new.attrs if k not in changing] and all(new.attrs[k] is old.attrs[k] for k in kept)
