"""Builder: appends ops to a block under construction, inferring result types
from the registry, so frontends and passes never spell types by hand."""

from __future__ import annotations

import re

import numpy as np

from .attributes import AttrDict, Tensor
from .core import Block, Module, Op, Value
from .errors import VerifyError
from .registry import OPS, TypeRuleError
from .types import DType, TensorType

_UNSAFE = re.compile(r"[^A-Za-z0-9_.:/-]+")


class Builder:
    def __init__(self):
        self.inputs: list[Value] = []
        self.ops: list[Op] = []
        self.outputs: list[tuple[str, Value]] = []
        self._taken: set[str] = set()
        self._next = 0

    def fresh(self, hint: str | None = None) -> str:
        """A unique value name: `hint` made safe (deduplicated), or the next number."""
        if hint:
            base = _UNSAFE.sub("_", hint).strip("_") or "v"
            name, n = base, 1
            while name in self._taken:
                name, n = f"{base}_{n}", n + 1
        else:
            while str(self._next) in self._taken:
                self._next += 1
            name = str(self._next)
        self._taken.add(name)
        return name

    def input(self, name: str, ttype: TensorType) -> Value:
        v = Value(self.fresh(name), ttype)
        self.inputs.append(v)
        return v

    def op(self, name: str, /, *operands: Value, names: tuple[str | None, ...] = (), **attrs):
        """Append op `name`; return its result (or the tuple of its results)."""
        opdef = OPS.get(name)
        if opdef is None:
            raise VerifyError(f"unknown op {name}")
        attrs = AttrDict({k: tuple(v) if isinstance(v, list) else v for k, v in attrs.items()})
        try:
            types = opdef.result_types([v.type for v in operands], attrs)
        except TypeRuleError as e:
            raise VerifyError(f"{name}: {e} (operands {', '.join(f'{v}: {v.type}' for v in operands)})") from None
        names = tuple(names) + (None,) * (len(types) - len(names))
        results = tuple(Value(self.fresh(n), t) for n, t in zip(names, types))
        self.ops.append(Op(name, operands, results, attrs))
        return results[0] if len(results) == 1 else results

    def constant(self, value, dtype: DType | None = None, name: str | None = None) -> Value:
        tensor = value if isinstance(value, Tensor) else Tensor.from_array(np.asarray(value), dtype)
        return self.op("graph.constant", names=(name,), value=tensor)

    def output(self, name: str, value: Value) -> None:
        self.outputs.append((name, value))

    def build(self, module_name: str, **attrs) -> Module:
        return Module(re.sub(r"[^A-Za-z0-9_.-]+", "_", module_name) or "module", Block(self.inputs, self.ops, self.outputs), attrs)
