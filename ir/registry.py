"""The op registry: op name -> signature (operands, attributes), type rule and
properties.

An op's definition declares what every later concern asks of it: the class of
unit it runs on, where its operands and results live, whether it is a view (no
instruction runs) and how it is costed. Consumers ask the registry, never
compare op names. Semantics (the evaluator's numpy implementations) and
lowering rules are tables keyed by op name; a test checks that they cover the
registry. Dialects are name prefixes: `graph.add`, `vxm.add`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from .attributes import AttrDict, Tensor
from .machine import Machine
from .types import DType, TensorType

REQUIRED = object()  # marks an attribute without a default


class TypeRuleError(Exception):
    """Raised by a type rule; the verifier adds which op and value it concerns."""


@dataclass(frozen=True)
class AttrSpec:
    kind: str  # one of ATTR_KINDS
    default: Any = REQUIRED

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


ATTR_KINDS: dict[str, Callable[[Any], bool]] = {
    "bool": lambda v: isinstance(v, bool),
    "int": _is_int,
    "float": lambda v: isinstance(v, float),
    "str": lambda v: isinstance(v, str),
    "ints": lambda v: isinstance(v, tuple) and all(_is_int(x) for x in v),
    "floats": lambda v: isinstance(v, tuple) and all(isinstance(x, float) for x in v),
    "dtype": lambda v: isinstance(v, DType),
    # a chip number, and a list of them (the verifier checks them against the module's chip count)
    "chip": lambda v: _is_int(v) and v >= 0,
    "chips": lambda v: isinstance(v, tuple) and all(_is_int(x) and x >= 0 for x in v),
    "tensor": lambda v: isinstance(v, Tensor),
    # SRAM extents: (slice, first word, words) triples
    "extents": lambda v: isinstance(v, tuple) and all(
        isinstance(e, tuple) and len(e) == 3 and all(_is_int(x) and x >= 0 for x in e) for e in v),
}

InferFn = Callable[[tuple[TensorType, ...], Mapping[str, Any]], "TensorType | tuple[TensorType, ...]"]
MachineRule = Callable[[tuple[TensorType, ...], Mapping[str, Any], Machine], None]


# Where a machine op's operands and results live. Graph ops live nowhere in particular (None).
SRAM, HOST, PLANE, LINK = "sram", "host", "plane", "link"
PLACES = (SRAM, HOST, PLANE, LINK)


@dataclass(frozen=True)
class OpDef:
    """An op's signature and properties. `infer` maps operand types and attributes
    (defaults filled in) to result types, raising TypeRuleError when they do not fit."""

    name: str
    min_operands: int
    max_operands: int | None  # None: variadic
    attrs: Mapping[str, AttrSpec]
    infer: InferFn
    doc: str = ""
    operand_names: tuple[str, ...] = field(default=())
    # The unit class it runs on (ir.machine_ops.UNIT_CLASSES); None: no instruction runs (views,
    # constants). A graph op: the class its lowering computes it on.
    unit: str | None = None
    places: tuple[str, ...] = ()      # machine ops: each operand's place, by position (the last repeats)
    result_place: str | None = None   # machine ops: where its results live (PLACES); graph ops: None
    view: bool = False                # its result names (part of) its operands' words: no data moves
    transcendental: bool = False      # a VXM pass costs machine.vxm.transcendental_cycles per vector
    indexed: bool = False             # reads only the rows its indices (operand 1) select
    mirror: bool = False              # graph op: a machine op of its unit computes exactly it
    # State (docs/design.md, "Serving LLMs"): `persistent` declares a buffer living across runs of a program
    # (its result, named by the `name` attribute); `in_place` writes the rows of operand 1 into operand 0 (such
    # a buffer) at the run-time position operand 2 holds: its result names operand 0's words after the write.
    persistent: bool = False
    in_place: bool = False
    # What depends on the machine description (e.g. its vector width): checks operand types and attributes
    # against the Machine, raising TypeRuleError; the verifier runs it when given the machine.
    machine_rule: MachineRule | None = None

    def operand_place(self, k: int) -> str | None:
        """Where operand `k` lives (None for graph ops)."""
        return self.places[min(k, len(self.places) - 1)] if self.places else None

    def attrs_with_defaults(self, attrs: Mapping[str, Any]) -> dict[str, Any]:
        """`attrs` plus the defaults of those not given (a None default: absent unless given)."""
        full = {k: s.default for k, s in self.attrs.items() if not s.required and s.default is not None}
        full.update(attrs)
        return full

    def result_types(self, operand_types, attrs, *, defaults_filled: bool = False) -> tuple[TensorType, ...]:
        if isinstance(attrs, AttrDict):  # hashable: a signature seen before (layers and tiles repeat them)
            return _result_types(self.name, tuple(operand_types), attrs)
        types = self.infer(tuple(operand_types), attrs if defaults_filled else self.attrs_with_defaults(attrs))
        return (types,) if isinstance(types, TensorType) else tuple(types)


@lru_cache(maxsize=4096)
def _result_types(name: str, operand_types: tuple[TensorType, ...], attrs: AttrDict) -> tuple[TensorType, ...]:
    return OPS[name].result_types(operand_types, dict(attrs))


OPS: dict[str, OpDef] = {}


def defop(name: str, operands: int | tuple[int, int | None], attrs: Mapping[str, AttrSpec] | None = None,
          doc: str = "", operand_names: tuple[str, ...] = (), **properties):
    """Decorator registering `infer` as the type rule of a new op with `properties` (OpDef's fields)."""
    lo, hi = (operands, operands) if isinstance(operands, int) else operands

    def register(infer: InferFn) -> InferFn:
        register_op(OpDef(name, lo, hi, dict(attrs or {}), infer, doc, operand_names, **properties))
        return infer

    return register


def register_op(opdef: OpDef) -> OpDef:
    if opdef.name in OPS:
        raise ValueError(f"op {opdef.name} registered twice")
    for place in opdef.places + ((opdef.result_place,) if opdef.result_place else ()):
        if place not in PLACES:
            raise ValueError(f"op {opdef.name}: unknown place {place!r} (one of {', '.join(PLACES)})")
    OPS[opdef.name] = opdef
    return opdef
