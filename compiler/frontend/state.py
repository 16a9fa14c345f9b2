"""A decoder with past and present tensors -> a step over a resident cache (persistent state).

A Hugging Face decoder-with-past graph takes the cache in (`past_key_values.{i}.key/value`
[B, H, C-1, D]) and gives it back grown by one row (`present.{i}.key/value` [B, H, C, D],
a concat along the sequence axis). On an LPU the cache stays in SRAM: each pair becomes one
`graph.state` of C rows and a `graph.state_write` of the new rows at the step's position (a
run-time input, `position_ids`), whose result stands where the concat's did. Attention then runs
over all C slots, masked by `attention_mask`: softmax over keys does not depend on their order,
so with the mask's ones at the slots written so far this is the Hugging Face computation. A
prefill graph (no past; `present.*` are the new rows themselves) writes its P rows at slots
position .. position + P - 1 of the same cache. The past inputs and present outputs leave the
host interface.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from ...ir import LpucError, Module, Op, Value
from ...ir.core import Block
from ...ir.attributes import AttrDict
from ...ir.verifier import verify

from ..passes import fresh_name

POSITION = "position_ids"
_PRESENT = re.compile(r"present\.(\d+)\.(key|value)")

# name -> (chip, extents): where a partner program keeps each state
Layout = Mapping[str, tuple[int, tuple[tuple[int, int, int], ...]]]


class StateError(LpucError):
    """A model whose cache cannot become resident state as asked."""


def parse_pairs(text: str) -> tuple[tuple[str, str], ...]:
    """`--state` text: `auto` (Hugging Face names) -> (); else `past=present,...` pairs."""
    if text == "auto":
        return ()
    pairs = []
    for item in text.split(","):
        past, eq, present = item.partition("=")
        if not eq or not past.strip() or not present.strip():
            raise StateError(f"--state {text!r}: expected auto or PAST=PRESENT[,PAST=PRESENT...]")
        pairs.append((past.strip(), present.strip()))
    return tuple(pairs)


def hf_pairs(module: Module) -> tuple[tuple[str, str], ...]:
    """(past input, present output) pairs by Hugging Face's names, layer by layer, key before value (a
    prefill graph has no past: its pairs name the past it would have)."""
    found = []
    for name, _ in module.outputs:
        m = _PRESENT.fullmatch(name)
        if m:
            found.append(((int(m.group(1)), m.group(2) == "value"), f"past_key_values.{m.group(1)}.{m.group(2)}",
                          name))
    return tuple((past, present) for _, past, present in sorted(found))


def make_stateful(module: Module, pairs: Sequence[tuple[str, str]] = (), context: int | None = None) -> Module:
    """`module` (graph level) with each (past input, present output) pair as a resident state of `context`
    rows (default: the present's rows of a decode graph; a prefill graph needs it); `pairs` empty: by
    Hugging Face's names. Where each state lives is lowering's to choose, or place_states'."""
    pairs = tuple(pairs) or hf_pairs(module)
    where = module.name
    if not pairs:
        raise StateError(f"{where}: no past/present pairs (Hugging Face names past_key_values.N.key -> "
                         "present.N.key); name them with --state PAST=PRESENT,...")
    inputs = {v.name: v for v in module.inputs}
    outputs = dict(module.outputs)
    position = inputs.get(POSITION)
    if position is None or not position.type.dtype.is_int:
        raise StateError(f"{where}: the step's position is not a run-time input: export the decoder with a "
                         f"{POSITION} input (int64 [batch, sequence], as Hugging Face's decoder-with-past takes it)")
    if position.type.rank != 2 or position.type.shape[0] != 1:
        raise StateError(f"{where}: {POSITION} is {position.type}: a resident cache takes batch 1 ([1, sequence])")
    producer = {r.name: op for op in module.ops for r in op.results}
    readers: dict[str, int] = {}
    for op in module.ops:
        for v in op.operands:
            readers[v.name] = readers.get(v.name, 0) + 1
    taken = {r.name for op in module.ops for r in op.results} | set(inputs) - {past for past, _ in pairs}
    states: list[Op] = []
    replace: dict[int, Op] = {}     # id(concat op) -> its state write
    after: dict[int, list[Op]] = {}  # id(op) -> the state writes of its results (prefill)
    gone_inputs, gone_outputs = set(), set()
    for past, present in pairs:
        if present not in outputs:
            raise StateError(f"{where}: --state {past}={present}: the model has no output {present!r}")
        v = outputs[present]
        if v.type.rank < 2:
            raise StateError(f"{where}: {present} is {v.type}: a cache has rows (rank >= 2)")
        op = producer.get(v.name)
        if past in inputs:  # decode: present = concat(past, new) along the rows
            axis = op.attrs.get("axis") % v.type.rank if op is not None and op.name == "graph.concat" else None
            if axis != v.type.rank - 2 or len(op.operands) != 2 or op.operands[0].name != past:
                raise StateError(f"{where}: {present} is not concat({past}, new rows) along the sequence axis "
                                 "(second to last)")
            if readers.get(past, 0) != 1:
                raise StateError(f"{where}: {past} is read by more than the concat making {present}")
            slots, new = v.type.shape[-2], op.operands[1]
            if context is not None and context != slots:
                raise StateError(f"{where}: {present} has {slots} rows, not the context {context}")
            gone_inputs.add(past)
            target = replace
        else:  # prefill: present is the new rows
            if context is None:
                raise StateError(f"{where}: a prefill graph needs the cache's context: give --context C (its decode "
                                 "partner's)")
            if v.type.shape[-2] > context:
                raise StateError(f"{where}: {present} has {v.type.shape[-2]} rows, more than the context {context}")
            slots, new = context, v
            target = after
        if op is None:
            raise StateError(f"{where}: {present} is a model input, not computed")
        shape = v.type.shape[:-2] + (slots, v.type.shape[-1])
        state = Op("graph.state", (), (Value(fresh_name(past, taken, "_"), v.type.with_shape(shape)),),
                   AttrDict({"name": past, "shape": shape, "dtype": v.type.dtype}))
        states.append(state)
        result = Value(v.name if target is replace else fresh_name(f"{present}.written", taken, "_"), state.result.type)
        write = Op("graph.state_write", (state.result, new, position), (result,))
        if target is replace:
            replace[id(op)] = write
        else:
            after.setdefault(id(op), []).append(write)
        gone_outputs.add(present)
    ops = list(states)
    for op in module.ops:
        ops.append(replace.get(id(op), op))
        ops += after.get(id(op), [])
    return verify(Module(module.name, Block(
        tuple(v for v in module.inputs if v.name not in gone_inputs), tuple(ops),
        tuple((n, v) for n, v in module.outputs if n not in gone_outputs)),
        AttrDict({**module.attrs, "position": POSITION})))


def place_states(module: Module, layout: Layout) -> Module:
    """`module` with each state kept where `layout` (a partner program's: name -> (chip, extents)) keeps it."""
    ops = []
    for op in module.ops:
        if op.name == "graph.state":
            name = op.attrs["name"]
            if name not in layout:
                raise StateError(f"{module.name}: the partner program has no state {name!r}")
            chip, out = layout[name]
            fixed = {"home": chip, "out": tuple(out)} if chip else {"out": tuple(out)}
            op = Op(op.name, op.operands, op.results, AttrDict({**op.attrs, **fixed}))
        ops.append(op)
    return module.replace(ops=tuple(ops))


