"""The IR's data structures: Value, Op, Block, Module. All frozen and hashable.

A Block is a flat SSA list (as a jaxpr): its inputs, its ops in order, and its
named outputs; and which of its ops are stamped copies of one template (its pieces,
ir.pieces: a model's repeated layers, scheduled once). A Module is a named Block plus
module-level attributes. Passes build new modules rather than mutate old ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .attributes import AttrDict
from .types import TensorType

NAME_RE = re.compile(r"[A-Za-z0-9_.:/\-]+")
MODULE_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]+")


@dataclass(frozen=True, slots=True)
class Value:
    """An SSA value: a unique name (printed `%name`) and its type."""

    name: str
    type: TensorType

    def __post_init__(self):
        if not isinstance(self.name, str) or not NAME_RE.fullmatch(self.name):
            raise ValueError(f"invalid value name {self.name!r} (letters, digits and _ . : / -)")
        if not isinstance(self.type, TensorType):
            raise TypeError(f"value %{self.name}: type must be a TensorType, got {self.type!r}")

    @classmethod
    def trusted(cls, name: str, type: TensorType) -> "Value":
        """Value(name, type) of a name and a type a reader has made sure of (its grammar's VALUE is NAME_RE:
        checking it again is a third of the cost of a Value, and a program has millions)."""
        v = _new(cls)
        _set_name(v, name)
        _set_type(v, type)
        return v

    def __str__(self) -> str:
        return f"%{self.name}"


_new = object.__new__
_set_name, _set_type = Value.__dict__["name"].__set__, Value.__dict__["type"].__set__


@dataclass(frozen=True, slots=True)
class Op:
    """One operation: `results = name(operands) {attrs}`."""

    name: str
    operands: tuple[Value, ...]
    results: tuple[Value, ...]
    attrs: AttrDict = field(default_factory=AttrDict)

    def __post_init__(self):
        object.__setattr__(self, "operands", tuple(self.operands))
        object.__setattr__(self, "results", tuple(self.results))
        if not isinstance(self.attrs, AttrDict):
            object.__setattr__(self, "attrs", AttrDict(self.attrs))

    @classmethod
    def trusted(cls, name: str, operands: tuple[Value, ...], results: tuple[Value, ...], attrs: AttrDict) -> "Op":
        """Op(name, operands, results, attrs) of tuples and an AttrDict already (a reader stamping millions of
        ops: ir.pieces), without converting them again."""
        op = _new(cls)
        _set_op_name(op, name)
        _set_operands(op, operands)
        _set_results(op, results)
        _set_attrs(op, attrs)
        return op

    @property
    def result(self) -> Value:
        """The single result of a one-result op."""
        (r,) = self.results
        return r

    def label(self) -> str:
        """How errors name this op: its first result and its op name."""
        return f"{self.results[0]} = {self.name}" if self.results else self.name


# (setting a frozen slot directly: the trusted constructors make millions)
_set_op_name, _set_operands, _set_results, _set_attrs = (Op.__dict__[k].__set__ for k in ("name", "operands", "results",
                                                                                          "attrs"))


@dataclass(frozen=True, slots=True)
class Stamp:
    """How a piece's ops are its template's (ir.pieces.Template.chips and .values name what it renames)."""

    cycle: int                            # added to every cycle
    chips: tuple[int, ...]                # the chip of each of the template's chips (Template.chips)
    values: tuple[str, ...]               # the name of each of the template's values
    units: tuple[str | None, ...]         # each op's unit (None for an op without `unit`)
    streams: tuple[tuple[int, ...], ...]  # each op's stream registers (() for an op without `streams`)
    out: tuple | None = None              # each op's `out` (() for an op without); None: the template's


@dataclass(frozen=True, slots=True)
class Piece:
    """Ops of a block that are a template's ops stamped elsewhere (ir.pieces): `ops`, ascending indices into
    the block's ops, are template `template`'s ops, in order, at other cycles, with their chips and values
    renamed and their own units, stream registers and words, as `stamp` says (the template's own piece: its
    identity). A template's ops are those of its first piece."""

    template: int
    ops: tuple[int, ...]
    stamp: Stamp


@dataclass(frozen=True, slots=True)
class Block:
    """A flat SSA list: inputs, ops in program order, and named outputs; `pieces`, in order of their first
    op, are made by ir.pieces (which checks that each is its template stamped) or read from text."""

    inputs: tuple[Value, ...]
    ops: tuple[Op, ...]
    outputs: tuple[tuple[str, Value], ...]
    pieces: tuple[Piece, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "ops", tuple(self.ops))
        object.__setattr__(self, "outputs", tuple((str(n), v) for n, v in self.outputs))
        object.__setattr__(self, "pieces", tuple(self.pieces))


@dataclass(frozen=True, slots=True, weakref_slot=True)  # (ir.rewrite remembers modules weakly)
class Module:
    """A named block plus module attributes (e.g. the machine it targets)."""

    name: str
    block: Block
    attrs: AttrDict = field(default_factory=AttrDict)

    def __post_init__(self):
        if not MODULE_NAME_RE.fullmatch(self.name):
            raise ValueError(f"invalid module name {self.name!r}")
        if not isinstance(self.attrs, AttrDict):
            object.__setattr__(self, "attrs", AttrDict(self.attrs))

    @property
    def inputs(self) -> tuple[Value, ...]:
        return self.block.inputs

    @property
    def ops(self) -> tuple[Op, ...]:
        return self.block.ops

    @property
    def outputs(self) -> tuple[tuple[str, Value], ...]:
        return self.block.outputs

    @property
    def pieces(self) -> tuple[Piece, ...]:
        return self.block.pieces

    def replace(self, **changes: Any) -> "Module":
        """A copy with some of name / block / attrs / inputs / ops / outputs / pieces replaced. New ops drop
        the pieces unless `pieces` is given too (they may be no template's stamps any more)."""
        block = changes.pop("block", self.block)
        parts = {k: changes.pop(k) for k in ("inputs", "ops", "outputs", "pieces") if k in changes}
        if parts:
            block = Block(parts.get("inputs", block.inputs), parts.get("ops", block.ops),
                          parts.get("outputs", block.outputs),
                          parts.get("pieces", () if "ops" in parts else block.pieces))
        return Module(changes.pop("name", self.name), block, changes.pop("attrs", self.attrs))

    def __str__(self) -> str:
        from .printer import print_module

        return print_module(self)
