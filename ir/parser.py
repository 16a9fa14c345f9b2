"""The parser: IR text -> Module, with lark's LALR parser and an inline
transformer, so no parse tree is built (fast enough for 100,000-line programs).

Errors are `ParseError`s reading `file:line:column: message`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from .attributes import AttrDict, Tensor
from .core import Block, Module, Op, Value
from .errors import ParseError
from .types import DType, TensorType

_DTYPES = {d.value: d for d in DType}

# What the user is told was expected, per grammar terminal.
_EXPECTED = {
    "VALUE": "a value like %x", "OP_NAME": "an op name like graph.add", "TYPE": "a type like f32[1,7]",
    "DTYPE": "a dtype like f32", "INT": "an integer", "FLOAT": "a float", "STRING": "a string",
    "ATTR_NAME": "an attribute name", "MODULE_NAME": "a module name like @model",
    "LBRACE": "'{'", "RBRACE": "'}'", "LSQB": "'['", "RSQB": "']'", "COMMA": "','", "COLON": "':'",
    "EQUAL": "'='", "LESSTHAN": "'<'", "MORETHAN": "'>'", "MODULE": "'module'", "INPUT": "'input'",
    "OUTPUT": "'output'", "ATTRIBUTES": "'attributes'", "TENSOR": "'tensor'", "TRUE": "'true'",
    "FALSE": "'false'", "$END": "end of input",
}


def parse_type(text: str) -> TensorType:
    dtype, dims = text[:-1].split("[")
    return TensorType(tuple(int(d) for d in dims.split(",")) if dims else (), _DTYPES[dtype])


class _Error(Exception):
    """A semantic error at a token, turned into a ParseError with the file name."""

    def __init__(self, token: Token, message: str):
        self.token, self.message = token, message


@v_args(inline=True)
class _Builder(Transformer):
    """Builds the Module while the LALR parser reduces statements, in order."""

    def reset(self, blobs):
        self.blobs = blobs
        self.values: dict[str, Value] = {}
        self.inputs, self.ops, self.outputs = [], [], []

    def _define(self, token: Token, ttype: TensorType) -> Value:
        name = token[1:]
        if name in self.values:
            raise _Error(token, f"value %{name} is defined twice")
        v = self.values[name] = Value(name, ttype)
        return v

    def _use(self, token: Token) -> Value:
        try:
            return self.values[token[1:]]
        except KeyError:
            raise _Error(token, f"use of undefined value {token}") from None

    # statements
    def input_stmt(self, name, ttype):
        self.inputs.append(self._define(name, parse_type(ttype)))

    def output_stmt(self, name, value):
        self.outputs.append((json.loads(name), self._use(value)))

    def op_stmt(self, results, name, operands, *rest):
        attrs, types = rest if len(rest) == 2 else (AttrDict(), rest[0])
        if len(results) != len(types):
            raise _Error(name, f"{name} names {len(results)} results but gives {len(types)} types")
        args = tuple(self._use(t) for t in operands)
        outs = tuple(self._define(r, parse_type(t)) for r, t in zip(results, types))
        self.ops.append(Op(str(name), args, outs, attrs))

    def start(self, name, *rest):
        attrs = rest[0] if rest and isinstance(rest[0], AttrDict) else AttrDict()
        return Module(name[1:], Block(self.inputs, self.ops, self.outputs), attrs)

    def results(self, *tokens):
        return tokens

    operands = types = results

    def module_attrs(self, attrs):
        return attrs

    # attributes
    def attr_dict(self, *pairs):
        return AttrDict(dict(pairs))

    def attr(self, name, value):
        return str(name), value

    def int_(self, t):
        return int(t)

    def float_(self, t):
        return float(t)

    def string(self, t):
        return json.loads(t)

    def true(self):
        return True

    def false(self):
        return False

    def dtype(self, t):
        return _DTYPES[str(t)]

    def list_(self, *items):
        return tuple(items)

    def tensor_ref(self, key):
        return json.loads(key)

    def tensor_data(self, *numbers):
        return [n if isinstance(n, bool) else (float(n) if n.type == "FLOAT" else int(n)) for n in numbers]

    def tensor(self, ttype_tok, body):
        ttype = parse_type(ttype_tok)
        if isinstance(body, str):
            return Tensor(ttype, body, loader=self.blobs.get(body))
        if len(body) != ttype.numel:
            raise _Error(ttype_tok, f"tensor<{ttype}> needs {ttype.numel} elements, got {len(body)}")
        return Tensor.from_array(np.array(body, dtype=ttype.dtype.numpy).reshape(ttype.shape), ttype.dtype)


_GRAMMAR = Path(__file__).with_name("grammar.lark")
_builder = _Builder()
_parser = Lark(_GRAMMAR.read_text(), parser="lalr", transformer=_builder, maybe_placeholders=False)
_lock = threading.Lock()


def parse(text: str, filename: str = "<string>",
          blobs: Mapping[str, Callable[[], np.ndarray]] | None = None) -> Module:
    """Parse IR text. `blobs` maps constant keys to loaders of their data."""
    with _lock:
        _builder.reset(blobs or {})
        try:
            return _parser.parse(text)
        except _Error as e:
            raise ParseError(f"{filename}:{e.token.line}:{e.token.column}: {e.message}") from None
        except UnexpectedInput as e:
            raise ParseError(_describe(e, text, filename)) from None
        except (ValueError, TypeError) as e:  # e.g. a type rule of a frozen dataclass
            raise ParseError(f"{filename}: {e}") from None


def _describe(e: UnexpectedInput, text: str, filename: str) -> str:
    if isinstance(e, UnexpectedEOF):
        lines = text.splitlines() or [""]
        where, found = f"{len(lines)}:{len(lines[-1]) + 1}", "end of input"
    else:
        where = f"{e.line}:{e.column}"
        if isinstance(e, UnexpectedToken):
            found = "end of input" if e.token.type == "$END" else repr(e.token.value)
        else:
            found = repr(text[e.pos_in_stream])
    expected = e.expected if isinstance(e, (UnexpectedToken, UnexpectedEOF)) else (e.allowed or set())
    names = sorted({_EXPECTED.get(t, t.lower()) for t in expected})
    if len(names) > 6:
        names = names[:6] + ["..."]
    return f"{filename}:{where}: unexpected {found}; expected {' or '.join(names) or 'something else'}"


def parse_file(path: str | Path, blobs=None) -> Module:
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ParseError(f"{path}: cannot read: {e}") from None
    return parse(text, str(path), blobs)
