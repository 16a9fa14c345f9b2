"""The dataflow graph of a module as Graphviz DOT (the `graphviz` package).

- One node per op, filled by the class of unit it runs on, as its definition in
  the registry declares it (a graph op: the class its lowering computes it on),
  in that class's colour (ir.machine_ops.UNIT_CLASSES, lightened). Views
  (mem.reshape_view, ...) move no data: small grey nodes.
- Constants and weights are no nodes: each is folded into its consumers' labels
  (`w f32[96,96]`), so a model's hundreds of weights do not swamp the graph.
- Edges are labelled with the value's type, e.g. `f32[1,7,96]`.
- A scheduled program (.lpu) is drawn inside one cluster per chip (`cluster_chip0`).
- Repeated layers: `find_layers` looks for the longest run of N >= 2 structurally
  identical, consecutive blocks of ops (same op names, types and attributes; names,
  constant data and schedule attributes ignored) — in program order and in
  dataflow-depth order (a scheduled program is sorted by cycle, so its layers
  interleave) — and lets each end block include a few extra ops (shared ones
  computed once, e.g. the attention mask). Ops on constants only (weight views,
  `mxm.install`) are left out of the search and go with their consumers' layer.
  Collapsed (`collapse=None`: from AUTO_COLLAPSE repeats on), the first block is
  drawn as one cluster labelled "layer × N"; edges from a block into the next
  become dashed "next layer" edges; the other blocks' edges are drawn from and to
  their counterparts in the drawn one.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from ..ir import machine_ops as mo
from ..ir.core import Module, Op
from ..ir.registry import OPS

# fill colours: each unit class's, at 40% over white so black text stays readable
UNIT_CLASS_COLORS = {**{c.name: c.colour + "66" for c in mo.UNIT_CLASSES}, "view": "#f0f0f0"}

AUTO_COLLAPSE = 3   # collapse by default from this many repeated layers on
MIN_LAYER_OPS = 3   # a repeated block has at least this many ops


def unit_class(op_name: str) -> str:
    """The unit class an op runs on, as the registry declares it (graph ops: the class their lowering
    computes them on); "view" for views; "mem" for constants (no instruction: they sit in the SRAM image)."""
    opdef = OPS[op_name]
    return "view" if opdef.view else opdef.unit or "mem"


def _is_constant(op: Op) -> bool:
    return not op.operands  # graph.constant, mem.constant


# --- repeated layers ----------------------------------------------------------------

@dataclass(frozen=True)
class Layers:
    """N repeated blocks of ops: blocks[r][j] is the module op index of position j in block r."""
    blocks: tuple[tuple[int, ...], ...]

    @property
    def count(self) -> int:
        return len(self.blocks)

    @property
    def size(self) -> int:
        return len(self.blocks[0])

    def where(self) -> dict[int, tuple[int, int]]:
        """op index -> (block, position)."""
        return {i: (r, j) for r, block in enumerate(self.blocks) for j, i in enumerate(block)}


def _signature(op: Op) -> tuple:
    attrs = tuple((k, repr(v)) for k, v in op.attrs.items() if k not in mo.SCHEDULE_ATTRS and k not in ("name",))
    return (op.name, tuple(str(v.type) for v in op.operands), tuple(str(r.type) for r in op.results), attrs)


def _depth_order(module: Module, nodes: Sequence[int], sig: dict[int, int]) -> list[int]:
    producer = {r.name: i for i, op in enumerate(module.ops) for r in op.results}
    depth: dict[int, int] = {}
    for i in nodes:  # SSA order: operands come first
        depth[i] = 1 + max([depth.get(producer.get(v.name, -1), 0) for v in module.ops[i].operands], default=0)
    return sorted(nodes, key=lambda i: (depth[i], sig[i], i))


def _best_run(a: Sequence[int]) -> tuple[int, int, int] | None:
    """(start, period, count) of the longest run of >= 2 equal consecutive blocks (ties: the shorter period)."""
    import numpy as np

    arr = np.asarray(a, np.int64)
    n, best = len(arr), None
    for p in range(MIN_LAYER_OPS, n // 2 + 1):
        # a run of period p covers a multiple of p, n at most: skip p when no such multiple beats the best
        if best is not None and n // p * p <= best[1] * best[2]:
            continue
        same = arr[:-p] == arr[p:]
        # a run of period p covers at most its equal positions plus p: skip p when that cannot beat the best
        if best is not None and int(np.count_nonzero(same)) + p <= best[1] * best[2]:
            continue
        eq = np.concatenate([[False], same, [False]]).astype(np.int8)
        edges = np.flatnonzero(np.diff(eq))
        starts, lengths = edges[::2], edges[1::2] - edges[::2]
        if not len(lengths):
            continue
        k = int(np.argmax(lengths))
        count = (int(lengths[k]) + p) // p
        if count >= 2 and (best is None or count * p > best[1] * best[2]):
            best = (int(starts[k]), p, count)
    return best


def _match_block(a, pattern, lo: int, hi: int, backward: bool) -> list[int] | None:
    """Positions in a[lo:hi] spelling `pattern` as a subsequence, packed against hi (backward) or lo."""
    out, k = [], 0
    rng = range(hi - 1, lo - 1, -1) if backward else range(lo, hi)
    pat = pattern[::-1] if backward else pattern
    for j in rng:
        if k < len(pat) and a[j] == pat[k]:
            out.append(j)
            k += 1
            if k == len(pat):
                return out[::-1] if backward else out
    return None


def _layers_in(order: list[int], sig: dict[int, int]) -> Layers | None:
    a = [sig[i] for i in order]
    run = _best_run(a)
    if run is None:
        return None
    start, p, count = run
    blocks = [list(range(start + r * p, start + (r + 1) * p)) for r in range(count)]
    pattern = a[start:start + p]
    while True:  # a block with a few extra ops before the run (e.g. shared ones computed in the first layer)
        lo = max(0, blocks[0][0] - 2 * p)
        m = _match_block(a, pattern, lo, blocks[0][0], backward=True)
        if m is None:
            break
        blocks.insert(0, m)
    while True:  # ... or after it
        hi = min(len(a), blocks[-1][-1] + 1 + 2 * p)
        m = _match_block(a, pattern, blocks[-1][-1] + 1, hi, backward=False)
        if m is None:
            break
        blocks.append(m)
    return Layers(tuple(tuple(order[j] for j in block) for block in blocks))


def constant_like(module: Module) -> set[int]:
    """Ops computing from constants only (constants, views of weights, weight-tile installs, ...)."""
    producer = {r.name: i for i, op in enumerate(module.ops) for r in op.results}
    out: set[int] = set()
    for i, op in enumerate(module.ops):
        if _is_constant(op) or (op.operands and all(producer.get(v.name, -1) in out for v in op.operands)):
            out.add(i)
    return out


_last_found: tuple[weakref.ref, Layers | None] | None = None  # (a module, its layers): modules never change


def find_layers(module: Module) -> Layers | None:
    """The longest run of repeated blocks of ops (ops computing from constants only excluded), or None.
    The last module's answer is kept: a compile asks of one module several times in a row (its default
    layout, the partition's stage cuts, the layer templates), and a large one takes a minute to answer."""
    global _last_found
    if _last_found is not None and _last_found[0]() is module:
        return _last_found[1]
    _last_found = (weakref.ref(module), _find_layers(module))
    return _last_found[1]


def _find_layers(module: Module) -> Layers | None:
    skip = constant_like(module)
    nodes = [i for i in range(len(module.ops)) if i not in skip]
    ids: dict[tuple, int] = {}
    sig = {i: ids.setdefault(_signature(module.ops[i]), len(ids)) for i in nodes}
    best = None
    for order in (nodes, _depth_order(module, nodes, sig)):
        found = _layers_in(order, sig)
        if found and (best is None or (found.count * found.size, found.count) > (best.count * best.size, best.count)):
            best = found  # the most ops covered; then the most (shortest) layers
    return best


# --- drawing ------------------------------------------------------------------------------

def _esc(text: str) -> str:
    """A DOT label's text: quotes and backslashes escaped."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _lines(*lines: str) -> str:
    return "\\n".join(_esc(x) for x in lines if x)


def graph_dot(module: Module, *, chips: int | None = None, collapse: bool | None = None,
              title: str | None = None):
    """A graphviz.Digraph of `module`. `chips`: draw the ops inside one cluster per chip (a lowered or
    scheduled program: each op on its `chip`). `collapse`: draw repeated layers once (None: when there are
    at least AUTO_COLLAPSE of them)."""
    import graphviz

    ops = module.ops
    producer = {r.name: i for i, op in enumerate(ops) for r in op.results}
    inputs = {v.name: k for k, v in enumerate(module.inputs)}
    layers = find_layers(module) if collapse is not False else None
    if collapse is None:
        collapse = layers is not None and layers.count >= AUTO_COLLAPSE
    where = layers.where() if (collapse and layers) else {}
    rep = {i: layers.blocks[0][j] for i, (_, j) in where.items()}
    const_like = constant_like(module)
    consumers: dict[int, list[int]] = defaultdict(list)
    for i, op in enumerate(ops):
        for v in op.operands:
            if v.name in producer:
                consumers[producer[v.name]].append(i)
    if where:  # an op on constants only goes with its consumers' layer; drawn for the first one only
        for i in sorted(const_like, reverse=True):
            blocks = {where.get(c, (None,))[0] for c in consumers[i]}
            if consumers[i] and None not in blocks:
                where[i] = (min(blocks), -1)
    hidden = {i for i, (r, j) in where.items() if j < 0 and r > 0}

    g = graphviz.Digraph(module.name, graph_attr={
        "rankdir": "TB", "fontname": "Helvetica", "fontsize": "12", "labelloc": "t", "nodesep": "0.25",
        "ranksep": "0.35", "label": _esc(title or f"@{module.name}")},
        node_attr={"fontname": "Helvetica", "fontsize": "10", "shape": "box", "style": "rounded,filled",
                   "height": "0.3"},
        edge_attr={"fontname": "Helvetica", "fontsize": "8", "color": "#555555", "arrowsize": "0.6"})

    def node_id(i: int) -> str:
        return f"op{rep.get(i, i)}"

    def add_op(target, i: int):
        op = ops[i]
        cls = unit_class(op.name)
        folded = [v for v in op.operands if v.name in producer and _is_constant(ops[producer[v.name]])]
        lines = [op.name.split(".", 1)[1], str(op.results[0]) if op.results else ""]
        lines += [f"w {v.type}" for v in folded[:3]] + ([f"+{len(folded) - 3} constants"] if len(folded) > 3 else [])
        attrs = {"fillcolor": UNIT_CLASS_COLORS[cls], "tooltip": _esc(f"{op.label()} ({cls})")}
        if cls == "view":
            attrs.update(fontsize="8", height="0.2", style="rounded,filled,dashed")
        target.node(node_id(i), _lines(*lines), **attrs)

    drawn = [i for i, op in enumerate(ops) if not _is_constant(op) and i not in hidden and where.get(i, (0,))[0] == 0]

    def body(target, chip=None):
        mine = [i for i in drawn if chip is None or mo.chip_of(ops[i]) == chip]
        for i in mine:
            if i not in where:
                add_op(target, i)
        in_layer = [i for i in mine if i in where]
        if in_layer:
            with target.subgraph(name=f"cluster_layers{'' if chip is None else chip}") as c:
                c.attr(label=_esc(f"layer × {layers.count}  ({layers.size} ops each)"), style="rounded,dashed",
                       color="#888888", fontsize="11")
                for i in in_layer:
                    add_op(c, i)

    if chips:
        for chip in range(chips):
            with g.subgraph(name=f"cluster_chip{chip}") as c:
                c.attr(label=f"chip{chip}", style="rounded", color="#333333", fontsize="12")
                body(c, chip)
    else:
        body(g)
    for v in module.inputs:
        g.node(f"in{inputs[v.name]}", _lines(v.name, str(v.type)), shape="ellipse", style="filled",
               fillcolor="#ffffff")
    for k, (name, v) in enumerate(module.outputs):
        g.node(f"out{k}", _lines(name, str(v.type)), shape="ellipse", style="filled", fillcolor="#ffffff")

    edges: dict[tuple[str, str, str], dict] = {}
    for i, op in enumerate(ops):
        if _is_constant(op) or i in hidden:
            continue
        for v in op.operands:
            p = producer.get(v.name)
            if v.name in inputs:
                src, src_block = f"in{inputs[v.name]}", None
            elif p is not None and not _is_constant(ops[p]) and p not in hidden:
                src, src_block = node_id(p), where.get(p, (None,))[0]
            else:
                continue
            dst_block = where.get(i, (None,))[0]
            attrs = {"label": _esc(str(v.type))}
            if src_block is not None and dst_block is not None and dst_block > src_block:
                attrs.update(style="dashed", color="#1f78b4", fontcolor="#1f78b4", constraint="false",
                             label=_esc(f"{v.type} (next layer)"))
            edges.setdefault((src, node_id(i), attrs["label"]), attrs)
    for k, (name, v) in enumerate(module.outputs):
        if v.name in inputs:
            src = f"in{inputs[v.name]}"
        elif v.name in producer and producer[v.name] not in hidden:
            src = node_id(producer[v.name])
        else:
            continue
        edges.setdefault((src, f"out{k}", str(v.type)), {"label": _esc(str(v.type))})
    for (src, dst, _), attrs in edges.items():
        g.edge(src, dst, **attrs)

    classes = sorted({unit_class(ops[i].name) for i in drawn}, key=list(UNIT_CLASS_COLORS).index)
    with g.subgraph(name="cluster_legend") as c:
        c.attr(label="unit class", style="rounded", color="#bbbbbb", fontsize="10")
        for cls in classes:
            c.node(f"legend_{cls}", cls, fillcolor=UNIT_CLASS_COLORS[cls], fontsize="9", height="0.2")
    return g
