"""Module-to-module passes that do not belong to one stage."""

from __future__ import annotations

from ..ir import Module


def dead_code_elimination(module: Module) -> Module:
    """Drop ops none of whose results reach an output (the IR has no side effects)."""
    live = {v.name for _, v in module.outputs}
    kept = []
    for op in reversed(module.ops):
        if any(r.name in live for r in op.results):
            kept.append(op)
            live.update(v.name for v in op.operands)
    return module.replace(ops=tuple(reversed(kept)))
