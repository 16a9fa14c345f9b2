"""The printer: Module -> IR text, in the grammar of grammar.lark.

`parse(print_module(m)) == m` and `print_module(parse(text)) == text` for every
printed text: one spelling per construct, attributes in sorted key order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np

from .attributes import AttrDict, Tensor
from .core import Module, Op, Piece
from .pieces import template_ops
from .types import DType


def format_float(v: float) -> str:
    return repr(float(v))


def _format_element(x, dtype: DType) -> str:
    if dtype is DType.bool:
        return "true" if x else "false"
    if dtype.is_int:
        return str(int(x))
    if dtype is DType.f64:
        return repr(float(x))
    # the shortest digits that round-trip (bf16 and the float8 / float4 values are f32-exact), in
    # scientific notation from 10^precision (1e3 in f16, 1e6 in f32) and below 1e-4: what str() does
    # since numpy 2.3, spelled out so that the text is the same whatever numpy (2.2 wrote 65500.0)
    v = np.float16(x) if dtype is DType.f16 else np.float32(x)
    if v != 0 and np.isfinite(v) and not 1e-4 <= abs(float(v)) < 10.0 ** np.finfo(v.dtype).precision:
        return np.format_float_scientific(v, unique=True, trim="-")
    return np.format_float_positional(v, unique=True, trim="0")


def format_tensor(t: Tensor) -> str:
    if t.inline and t.key.startswith("sha256:"):
        body = ", ".join(_format_element(x, t.type.dtype) for x in t.array.reshape(-1).tolist())
        return f"tensor<{t.type}, [{body}]>"
    return f"tensor<{t.type}, {json.dumps(t.key)}>"


def format_attr(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return format_float(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, DType):
        return v.value
    if isinstance(v, Tensor):
        return format_tensor(v)
    if isinstance(v, tuple):
        if all(type(x) is int for x in v):  # (the common case: extents, shapes, stream numbers)
            return "[" + ", ".join(map(str, v)) + "]"
        return "[" + ", ".join(format_attr(x) for x in v) + "]"
    raise TypeError(f"cannot print attribute value {v!r}")


def format_attrs(attrs: AttrDict, texts: dict[int, str] | None = None) -> str:
    """`texts`: the text of each value printed before, by its id (print_lines: the values the ops of a module
    share -- ir.attributes.shared -- are printed once; the module keeps them alive meanwhile)."""
    if texts is None:
        return "{" + ", ".join(f"{k} = {format_attr(v)}" for k, v in attrs.items()) + "}"
    parts = []
    for k, v in attrs.items():
        if type(v) is int:
            parts.append(f"{k} = {v}")
        else:
            text = texts.get(id(v))
            if text is None:
                text = texts[id(v)] = format_attr(v)
            parts.append(f"{k} = {text}")
    return "{" + ", ".join(parts) + "}"


def format_op(op: Op, texts: dict[int, str] | None = None) -> str:
    """`texts`: as format_attrs'; the types' too."""
    line = op.name
    if op.results:
        line = ", ".join([f"%{r.name}" for r in op.results]) + " = " + line
    if op.operands:
        line += " " + ", ".join([f"%{v.name}" for v in op.operands])
    if op.attrs:
        line += " " + format_attrs(op.attrs, texts)
    if op.results:
        if texts is None:
            line += " : " + ", ".join(str(r.type) for r in op.results)
        else:
            types = []
            for r in op.results:
                text = texts.get(id(r.type))
                if text is None:
                    text = texts[id(r.type)] = str(r.type)
                types.append(text)
            line += " : " + ", ".join(types)
    return line


def print_module(m: Module) -> str:
    return "".join(print_lines(m))


def print_lines(m: Module) -> Iterator[str]:
    """The module's text line by line, each with its newline (a large program's text need not be held
    whole: backends.lpu writes it in chunks)."""
    head = f"module @{m.name}"
    if m.attrs:
        head += " attributes " + format_attrs(m.attrs)
    yield head + " {\n"
    texts: dict[int, str] = {}
    for n, ops in template_ops(m.pieces).items():
        yield f"  template {n} {{\n"
        for i in ops:
            yield "    " + format_op(m.ops[i], texts) + "\n"
        yield "  }\n"
    for v in m.inputs:
        yield f"  input %{v.name} : {v.type}\n"
    if m.pieces:
        yield from _pieces_lines(m, texts)
    else:
        for op in m.ops:
            yield "  " + format_op(op, texts) + "\n"
    for name, v in m.outputs:
        yield f"  output {json.dumps(name)} = %{v.name}\n"
    yield "}\n"


def _pieces_lines(m: Module, texts: dict[int, str]) -> Iterator[str]:
    """The ops of a module with pieces: a piece's as a `stamp` statement (its Stamp) where its first op is, the
    others as they are."""
    starts = {p.ops[0]: p for p in m.pieces}
    stamped = bytearray(len(m.ops))
    for p in m.pieces:
        for i in p.ops:
            stamped[i] = 1
    seen: set[int] = set()  # templates whose first piece is written
    for i, op in enumerate(m.ops):
        p = starts.get(i)
        if p is not None:
            yield "  " + _stamp_line(p, p.template in seen) + "\n"
            seen.add(p.template)
        if not stamped[i]:
            yield "  " + format_op(op, texts) + "\n"


def _stamp_line(piece: Piece, stamped: bool) -> str:
    """`stamp N {...}`: the template's own ops (its first piece) by their positions alone, any other piece by
    its Stamp too."""
    ranks = "[" + ", ".join(map(str, piece.ops)) + "]"
    if not stamped:
        return f"stamp {piece.template} {{ranks = {ranks}}}"
    s = piece.stamp
    chips = f"chips = {format_attr(s.chips)}, " if s.chips else ""
    out = "" if s.out is None else f"out = {format_attr(s.out)}, "
    return (f"stamp {piece.template} {{{chips}cycle = {s.cycle}, {out}ranks = {ranks}, streams = {format_attr(s.streams)}, "
            f"units = {format_attr(' '.join(u or '-' for u in s.units))}, values = {format_attr(' '.join(s.values))}}}")
