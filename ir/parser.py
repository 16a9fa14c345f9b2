"""The parser: IR text -> Module, with lark's LALR parser and an inline
transformer, so no parse tree is built (fast enough for 100,000-line programs).

Errors are `ParseError`s reading `file:line:column: message`.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lexer import Lexer, PatternRE, PatternStr

from .attributes import AttrDict, Tensor
from .core import Block, Module, Op, Value
from .errors import ParseError
from .types import DType, TensorType

_DTYPES = {d.value: d for d in DType}

# What the user is told was expected, per grammar terminal.
_EXPECTED = {
    "VALUE": "a value like %x", "OP_NAME": "an op name like graph.add", "TYPE": "a type like f32[1,7]",
    "DTYPE": "a dtype like f32", "INT": "an integer", "FLOAT": "a float", "STRING": "a string",
    "VALUES": "a value like %x", "TYPES": "a type like f32[1,7]", "ATTR_NAME": "an attribute name", "MODULE_NAME": "a module name like @model",
    "LBRACE": "'{'", "RBRACE": "'}'", "LSQB": "'['", "RSQB": "']'", "COMMA": "','", "COLON": "':'",
    "EQUAL": "'='", "LESSTHAN": "'<'", "MORETHAN": "'>'", "MODULE": "'module'", "INPUT": "'input'",
    "OUTPUT": "'output'", "ATTRIBUTES": "'attributes'", "TENSOR": "'tensor'", "TRUE": "'true'",
    "FALSE": "'false'", "$END": "end of input",
}


_VALUE_NAME = re.compile(r"%([^\s,]+)")
_TYPE_TEXT = re.compile(r"[a-z0-9]+\[[0-9,]*\]")


@functools.lru_cache(maxsize=4096)
def parse_type(text: str) -> TensorType:
    """`f32[1,7]` -> TensorType; cached, since a module spells few distinct types."""
    dtype, dims = text[:-1].split("[")
    return TensorType(tuple(int(d) for d in dims.split(",")) if dims else (), _DTYPES[dtype])


def _at(token: Token, offset: int) -> Token:
    """A token standing for the text at `offset` inside `token` (for error positions)."""
    before = token[:offset]
    newlines = before.count("\n")
    column = offset - before.rfind("\n") if newlines else token.column + offset
    return Token(token.type, token[offset:], token.start_pos + offset, token.line + newlines, column)


def _find(token: str, name: str) -> int:
    """The offset of `%name` as a whole item of the value list `token`."""
    for m in _VALUE_NAME.finditer(token):
        if m.group(1) == name:
            return m.start()
    return 0


_NO_ATTRS = AttrDict()


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

    def _define(self, name: str, ttype: TensorType, token: Token) -> Value:
        """Define %name (spelled in `token`, which may hold a list of values)."""
        if name in self.values:
            raise _Error(_at(token, _find(token, name)), f"value %{name} is defined twice")
        v = self.values[name] = Value(name, ttype)
        return v

    def _use(self, name: str, token: Token) -> Value:
        try:
            return self.values[name]
        except KeyError:
            raise _Error(_at(token, _find(token, name)), f"use of undefined value %{name}") from None

    # statements
    def input_stmt(self, name, ttype):
        self.inputs.append(self._define(name[1:], parse_type(ttype), name))

    def output_stmt(self, name, value):
        self.outputs.append((json.loads(name), self._use(value[1:], value)))

    def op_stmt(self, *parts):
        # parts: [VALUES] OP_NAME [VALUES] [AttrDict] [TYPES], as grammar.lark's op_stmt
        results = operands = types = name = None
        attrs = _NO_ATTRS
        for p in parts:
            if type(p) is AttrDict:
                attrs = p
            elif p.type == "VALUES":
                if name is None:
                    results = p
                else:
                    operands = p
            elif p.type == "OP_NAME":
                name = p
            else:
                types = p
        result_names = _VALUE_NAME.findall(results) if results is not None else ()
        type_texts = _TYPE_TEXT.findall(types) if types is not None else ()
        if len(result_names) != len(type_texts):
            raise _Error(name, f"{name} names {len(result_names)} results but gives {len(type_texts)} types")
        args = tuple(self._use(n, operands) for n in _VALUE_NAME.findall(operands)) if operands is not None else ()
        outs = tuple(self._define(n, parse_type(t), results) for n, t in zip(result_names, type_texts))
        self.ops.append(Op(str(name), args, outs, attrs))

    def start(self, name, *rest):
        attrs = rest[0] if rest and isinstance(rest[0], AttrDict) else AttrDict()
        return Module(name[1:], Block(self.inputs, self.ops, self.outputs), attrs)

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


class _Scanner:
    """One regex for the terminals a parser state accepts, ignored text (whitespace,
    comments) folded in front, so a token costs a single match."""

    def __init__(self, terminals, ignore: str):
        # lark's order (priority, then longest possible match, ...), and its rule that a
        # keyword also matched in full by a regex terminal of the same priority is found
        # by that regex and renamed (so `true` is TRUE where both are accepted).
        terminals = sorted(terminals, key=lambda t: (-t.priority, -t.pattern.max_width,
                                                      -len(t.pattern.value), t.name))
        strings = [t for t in terminals if isinstance(t.pattern, PatternStr)]
        self.rename: dict[str, dict[str, str]] = {}
        for t in terminals:
            if isinstance(t.pattern, PatternRE):
                for s in strings:
                    if s.priority == t.priority and re.fullmatch(t.pattern.to_regexp(), s.pattern.value):
                        self.rename.setdefault(t.name, {})[s.pattern.value] = s.name
        hidden = {name for names in self.rename.values() for name in names.values()}
        self.names = frozenset(t.name for t in terminals)
        alternatives = "|".join(f"(?P<{t.name}>{t.pattern.to_regexp()})" for t in terminals if t.name not in hidden)
        self.regex = re.compile(f"(?:{ignore})*+(?:{alternatives})")


class _FastLexer(Lexer):
    """lark's contextual lexer (each parser state lexes only the terminals it accepts),
    with the same tokens, but a third of the cost per token: one regex match each,
    no separate tokens for whitespace, line numbers counted with str.count."""

    __future_interface__ = 2

    def __init__(self, conf):
        self.terminals = {t.name: t for t in conf.terminals if t.name not in conf.ignore}
        self.ignore = "|".join(f"(?:{t.pattern.to_regexp()})" for t in conf.terminals if t.name in conf.ignore)
        self.skip = re.compile(f"(?:{self.ignore})*+")
        self.root = _Scanner(self.terminals.values(), self.ignore)
        self.by_state: dict[int, _Scanner] = {}
        self.by_names: dict[frozenset, _Scanner] = {}
        assert not conf.callbacks and not conf.use_bytes

    def _scanner(self, parse_table_row) -> _Scanner:
        names = frozenset(n for n in parse_table_row if n in self.terminals)
        if names not in self.by_names:
            self.by_names[names] = _Scanner([self.terminals[n] for n in names], self.ignore)
        return self.by_names[names]

    def lex(self, lexer_state, parser_state):
        text, pos, end = lexer_state.text.text, lexer_state.text.start, lexer_state.text.end
        line = text.count("\n", 0, pos) + 1
        line_start = text.rfind("\n", 0, pos) + 1
        stack, states, by_state = parser_state.state_stack, parser_state.parse_conf.states, self.by_state
        while True:
            state = stack[-1]
            scanner = by_state.get(state)
            if scanner is None:
                scanner = by_state[state] = self._scanner(states[state])
            m = scanner.regex.match(text, pos, end)
            if m is None:
                pos = self.skip.match(text, pos, end).end()
                if pos == end:
                    return
                line += text.count("\n", line_start, pos)
                self._fail(text, pos, end, line, pos - text.rfind("\n", 0, pos), scanner, lexer_state, parser_state)
            kind = m.lastgroup
            start = m.start(kind)
            if start != pos and text.count("\n", pos, start):
                line += text.count("\n", pos, start)
                line_start = text.rfind("\n", pos, start) + 1
            value = m.group(kind)
            if kind in scanner.rename:
                kind = scanner.rename[kind].get(value, kind)
            token = Token(kind, value, start, line, start - line_start + 1)
            pos = m.end()
            if "\n" in value:
                line += value.count("\n")
                line_start = start + value.rfind("\n") + 1
            lexer_state.last_token = token
            yield token

    def _fail(self, text, pos, end, line, column, scanner, lexer_state, parser_state):
        """Nothing this state accepts is at `pos`: name what is there, as lark does."""
        m = self.root.regex.match(text, pos, end)
        if m is not None:
            kind = m.lastgroup
            kind = self.root.rename.get(kind, {}).get(m.group(kind), kind)
            token = Token(kind, m.group(kind), pos, line, column)
            raise UnexpectedToken(token, set(scanner.names), state=parser_state,
                                  token_history=[lexer_state.last_token])
        raise UnexpectedCharacters(text, pos, line, column, allowed=set(scanner.names), state=parser_state,
                                   token_history=[lexer_state.last_token])


_GRAMMAR = Path(__file__).with_name("grammar.lark")
_builder = _Builder()
_parser = Lark(_GRAMMAR.read_text(), parser="lalr", lexer=_FastLexer, transformer=_builder,
               maybe_placeholders=False)
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
