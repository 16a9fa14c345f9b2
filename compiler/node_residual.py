"""A stage's unsplit ops on every node it spans: an all-reduce between node leaders.

At a layout, a layer's head groups and matmul branches run on the chips of their stage (`group` attributes:
compiler/split_heads.py, compiler/paired_matmuls.py); what is left unsplit (the residual stream, the norms,
the sums of the partial products) runs on the stage's first chip. When a stage spans several dragonfly nodes,
each exchange then goes: partial products summed on each node's first chip (passes.add_up), the node sums over
the global links to the stage's first chip, which adds them, adds the residual, norms, and sends the normed
activation back over the global links to each node's first chip, which fans it out. The stage's first chip
takes every node's sum in and sends every node its activation out, one after another on its links, and each
exchange crosses the global links twice.

Here each of those unsplit ops is also computed on the first chip of every other node whose chips read it
(directly, or through the ops computed there): each node's first chip keeps its own residual stream, takes
the other nodes' sums straight from them, adds them in the same order (so every copy is the same number) and
norms for its own node. An exchange then crosses the global links once, from every node to every other at
once: an all-reduce between the node leaders, not a reduce to one chip and a broadcast from it.

A sum of partial products from several chips with no `group` (a mixture of experts sums each expert's, then
the experts') is first added node by node, each node's terms on its first chip, so that one sum a node
crosses (_sums_by_node), as for a single matmul: copied to every node, each expert's node sums would go to
every node.

What is copied: ops with no `group`, no split of their own (matmuls, gathers: compiler/lower.py TILINGS), no
state read (a state, its write, what is made of them alone, and what reads those stay where the state is), and
nothing read larger than what the op makes, of what is not copied too: constants (lowering gives each chip
reading one a copy of its own: a norm's weights, not a table), and values crossing a link once a node (a
matmul's result; not a value the op shrinks, which is better sent once shrunk).
"""

from __future__ import annotations

from ..ir import Module, Op, Value
from ..ir.attributes import AttrDict
from ..ir.core import Block
from ..ir.layout import words
from ..ir.registry import OPS
from ..ir.verifier import verify

from .lower import TILINGS
from .passes import dead_code_elimination, fresh_name


def residual_on_every_node(module: Module, tp: int, node: int, lanes: int) -> Module:
    """`module` (laid out for stages of `tp` chips, `group` g on chip g mod tp of its stage) with its unsplit
    ops also on the first chip of each other node of `node` chips that reads them (module docstring); itself
    when a stage spans one node (`node` 0: ir.topology.spanned_nodes)."""
    if not node or tp <= node:
        return module
    module = _sums_by_node(module, tp, node)
    ops = module.ops
    producer = {r.name: i for i, op in enumerate(ops) for r in op.results}
    copyable = _copyable(module, producer, lanes)
    wanted: dict[int, set[int]] = {}  # op index -> the nodes (other than the first) whose first chip computes it
    for i in range(len(ops) - 1, -1, -1):
        op = ops[i]
        nodes = {_node_of(op, tp, node)} - {0} if "group" in op.attrs else wanted.get(i, set())
        for v in op.operands:
            p = producer.get(v.name)
            if nodes and p is not None and p in copyable:
                wanted.setdefault(p, set()).update(nodes)
    if not wanted:
        return module
    taken = {r.name for op in ops for r in op.results} | {v.name for v in module.inputs}
    copy_of: dict[tuple[str, int], Value] = {}  # (value name, node) -> its copy there
    out: list[Op] = []
    for i, op in enumerate(ops):
        # a grouped op on another node reads the copy there
        n = _node_of(op, tp, node)
        operands = tuple(copy_of.get((v.name, n), v) for v in op.operands)
        out.append(op if operands == op.operands else Op(op.name, operands, op.results, op.attrs))
        for n in sorted(wanted.get(i, ())):
            results = tuple(Value(fresh_name(f"{r.name}.node{n}", taken), r.type) for r in op.results)
            for r, c in zip(op.results, results):
                copy_of[(r.name, n)] = c
            out.append(Op(op.name, tuple(copy_of.get((v.name, n), v) for v in op.operands), results,
                          AttrDict({**op.attrs, "group": n * node})))
    return verify(Module(module.name, Block(module.inputs, tuple(out), module.outputs), module.attrs))


def _sums_by_node(module: Module, tp: int, node: int) -> Module:
    """`module` with each unsplit sum of partial products from several chips (a tree of adds with no `group`
    over results that have one) added node by node first, on each node's first chip, then across the nodes:
    a mixture of experts sums each expert's partial products (passes.add_up), then the experts' sums, and so
    would send every expert's node sums to every node's first chip; added by node, one sum a node crosses,
    as for a single matmul. Itself when no node holds two terms of one sum."""
    ops = module.ops
    producer = {r.name: i for i, op in enumerate(ops) for r in op.results}
    uses: dict[str, int] = {}
    for op in ops:
        for v in op.operands:
            uses[v.name] = uses.get(v.name, 0) + 1
    for _, v in module.outputs:
        uses[v.name] = uses.get(v.name, 0) + 1
    terms: dict[int, list[Value]] = {}  # an unsplit add over partial products -> its terms, in order
    absorbed: set[int] = set()          # ... read only by another such add
    for i, op in enumerate(ops):
        if op.name != "graph.add" or "group" in op.attrs or "chip" in op.attrs or \
                any(v.type != op.result.type for v in op.operands):
            continue
        found, inner = [], []
        for v in op.operands:
            p = producer.get(v.name)
            if p in terms and uses[v.name] == 1:
                found += terms[p]
                inner.append(p)
            elif p is not None and "group" in ops[p].attrs:
                found.append(v)
            else:
                break
        else:
            terms[i] = found
            absorbed.update(inner)
    rewrite: dict[int, list[Op]] = {}
    taken = {r.name for op in ops for r in op.results} | {v.name for v in module.inputs}
    for i in sorted(set(terms) - absorbed):
        by_node: dict[int, list[Value]] = {}
        for v in terms[i]:
            by_node.setdefault(_node_of(ops[producer[v.name]], tp, node), []).append(v)
        if all(len(vs) == 1 for vs in by_node.values()):
            continue
        root, new, sums = ops[i].result, [], []
        for n in sorted(by_node):
            total = by_node[n][0]
            for v in by_node[n][1:]:
                out = Value(fresh_name(f"{root.name}.node{n}", taken), root.type)
                new.append(Op("graph.add", (total, v), (out,), AttrDict({"group": n * node})))
                total = out
            sums.append(total)
        total = sums[0]
        for k, v in enumerate(sums[1:], 1):
            out = root if k == len(sums) - 1 else Value(fresh_name(f"{root.name}.sum{k}", taken), root.type)
            new.append(Op("graph.add", (total, v), (out,)))
            total = out
        if len(sums) == 1:  # (all on one node: its sum is the result)
            last = new.pop()
            new.append(Op(last.name, last.operands, (root,), last.attrs))
        rewrite[i] = new
    if not rewrite:
        return module
    out = [new for i, op in enumerate(ops) for new in rewrite.get(i, [op])]
    return dead_code_elimination(Module(module.name, Block(module.inputs, tuple(out), module.outputs), module.attrs))


def _node_of(op: Op, tp: int, node: int) -> int:
    """The node of its stage `op` runs on: its group's (an op with none: the stage's first chip's)."""
    return op.attrs.get("group", 0) % tp // node


def _copyable(module: Module, producer: dict[str, int], lanes: int) -> set[int]:
    """The indices of the ops a node may compute for itself (module docstring); `producer`: value name -> the
    index of the op making it."""
    constant = {op.result.name for op in module.ops if op.name == "graph.constant"}
    stateful: set[str] = set()  # a state, its writes, and what is made of them alone (with constants)
    found = set()
    for i, op in enumerate(module.ops):
        spec = OPS[op.name]
        if spec.persistent or spec.in_place or (any(v.name in stateful for v in op.operands) and all(
                v.name in stateful or v.name in constant for v in op.operands)):
            stateful.update(r.name for r in op.results)
            continue
        if any(v.name in stateful for v in op.operands):
            continue  # (what reads a state and more stays where the state is, as a cache is never sent)
        if "group" in op.attrs or "chip" in op.attrs or op.name in TILINGS or not op.results:
            continue
        if op.name == "graph.constant":
            continue  # (lowering gives each chip reading a constant its own copy)
        # what a copy reads and does not copy (a constant, or a value crossing a link to the node) is no larger
        # than what the op makes: else the node is better sent that
        made = max(words(r.type, lanes) for r in op.results)
        if all(words(v.type, lanes) <= made for v in op.operands
               if v.name in constant or producer.get(v.name) not in found):
            found.add(i)
    return found


__all__ = ["residual_on_every_node"]
