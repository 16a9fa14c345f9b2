"""A module rewritten op for op: the same ops (known by their results), in any
order, some attributes changed. Allocation writes each op's `out`, scheduling its
`cycle`, `unit` and `streams` and orders the ops by cycle, the .lpu's image gives a
constant its `sha256`. What was derived of the module before holds for the
rewritten one but for the attributes changed: the verifier checks only those
(ir.verifier); the schedule facts, which read none of them, are renumbered
(ir.schedule_facts).
"""

from __future__ import annotations

import weakref
from collections.abc import Collection
from dataclasses import dataclass

from .core import Module


@dataclass(frozen=True)
class Rewrite:
    order: list[int]         # per op of `after`, the index in `before` of the op it rewrites
    changed: frozenset[str]  # the attributes changed, added or dropped in any op


def rewritten_from(before: Module, after: Module, changing: Collection[str]) -> list[int] | None:
    """For each op of `after`, the index in `before` of the op it rewrites, when `after` has the ops of
    `before` (the same op names, operands and results, and inputs), in any order, with attributes changed,
    added or dropped only among `changing`; else None."""
    rewrite = rewrite_of(before, after)
    return rewrite.order if rewrite is not None and rewrite.changed <= frozenset(changing) else None


def rewrite_of(before: Module, after: Module) -> Rewrite | None:
    """How `after` rewrites `before` (see rewritten_from), or None when it has other ops. The last pair's is
    kept while both modules live: the verifier and the schedule facts ask of the scheduled program in turn."""
    was, now, rewrite = _last
    if was is not None and was() is before and now() is after:
        return rewrite
    _forget()  # (what it holds may go first)
    rewrite = _rewrite(before, after)
    _last[:] = weakref.ref(before, _forget), weakref.ref(after, _forget), rewrite
    return rewrite


_last: list = [None, None, None]


def _forget(_=None) -> None:
    _last[:] = None, None, None


def _rewrite(before: Module, after: Module) -> Rewrite | None:
    old_ops = before.ops
    if len(old_ops) != len(after.ops) or after.inputs != before.inputs:
        return None
    at = {op.results[0].name: i for i, op in enumerate(old_ops) if op.results}
    order, changed = [], set()
    for op in after.ops:
        i = at.get(op.results[0].name, -1) if op.results else -1
        if i < 0:
            return None
        old = old_ops[i]
        if old is not op:
            if old.name != op.name or (old.operands is not op.operands and old.operands != op.operands) \
                    or (old.results is not op.results and old.results != op.results):  # (a rewrite keeps them)
                return None
            if old.attrs is not op.attrs:
                changed.update(_changed(old.attrs, op.attrs))
        order.append(i)
    return Rewrite(order, frozenset(changed))


_GONE = object()


def _changed(old, new) -> list[str]:
    """The attributes `new` changes, adds or drops (a rewrite carries values over: an equal value that is
    another object counts as changed)."""
    keys = [k for k, v in new.items() if old.get(k, _GONE) is not v]
    if keys or len(old) != len(new):  # (else it has the same keys)
        keys += old.keys() - new.keys()
    return keys
