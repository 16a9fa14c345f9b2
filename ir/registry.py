"""The op registry: op name -> signature (operands, attributes) and type rule.

Every later concern keeps its own table keyed by op name (evaluator, lowering,
cost, interpreter); a test checks that the tables cover the registry.
Dialects are name prefixes: `graph.add`, later `vxm.add`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .attributes import Tensor
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


@dataclass(frozen=True)
class OpDef:
    """An op's signature. `infer` maps operand types and attributes (defaults
    filled in) to result types, raising TypeRuleError when they do not fit."""

    name: str
    min_operands: int
    max_operands: int | None  # None: variadic
    attrs: Mapping[str, AttrSpec]
    infer: InferFn
    doc: str = ""
    operand_names: tuple[str, ...] = field(default=())

    def attrs_with_defaults(self, attrs: Mapping[str, Any]) -> dict[str, Any]:
        """`attrs` plus the defaults of those not given (a None default: absent unless given)."""
        full = {k: s.default for k, s in self.attrs.items() if not s.required and s.default is not None}
        full.update(attrs)
        return full

    def result_types(self, operand_types, attrs) -> tuple[TensorType, ...]:
        types = self.infer(tuple(operand_types), self.attrs_with_defaults(attrs))
        return (types,) if isinstance(types, TensorType) else tuple(types)


OPS: dict[str, OpDef] = {}


def defop(name: str, operands: int | tuple[int, int | None], attrs: Mapping[str, AttrSpec] | None = None,
          doc: str = "", operand_names: tuple[str, ...] = ()):
    """Decorator registering `infer` as the type rule of a new op."""
    lo, hi = (operands, operands) if isinstance(operands, int) else operands

    def register(infer: InferFn) -> InferFn:
        if name in OPS:
            raise ValueError(f"op {name} registered twice")
        OPS[name] = OpDef(name, lo, hi, dict(attrs or {}), infer, doc, operand_names)
        return infer

    return register


def lookup(name: str) -> OpDef | None:
    return OPS.get(name)
