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
from lark import Lark, Token, Transformer
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
    "VALUES": "a value like %x", "TYPES": "a type like f32[1,7]", "RESULTS": "results like '%y ='",
    "ATTR_KEY": "an attribute like 'axis ='", "NUMBERS": "'['", "TENSOR_REF": "'tensor'", "MODULE_NAME": "a module name like @model",
    "LBRACE": "'{'", "RBRACE": "'}'", "LSQB": "'['", "RSQB": "']'", "COMMA": "','", "COLON": "':'",
    "EQUAL": "'='", "LESSTHAN": "'<'", "MORETHAN": "'>'", "MODULE": "'module'", "INPUT": "'input'",
    "OUTPUT": "'output'", "ATTRIBUTES": "'attributes'", "TENSOR": "'tensor'", "TRUE": "'true'",
    "FALSE": "'false'", "$END": "end of input",
}


# Pieces of the one-token lists of grammar.lark (VALUES, TYPES, NUMBERS, TENSOR_REF).
_VALUE_NAME = re.compile(r"%([^\s,#]+)")
_TYPE_TEXT = re.compile(r"[a-z0-9]+\[[0-9,]*\]")
_NUMBER = re.compile(r"(-?[0-9]+)(?![0-9.eE])|[^\s,\[\]]+")  # group 1: an INT, else a FLOAT
_COMMENT = re.compile(r"#[^\n]*")
_KEY = re.compile(r'"(?:[^"\\]|\\.)*"')


def _uncomment(token: str) -> str:
    """The token with its comments blanked out (same length, so offsets still hold)."""
    return _COMMENT.sub(lambda m: " " * len(m.group()), token) if "#" in token else token


def _numbers(token: str) -> list:
    return [int(m.group()) if m.group(1) else float(m.group()) for m in _NUMBER.finditer(_uncomment(token))]


@functools.lru_cache(maxsize=4096)
def parse_type(text: str) -> TensorType:
    """`f32[1,7]` -> TensorType; cached, since a module spells few distinct types."""
    dtype, dims = text[:-1].split("[")
    return TensorType(tuple(int(d) for d in dims.split(",")) if dims else (), _DTYPES[dtype])


def _at(token: Token, offset: int, length: int | None = None) -> Token:
    """The token's text at `offset` (to `length`), as a token with its own line and column."""
    before = token[:offset]
    newlines = before.count("\n")
    column = offset - before.rfind("\n") if newlines else token.column + offset
    value = token[offset:] if length is None else token[offset:offset + length]
    return Token(token.type, value, token.start_pos + offset, token.line + newlines, column)


def _find(token: str, name: str) -> int:
    """The offset of `%name` as a whole item of the value list `token`."""
    for m in _VALUE_NAME.finditer(_uncomment(token)):
        if m.group(1) == name:
            return m.start()
    return 0


_NO_ATTRS = AttrDict()


class _Error(Exception):
    """A semantic error at a token, turned into a ParseError with the file name."""

    def __init__(self, token: Token, message: str):
        self.token, self.message = token, message


def _value(name: str, ttype: TensorType) -> Value:
    """Value(name, ttype) without re-checking the name: the grammar's VALUE pattern is
    core.NAME_RE (this is a third of the cost of a Value)."""
    v = _object_new(Value)
    _setattr(v, "name", name)
    _setattr(v, "type", ttype)
    return v


_object_new, _setattr = object.__new__, object.__setattr__


def _string(token: Token) -> str:
    try:
        return json.loads(token)
    except ValueError as e:
        raise _Error(token, f"bad string {token}: {e}") from None


class _Builder(Transformer):
    """Builds the Module while the LALR parser reduces statements, in order. Each
    method gets the rule's children (tokens and built values) as a list."""

    def reset(self, blobs):
        self.blobs = blobs
        self.values: dict[str, Value] = {}
        self.inputs, self.ops, self.outputs = [], [], []

    def _define(self, name: str, ttype: TensorType, token: Token) -> Value:
        """Define %name (spelled in `token`, which may hold a list of values)."""
        if name in self.values:
            raise _Error(_at(token, _find(token, name)), f"value %{name} is defined twice")
        v = self.values[name] = _value(name, ttype)
        return v

    def _use(self, name: str, token: Token) -> Value:
        try:
            return self.values[name]
        except KeyError:
            raise _Error(_at(token, _find(token, name)), f"use of undefined value %{name}") from None

    # statements
    def input_stmt(self, c):
        name, ttype = c
        self.inputs.append(self._define(name[1:], parse_type(ttype), name))

    def output_stmt(self, c):
        name, value = c
        self.outputs.append((_string(name), self._use(value[1:], value)))

    def op_stmt(self, parts):
        # parts: [RESULTS] OP_NAME [VALUES] [AttrDict] [TYPES], as grammar.lark's op_stmt
        results = operands = types = None
        attrs = _NO_ATTRS
        for p in parts:
            if type(p) is AttrDict:
                attrs = p
            else:
                kind = p.type
                if kind == "VALUES":
                    operands = p
                elif kind == "TYPES":
                    types = p
                elif kind == "OP_NAME":
                    name = p
                else:
                    results = p
        result_names = _VALUE_NAME.findall(_uncomment(results)) if results is not None else ()
        type_texts = _TYPE_TEXT.findall(_uncomment(types)) if types is not None else ()
        if len(result_names) != len(type_texts):
            raise _Error(name, f"{name} names {len(result_names)} results but gives {len(type_texts)} types")
        use, define = self._use, self._define
        args = tuple(use(n, operands) for n in _VALUE_NAME.findall(_uncomment(operands))) if operands else ()
        outs = tuple(define(n, parse_type(t), results) for n, t in zip(result_names, type_texts))
        self.ops.append(Op(str(name), args, outs, attrs))

    def start(self, c):
        attrs = c[1] if len(c) > 1 and type(c[1]) is AttrDict else _NO_ATTRS
        return Module(c[0][1:], Block(self.inputs, self.ops, self.outputs), attrs)

    def module_attrs(self, c):
        return c[0]

    # attributes
    def attr_dict(self, pairs):
        attrs = {_attr_name(key): value for key, value in pairs}
        if len(attrs) != len(pairs):
            seen = set()
            for key, _ in pairs:
                if _attr_name(key) in seen:
                    raise _Error(key, f"attribute {_attr_name(key)} given twice")
                seen.add(_attr_name(key))
        return AttrDict(attrs)

    def attr(self, c):
        return c  # [ATTR_KEY token, value]

    def int_(self, c):
        return int(c[0])

    def float_(self, c):
        return float(c[0])

    def string(self, c):
        return _string(c[0])

    def true(self, c):
        return True

    def false(self, c):
        return False

    def dtype(self, c):
        return _DTYPES[c[0]]

    def list_(self, items):
        return tuple(items)

    def numbers(self, c):
        return tuple(_numbers(c[0]))

    def tensor_key(self, c):
        return _string(c[0])

    def tensor_numbers(self, c):
        return _numbers(c[0])

    def tensor_ref(self, c):
        token = c[0]
        text = _uncomment(token)
        m = _TYPE_TEXT.search(text)
        ttype_tok = _at(token, m.start(), len(m.group()))
        k = _KEY.search(text)
        return self.tensor([ttype_tok, _string(_at(token, k.start(), len(k.group())))])

    def tensor_data(self, numbers):
        return [n if isinstance(n, bool) else (float(n) if n.type == "FLOAT" else int(n)) for n in numbers]

    def tensor(self, c):
        ttype_tok, body = c
        ttype = parse_type(ttype_tok)
        if isinstance(body, str):
            return Tensor(ttype, body, loader=self.blobs.get(body))
        if len(body) != ttype.numel:
            raise _Error(ttype_tok, f"tensor<{ttype}> needs {ttype.numel} elements, got {len(body)}")
        dtype = ttype.dtype
        want = bool if dtype is DType.bool else int if dtype.is_int else (int, float)
        for x in body:
            if not isinstance(x, want) or (want is int and isinstance(x, bool)):
                raise _Error(ttype_tok, f"tensor<{ttype}>: element {_format_number(x)} is not a {dtype.value} value")
        if dtype.is_int:
            info = np.iinfo(dtype.numpy)
            bad = [x for x in body if not info.min <= x <= info.max]
            if bad:
                raise _Error(ttype_tok, f"tensor<{ttype}>: element {bad[0]} is out of range for {dtype.value}")
        return Tensor.from_array(np.array(body, dtype=dtype.numpy).reshape(ttype.shape), dtype)


def _format_number(x) -> str:
    return ("true" if x else "false") if isinstance(x, bool) else repr(x)


@functools.lru_cache(maxsize=1024)
def _attr_name(key: str) -> str:
    """`axis =` (an ATTR_KEY token) -> `axis`."""
    return re.match(r"[a-z_][a-z0-9_]*", key).group()


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
        self.regex = re.compile(f"(?:{ignore})*+(?:{alternatives or '(?!)'})")  # (?!): accepts only the end


_token = Token._future_new  # Token(...) without the check for a deprecated keyword


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
            token = _token(kind, value, start, line, start - line_start + 1)
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
