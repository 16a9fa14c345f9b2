"""Seeded random inputs that are valid for a module.

Integer inputs that index a table (token ids reaching a gather) stay inside it;
attention masks are all ones; position ids count up to the end of the masked
length; float inputs are standard normal. A stateful module's inputs are the
first step of a new generation (`step_inputs` at position 0). Same module and
seed, same inputs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..ir import Module
from ..ir.evaluator import is_floating

# Ops through which an integer tensor keeps its values on the way to a gather,
# by name without the dialect, so graph and machine modules read alike.
_PASS_THROUGH = {"reshape", "cast", "expand", "transpose", "slice", "concat", "tile", "split", "input",
                 "reshape_view", "transpose_view", "join", "row_join", "column_slice", "row_slice"}
_GATHERS = {"gather", "gather_elements", "gather_nd"}


def index_bounds(module: Module) -> dict[str, int]:
    """For each input used as gather indices: the smallest table size it indexes."""
    uses: dict[str, list] = {}
    for op in module.ops:
        for i, v in enumerate(op.operands):
            uses.setdefault(v.name, []).append((op, i))
    bounds = {}
    for inp in module.inputs:
        if inp.type.dtype.is_float:
            continue
        stack, seen = [inp.name], set()
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            for op, i in uses.get(name, []):
                kind = op.name.split(".", 1)[1]
                if kind in _GATHERS and i == 1:
                    data = op.operands[0].type
                    axis = op.attrs.get("axis", 0) % data.rank if kind == "gather" else 0
                    dim = data.shape[axis]
                    bounds[inp.name] = min(bounds.get(inp.name, dim), dim)
                elif kind in _PASS_THROUGH:
                    stack.extend(r.name for r in op.results)
    return bounds


def random_inputs(module: Module, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    bounds = index_bounds(module)
    masks = [v for v in module.inputs if "mask" in v.name.lower()]
    mask_len = max((v.type.shape[-1] for v in masks if v.type.rank), default=None)
    out = {}
    for v in module.inputs:
        t, name = v.type, v.name.lower()
        if t.dtype.is_float:
            a = rng.standard_normal(t.shape).astype(t.dtype.numpy)
        elif v.name in bounds:
            a = rng.integers(0, bounds[v.name], t.shape).astype(t.dtype.numpy)
        elif "mask" in name or t.dtype.name == "bool":
            a = np.ones(t.shape, t.dtype.numpy)
        elif "position" in name and t.rank:
            n = t.shape[-1]
            start = max((mask_len or n) - n, 0)
            a = np.broadcast_to(np.arange(start, start + n), t.shape).astype(t.dtype.numpy)
        else:
            a = np.zeros(t.shape, t.dtype.numpy)
        out[v.name] = a
    return step_inputs(module, out, 0) if "position" in module.attrs else out


def step_inputs(module: Module, inputs: Mapping[str, np.ndarray], position: int) -> dict[str, np.ndarray]:
    """A stateful module's `inputs` moved to the step at `position`: its position input (module attribute
    `position`) counting from there, its masks admitting the slots written so far (0 .. position + n - 1)."""
    name = module.attrs["position"]
    types = {v.name: v.type for v in module.inputs}
    n = types[name].shape[-1]
    out = dict(inputs)
    out[name] = np.broadcast_to(np.arange(position, position + n), types[name].shape).astype(types[name].dtype.numpy)
    for v in module.inputs:
        if "mask" in v.name.lower() and v.type.rank:
            mask = np.zeros(v.type.shape, v.type.dtype.numpy)
            mask[..., :position + n] = 1
            out[v.name] = mask
    return out


def nonfinite(inputs: Mapping[str, np.ndarray]) -> dict[str, tuple[int, int]]:
    """The float inputs holding NaN or Inf: name -> (how many, of how many), in input order."""
    found = {}
    for name, a in inputs.items():
        a = np.asarray(a)
        if is_floating(a):
            bad = a.size - int(np.count_nonzero(np.isfinite(a)))
            if bad:
                found[name] = (bad, a.size)
    return found
