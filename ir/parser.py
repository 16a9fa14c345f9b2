"""The parser: IR text -> Module, with lark's LALR parser and a transformer that
builds the module while the parser reduces, so no parse tree is built.

Speed (a 100,000-line module in a few seconds) comes from four things, none of
which changes the language of grammar.lark:
- OP_LINE (grammar.lark): an op statement on one line as the printer writes it (a
  program is mostly these) is one token, taken apart by regexes made of the grammar's
  own terminals (`op_line`); any other statement goes through the rules, and tests
  check that both read the same text the same way;
- compound terminals: an op's operand list, result list and type list, an
  attribute's name and "=", number lists and constants by reference are one token each;
- `_FastLexer`: lark's contextual lexer at a third of the cost per token;
- callbacks that take the children list as it is, and no re-validation of what
  the grammar already guarantees (value names, attribute values).

Errors are `ParseError`s reading `file:line:column: message`.
"""

from __future__ import annotations

import functools
import json
import operator
import re
import threading
from collections.abc import Callable, Mapping
from itertools import chain, repeat
from pathlib import Path

import numpy as np
from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lexer import Lexer, PatternRE, PatternStr

from .attributes import AttrDict, Tensor
from .collector import collector_paused
from .core import NAME_RE, Block, Module, Op, Piece, Value
from .errors import ParseError
from .pieces import Stamp, Template
from .types import DType, TensorType

_DTYPES = {d.value: d for d in DType}

# What the user is told was expected, per grammar terminal.
_EXPECTED = {
    "VALUE": "a value like %x", "VALUES": "a value like %x", "RESULTS": "results like '%y ='",
    "OP_NAME": "an op name like graph.add", "TYPE": "a type like f32[1,7]", "TYPES": "a type like f32[1,7]",
    "DTYPE": "a dtype like f32", "INT": "an integer", "FLOAT": "a float", "STRING": "a string",
    "ATTR_KEY": "an attribute like 'axis ='", "NUMBERS": "'['", "TENSOR_REF": "'tensor'",
    "MODULE_NAME": "a module name like @model",
    "LBRACE": "'{'", "RBRACE": "'}'", "LSQB": "'['", "RSQB": "']'", "COMMA": "','", "COLON": "':'",
    "EQUAL": "'='", "LESSTHAN": "'<'", "MORETHAN": "'>'", "MODULE": "'module'", "INPUT": "'input'",
    "OUTPUT": "'output'", "ATTRIBUTES": "'attributes'", "TENSOR": "'tensor'", "TRUE": "'true'",
    "FALSE": "'false'", "TEMPLATE": "'template'", "STAMP": "'stamp'", "$END": "end of input",
}


@functools.lru_cache(maxsize=4096)
def parse_type(text: str) -> TensorType:
    """`f32[1,7]` -> TensorType; cached, since a module spells few distinct types."""
    dtype, dims = text[:-1].split("[")
    return TensorType(tuple(int(d) for d in dims.split(",")) if dims else (), _DTYPES[dtype])


# --- splitting the compound tokens -------------------------------------------
# These run only on text that a compound terminal of grammar.lark has matched, so
# they need not check it again; a comment is an item of its own (it may hold
# anything, and a string may hold a '#').

_S = r"(?:\s|#[^\n]*)*"
_NAMES = re.compile(r"%([A-Za-z0-9_.:/\-]+)")
_NAMES_C = re.compile(r"#[^\n]*|%([A-Za-z0-9_.:/\-]+)")
_TYPES = re.compile(r"[a-z0-9]+\[[0-9,]*\]")
_TYPES_C = re.compile(r"#[^\n]*|([a-z0-9]+\[[0-9,]*\])")
_NUMBERS = re.compile(r"#[^\n]*|(-?[0-9]+)(?![0-9.eE])|([^\s,\[\]#]+)")  # group 1: INT, group 2: FLOAT
_TENSOR_REF = re.compile(rf'tensor{_S}<{_S}(?P<type>[a-z0-9]+\[[0-9,]*\]){_S},{_S}(?P<key>"(?:[^"\\]|\\.)*"){_S}>')


def _names(token: str) -> list[str]:
    return _NAMES.findall(token) if "#" not in token else [n for n in _NAMES_C.findall(token) if n]


def _types(token: str) -> list[str]:
    return _TYPES.findall(token) if "#" not in token else [t for t in _TYPES_C.findall(token) if t]


def _numbers(token: str) -> list:
    return [int(m.group(1)) if m.group(1) else float(m.group(2))
            for m in _NUMBERS.finditer(token) if m.group(1) or m.group(2)]


def _find(token: str, name: str) -> int:
    """The offset of `%name` as a whole item of the value list `token`."""
    for m in _NAMES_C.finditer(token):
        if m.group(1) == name:
            return m.start()
    return 0


class _Error(Exception):
    """A semantic error at offset `pos` of the text, turned into a ParseError with
    the file name, line and column."""

    def __init__(self, pos: int, message: str):
        self.pos, self.message = pos, message


def _where(text: str, pos: int) -> str:
    """`line:column` (both from 1) of offset `pos`. Tokens carry only their offset:
    lines are counted when an error needs them, not for every token."""
    return f"{text.count(chr(10), 0, pos) + 1}:{pos - text.rfind(chr(10), 0, pos)}"


def _string(text: str, pos: int) -> str:
    """The value of the STRING `text`, found at offset `pos`."""
    if "\\" not in text and text.isprintable():  # nothing to unescape (json.loads is slower)
        return text[1:-1]
    try:
        return json.loads(text)
    except ValueError as e:
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)  # one line: a raw newline as \n
        raise _Error(pos, f"bad string {shown}: {e}") from None


_value = Value.trusted  # (the grammar's VALUE is core.NAME_RE)


_NO_ATTRS = AttrDict()


class _Builder(Transformer):
    """Builds the Module while the LALR parser reduces statements, in order. Each
    method gets its rule's children (tokens and built values) as one list."""

    def reset(self, blobs):
        self.blobs = blobs
        self.values: dict[str, Value] = {}
        self.inputs, self.ops, self.outputs = [], [], []
        self.templates: dict[int, Template] = {}
        self.template: tuple | None = None  # while a template's ops are read: (its number, token, the module's
                                            # values and ops, put aside)
        self.pieces: list[Piece] = []
        # the stamps' ops still to come, by the position of each stamp's next: (its ops, their positions, token)
        self.pending: dict[int, tuple] = {}
        self.shared: dict = {}  # a stamp's unit names and stream lists, one object each (_stamp_of)
        # each attribute value of an OP_LINE as spelled -> as read: values are immutable, so equal ones are read
        # once and shared (a program repeats its units, chips, streams and words a lot)
        self.attr_values: dict[str, object] = {}

    def _define(self, name: str, ttype: TensorType, token: Token) -> Value:
        """Define %name (spelled in `token`, which may hold a list of values)."""
        if name in self.values:
            raise _Error(token.start_pos + _find(token, name), f"value %{name} is defined twice")
        v = self.values[name] = _value(name, ttype)
        return v

    def _use(self, name: str, token: Token) -> Value:
        try:
            return self.values[name]
        except KeyError:
            if self.template is not None:  # a template's operand from outside it: each stamp names its own
                return _value(name, _OUTSIDE)
            raise _Error(token.start_pos + _find(token, name), f"use of undefined value %{name}") from None

    # pieces (ir.pieces): templates, and stamps of them
    def template_head(self, c):
        number = c[0]
        if int(number) in self.templates:
            raise _Error(number.start_pos, f"template {int(number)} is defined twice")
        # its ops are read into a list of their own, its values into a namespace of their own
        self.template = (int(number), number, self.values, self.ops)
        self.values, self.ops = {}, []

    def template_stmt(self, c):
        n, token, self.values, ops = self.template
        ops, self.ops, self.template = self.ops, ops, None
        if not ops:
            raise _Error(token.start_pos, f"template {n} has no ops")
        self.templates[n] = Template(ops)

    def stamp_line(self, c):
        """A STAMP_LINE token: its template's number and its attributes, read as an OP_LINE's are."""
        line = c[0]
        m = _STAMP_LINE.match(line)
        number = _token("INT", m.group(1), line.start_pos + m.start(1))
        self.stamp_stmt([number, _stamp_attrs(m.group(2), line.start_pos + m.start(2))])

    def stamp_stmt(self, c):
        token, attrs = c
        n, at = int(token), token.start_pos
        template = self.templates.get(n)
        if template is None:
            raise _Error(at, f"stamp of template {n}, which is not defined")
        stamp = _stamp_of(template, n, attrs, at, self.shared)
        ranks = attrs.get("ranks")
        if not isinstance(ranks, tuple) or len(ranks) != len(template.ops) \
                or not all(type(r) is int for r in ranks):
            raise _Error(at, f"stamp of template {n}: `ranks` must list the positions of its {len(template.ops)} ops")
        self._due()
        if ranks[0] < len(self.ops) or any(a >= b for a, b in zip(ranks, ranks[1:])):
            raise _Error(at, f"stamp of template {n}: `ranks` must rise from at least {len(self.ops)} (the ops "
                             "before it)")
        made = template.stamp(stamp, self.values, lambda name: self._use(name, token),
                              lambda name, ttype: self._define(name, ttype, token))  # (which says it is defined twice)
        self._claim(ranks[0], (made, iter(ranks[1:]), token))
        self.pieces.append(Piece(n, ranks, stamp))

    def _claim(self, rank: int, entry: tuple):
        if rank in self.pending:
            raise _Error(entry[2].start_pos, f"stamp of template {int(entry[2])}: an op at position {rank}, where "
                                             "another stamp has one")
        self.pending[rank] = entry

    def _due(self):
        """Make the stamps' ops whose turn has come (their position is the next)."""
        pending, ops = self.pending, self.ops
        while (entry := pending.pop(len(ops), None)) is not None:
            made, ranks = entry[0], entry[1]
            ops.append(next(made))
            rank = next(ranks, None)
            while rank == len(ops) and rank not in pending:  # (a piece's ops are mostly one after another)
                ops.append(next(made))
                rank = next(ranks, None)
            if rank is not None:
                self._claim(rank, entry)

    def _flush(self):
        """Make the stamps' ops still to come: the ops end here."""
        self._due()
        if self.pending:
            rank = min(self.pending)
            token = self.pending[rank][2]
            raise _Error(token.start_pos, f"stamp of template {int(token)}: an op at position {rank}, but the "
                                          f"module has {len(self.ops)} ops before it")

    # statements
    def input_stmt(self, c):
        name, ttype = c
        self.inputs.append(self._define(name[1:], parse_type(ttype), name))

    def output_stmt(self, c):
        name, value = c
        self._flush()
        self.outputs.append((_string(name, name.start_pos), self._use(value[1:], value)))

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
        self._op(name, results, operands, attrs, types)

    def op_line(self, c):
        """An OP_LINE token: cut into the parts op_stmt gets (each a token at its offset, for errors)."""
        line = c[0]
        m, at = _LINE.match(line), line.start_pos
        parts = [_token(kind, m.group(kind), at + m.start(kind)) if m.group(kind) is not None else None
                 for kind in ("OP_NAME", "RESULTS", "VALUES", "TYPES")]
        attrs = _NO_ATTRS if m.group("attrs") is None else self._line_attrs(m.group("attrs"), at + m.start("attrs"))
        self._op(parts[0], parts[1], parts[2], attrs, parts[3])

    def _line_attrs(self, text: str, at: int) -> AttrDict:
        """The attributes of an OP_LINE (`text`, found at offset `at`, is what is between its braces)."""
        items, starts, read = [], [], self.attr_values
        for m in _LINE_ATTR.finditer(text):
            starts.append(at + m.start())
            spelled = m.group(2)
            value = read.get(spelled)
            if value is None:
                value = self._line_value(spelled, at + m.start(2))
                if spelled[0] != "t":  # (a tensor's numbers are not kept)
                    read[spelled] = value
            items.append((m.group(1), value))
        return _attr_dict(items, starts.__getitem__)

    def _line_value(self, text: str, pos: int):
        """An attribute value of an OP_LINE, as the rules' callbacks make it; OP_LINE has checked its form,
        so its first character tells its kind."""
        c = text[0]
        if c == "[":  # numbers, or lists of numbers: json reads them as the rules do (INT, FLOAT), and faster
            try:
                value, _ = _json_scan(text, 0)  # (json.loads without its wrappers: the list is the whole text)
            except (StopIteration, ValueError):  # (inf, nan, 1.)
                inner = re.findall(r"\[[^\[\]]*\]", text[1:])
                return tuple(tuple(_numbers(i)) for i in inner) if inner else tuple(_numbers(text))
            return tuple(map(tuple, value)) if value and type(value[0]) is list else tuple(value)
        if c == '"':
            return _string(text, pos)
        if text == "true" or text == "false":
            return text == "true"
        if text.startswith("tensor"):
            return self._line_tensor(text, pos)
        dtype = _DTYPES.get(text)
        if dtype is not None:
            return dtype
        try:
            return int(text)
        except ValueError:  # FLOAT
            return float(text)

    def _op(self, name, results, operands, attrs, types):
        result_names = _names(results) if results is not None else ()
        type_texts = _types(types) if types is not None else ()
        if len(result_names) != len(type_texts):
            raise _Error(name.start_pos,
                         f"{name} has {len(result_names)} result(s) but {len(type_texts)} result type(s)")
        if self.pending:  # (a stamp's ops first, where theirs is the next position)
            self._due()
        use, define = self._use, self._define
        args = tuple([use(n, operands) for n in _names(operands)]) if operands is not None else ()
        outs = tuple([define(n, parse_type(t), results) for n, t in zip(result_names, type_texts)])
        self.ops.append(Op(str(name), args, outs, attrs))

    def start(self, c):
        self._flush()
        attrs = c[1] if len(c) > 1 and type(c[1]) is AttrDict else _NO_ATTRS
        pieces = sorted(self.pieces, key=lambda p: p.ops[0])
        return Module(c[0][1:], Block(self.inputs, self.ops, self.outputs, pieces), attrs)

    def module_attrs(self, c):
        return c[0]

    # attributes
    def attr_dict(self, c):
        items = [(_attr_name(key), value) for key, value in c]
        return _attr_dict(items, lambda i: c[i][0].start_pos)

    def attr(self, c):
        return c  # [ATTR_KEY token, value]

    def int_(self, c):
        return int(c[0])

    def float_(self, c):
        return float(c[0])

    def string(self, c):
        return _string(c[0], c[0].start_pos)

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
        return _string(c[0], c[0].start_pos)

    def tensor_numbers(self, c):
        return _numbers(c[0])

    def tensor_ref(self, c):
        return self._tensor_ref(c[0], c[0].start_pos)

    def _tensor_ref(self, text: str, pos: int) -> Tensor:
        """A TENSOR_REF `text` found at offset `pos`."""
        m = _TENSOR_REF.match(text)
        key = _string(m.group("key"), pos + m.start("key"))
        return Tensor(parse_type(m.group("type")), key, loader=self.blobs.get(key))

    def tensor_data(self, numbers):
        return [n if isinstance(n, bool) else (float(n) if n.type == "FLOAT" else int(n)) for n in numbers]

    def tensor(self, c):
        type_token, body = c
        return self._tensor(type_token, type_token.start_pos, body)

    def _tensor(self, type_text: str, pos: int, body) -> Tensor:
        """tensor<type_text, body> (body: a key, or the elements), its type found at offset `pos`."""
        ttype = parse_type(type_text)
        if isinstance(body, str):
            return Tensor(ttype, body, loader=self.blobs.get(body))
        if len(body) != ttype.numel:
            raise _Error(pos, f"tensor<{ttype}> needs {ttype.numel} elements, got {len(body)}")
        dtype = ttype.dtype
        want = "true or false" if dtype is DType.bool else "an integer" if dtype.is_int else "a number"
        for x in body:
            ok = (isinstance(x, bool) if dtype is DType.bool else
                  isinstance(x, int) and not isinstance(x, bool) if dtype.is_int else not isinstance(x, bool))
            if not ok:
                shown = ("true" if x else "false") if isinstance(x, bool) else repr(x)
                raise _Error(pos, f"tensor<{ttype}>: element {shown} is not {want}")
        if dtype.is_int:
            info = dtype.iinfo
            for x in body:
                if not info.min <= x <= info.max:
                    raise _Error(pos, f"tensor<{ttype}>: element {x} is out of range for {dtype.value}")
        return Tensor.from_array(np.array(body, dtype=dtype.numpy).reshape(ttype.shape), dtype)

    def _line_tensor(self, text: str, pos: int) -> Tensor:
        """A tensor of an OP_LINE: by reference (TENSOR_REF's text) or with its numbers."""
        m = _LINE_TENSOR.match(text)
        body = m.group("body")
        if body.startswith('"'):
            return self._tensor_ref(text, pos)
        return self._tensor(m.group("type"), pos + m.start("type"), _numbers(body))


_ATTR_NAME = r"[a-z_][a-z0-9_]*"  # grammar.lark's ATTR_NAME


_OUTSIDE = TensorType((), DType.f32)  # a template operand's type while the template is read (a stamp's is its own)


def _ints(items) -> bool:
    return all(type(x) is int for x in items)


def _stamp_of(template: Template, n: int, attrs: AttrDict, at: int, shared: dict) -> Stamp:
    """The Stamp a stamp statement's attributes describe: with `ranks` alone, the template's own ops; `out` only
    where an op's is not its template op's. Its unit names and stream lists are the equal ones in `shared` (a
    program's pieces spell a million of them, a few hundred distinct)."""
    keys = set(attrs) - {"ranks"}
    if not keys:
        return template.identity()
    want = {"cycle", "values", "units", "streams"} | ({"chips"} if template.chips else set())
    if keys - {"out"} != want:
        raise _Error(at, f"stamp of template {n}: give {', '.join(sorted(want | {'ranks'}))} (or `ranks` alone, for "
                         f"the template's own ops); it has {', '.join(sorted(attrs))}")
    values, units, streams = attrs["values"], attrs["units"], attrs["streams"]
    names = values.split() if type(values) is str else ()
    units = tuple([None if u == "-" else shared.setdefault(u, u) for u in units.split()]) \
        if type(units) is str else None
    checks = ((type(attrs["cycle"]) is int, "`cycle` must be an integer (added to each op's)"),
              (not template.chips or (isinstance(attrs["chips"], tuple) and len(attrs["chips"]) == len(template.chips)
                                      and _ints(attrs["chips"])),
               f"`chips` must give the chip of each of its {len(template.chips)} chips"),
              (len(names) == len(template.values) and (not names or _STAMP_NAMES.fullmatch(values) is not None),
               f"`values` must name its {len(template.values)} values, separated by spaces"),
              (units is not None and tuple(map(operator.is_not, units, repeat(None))) == template.has_unit,
               f"`units` must name the unit of each of its {len(template.ops)} ops, separated by spaces (- for an "
               "op without)"),
              (isinstance(streams, tuple) and set(map(type, streams)) <= {tuple}
               and tuple(map(len, streams)) == template.stream_counts
               and set(map(type, chain.from_iterable(streams))) <= {int},
               f"`streams` must give the stream registers of each of its {len(template.ops)} ops"))
    out = attrs.get("out")
    if out is not None:
        checks += ((len(out) == len(template.ops) and all(isinstance(x, tuple) and bool(x) == ("out" in t.attrs)
                                                           for x, t in zip(out, template.ops)),
                    f"`out` must give the `out` of each of its {len(template.ops)} ops ([] for an op without)"),)
    for ok, message in checks:
        if not ok:
            raise _Error(at, f"stamp of template {n}: {message}")
    return Stamp(attrs["cycle"], attrs.get("chips", ()), tuple(names), units,
                 tuple([shared.setdefault(regs, regs) for regs in streams]), out)


_STAMP_KEY = re.compile(rf"\s*({_ATTR_NAME})\s*=\s*")
_STAMP_INT = re.compile(r"-?[0-9]+(?![0-9.eE])")
_STAMP_NEXT = re.compile(r"\s*(,|$)")


def _stamp_attrs(text: str, at: int) -> AttrDict:
    """The attributes of a STAMP_LINE (`text`, at offset `at`, is what is between its braces): integers, strings
    (names: no escapes) and lists of integers, however deep (json's scanner reads them)."""
    items, starts, pos = [], [], 0
    while text.strip():  # (else no attributes)
        m = _STAMP_KEY.match(text, pos)
        if m is None:
            raise _Error(at + pos, "expected an attribute like 'ranks =' in a stamp")
        key, pos = m.group(1), m.end()
        if text.startswith("[", pos):
            try:
                value, end = _json_scan(text, pos)
            except (StopIteration, ValueError):
                raise _Error(at + pos, f"bad list for `{key}`") from None
            if _INT_LIST.fullmatch(text, pos, end) is None:  # (json reads nothing else from these characters)
                raise _Error(at + pos, f"`{key}`: a stamp's lists hold integers only")
            value = _tuples(value)
        elif text.startswith('"', pos):
            end = text.find('"', pos + 1) + 1
            if end == 0:
                raise _Error(at + pos, f"`{key}`: a string with no end")
            value = text[pos + 1:end - 1]
        elif (number := _STAMP_INT.match(text, pos)) is not None:
            value, end = int(number.group()), number.end()
        else:
            raise _Error(at + pos, f"`{key}` must be an integer, a string or a list of integers")
        items.append((key, value))
        starts.append(at + m.start(1))
        after = _STAMP_NEXT.match(text, end)
        if after is None:
            raise _Error(at + end, "expected ',' or '}' after an attribute of a stamp")
        if not after.group(1):  # (the end)
            break
        pos = after.end()
    return _attr_dict(items, starts.__getitem__)


_INT_LIST = re.compile(r"[\[\]\s,0-9-]*")  # a json list of these characters holds integers (and lists) only
_STAMP_NAMES = re.compile(rf"\s*{NAME_RE.pattern}(?:\s+{NAME_RE.pattern})*\s*")  # names separated by whitespace


def _tuples(x):
    """Lists as tuples, all the way down (json reads lists; a stamp's hold millions of numbers)."""
    if type(x) is not list:
        return x
    kinds = set(map(type, x))
    if list not in kinds:
        return tuple(x)
    if kinds == {list} and list not in set(map(type, chain.from_iterable(x))):  # lists of flat lists
        return tuple(map(tuple, x))
    return tuple([_tuples(e) for e in x])


@functools.lru_cache(maxsize=1024)
def _attr_name(key: str) -> str:
    """The name in an ATTR_KEY token (`axis =`)."""
    return re.match(_ATTR_NAME, key).group()


def _attr_dict(items: list[tuple[str, object]], where: Callable[[int], int]) -> AttrDict:
    """An AttrDict of (name, value) items; `where(i)` is the offset of item i, for errors."""
    attrs = dict(items)
    if len(attrs) != len(items):
        seen = set()
        for i, (name, _) in enumerate(items):
            if name in seen:
                raise _Error(where(i), f"attribute {name} is given twice")
            seen.add(name)
    return AttrDict.trusted(attrs)  # (the callbacks make attribute values only)


# --- the lexer ---------------------------------------------------------------

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


_token = getattr(Token, "_future_new", Token)  # Token(...) without its check for a deprecated keyword


# How deep attribute lists may nest. The parser is iterative, but the attribute checks, the
# printer and equality recurse into lists; the parser's stack grows by one state per level.
MAX_NESTING = 100
_MAX_STACK = MAX_NESTING + 12  # + the states outside the outermost list (at most 12: in an op's attributes)


class _FastLexer(Lexer):
    """lark's contextual lexer (each parser state lexes only the terminals it accepts),
    giving the same tokens at a third of the cost: one regex match per token, no
    tokens for whitespace and comments, no line counting (tokens carry their offset;
    `_where` finds the line and column of an error)."""

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
        stack, states, by_state = parser_state.state_stack, parser_state.parse_conf.states, self.by_state
        report = _progress[0]
        step = max(end // 8, 1 << 16) if report else end + 1
        next_report = pos + step
        while True:
            if pos >= next_report:  # (one comparison a token)
                report(pos, end)
                next_report = pos + step
            if len(stack) > _MAX_STACK:  # nested lists: bounded, so nothing built from them recurses too deep
                raise _Error(pos, f"lists nested too deep (more than {MAX_NESTING} levels)")
            state = stack[-1]
            scanner = by_state.get(state)
            if scanner is None:
                scanner = by_state[state] = self._scanner(states[state])
            m = scanner.regex.match(text, pos, end)
            if m is None:
                pos = self.skip.match(text, pos, end).end()
                if pos == end:
                    return
                self._fail(text, pos, end, scanner, parser_state)
            kind = m.lastgroup
            value = m.group(kind)
            pos = m.end()
            if kind in scanner.rename:
                kind = scanner.rename[kind].get(value, kind)
            yield _token(kind, value, pos - len(value))  # line and column: see _where

    def _fail(self, text, pos, end, scanner, parser_state):
        """Nothing this state accepts is at `pos`: name what is there, as lark does."""
        m = self.root.regex.match(text, pos, end)
        if m is not None:
            kind = m.lastgroup
            kind = self.root.rename.get(kind, {}).get(m.group(kind), kind)
            raise UnexpectedToken(Token(kind, m.group(kind), pos), set(scanner.names), state=parser_state)
        raise UnexpectedCharacters(text, pos, None, None, allowed=set(scanner.names), state=parser_state)


_GRAMMAR = Path(__file__).with_name("grammar.lark")
_builder = _Builder()
_parser = Lark(_GRAMMAR.read_text(), parser="lalr", lexer=_FastLexer, transformer=_builder,
               maybe_placeholders=False)
_lock = threading.Lock()


# --- splitting an OP_LINE token --------------------------------------------------
# They run only on text OP_LINE has matched (so they need not check it again), and are made of the
# grammar's own terminals, so what they take apart is what the rules would.

def _terminal(name: str) -> str:
    return next(t.pattern.to_regexp() for t in _parser.terminals if t.name == name)


_V, _TYPE = _terminal("VALUE"), _terminal("TYPE")
_LINE = re.compile(rf"(?P<RESULTS>{_V}(?: *, *{_V})* *=) *(?P<OP_NAME>{_terminal('OP_NAME')})"
                   rf"(?: *(?P<VALUES>{_V}(?: *, *{_V})*))? *(?:\{{(?P<attrs>.*)\}})?"
                   rf" *: *(?P<TYPES>{_TYPE}(?: *, *{_TYPE})*)$", re.S)
_STRING = _terminal("STRING")
# an attribute: its name, its value (a list, a string or a tensor as a whole; else up to the next comma)
_LINE_ATTR = re.compile(rf"({_ATTR_NAME}) *= *({_STRING}|tensor *< *{_TYPE} *, *(?:{_STRING}|\[[^\]]*\]) *>"
                        # (lists three deep: a stamp's `out`; what is no bracket taken as a run, never given back)
                        rf"|\[(?:[^\[\]]++|\[(?:[^\[\]]++|\[[^\]]*+\])*+\])*+\]|[^ ,]+)")
_json_scan = json.JSONDecoder().scan_once
_STAMP_LINE = re.compile(r"stamp +(-?[0-9]+) *\{(.*)\}$", re.S)
_LINE_TENSOR = re.compile(rf"tensor *< *(?P<type>{_TYPE}) *, *(?P<body>.*?) *>$", re.S)

_progress: list = [None]  # parse()'s `progress`, for the lexer (the parser is one, behind _lock)

def parse(text: str, filename: str = "<string>",
          blobs: Mapping[str, Callable[[], np.ndarray]] | None = None,
          progress: Callable[[int, int], None] | None = None) -> Module:
    """Parse IR text. `blobs` maps constant keys to loaders of their data; `progress`, when given, is called
    with (characters read, characters) every eighth of a large text."""
    with _lock, collector_paused():  # the parser makes no garbage cycles: no scans of the growing module
        _builder.reset(blobs or {})
        _progress[0] = progress
        try:
            return _parser.parse(text)
        except _Error as e:
            raise ParseError(f"{filename}:{_where(text, e.pos)}: {e.message}") from None
        except UnexpectedInput as e:
            raise ParseError(_describe(e, text, filename)) from None
        except (ValueError, TypeError) as e:  # e.g. a type rule of a frozen dataclass
            raise ParseError(f"{filename}: {e}") from None
        finally:
            _builder.reset({})  # drop the values of this text
            _progress[0] = None


def _describe(e: UnexpectedInput, text: str, filename: str) -> str:
    if isinstance(e, UnexpectedEOF) or (isinstance(e, UnexpectedToken) and e.token.type == "$END"):
        where, found = _where(text, len(text.rstrip())), "end of input"
    else:
        where = _where(text, e.pos_in_stream)
        found = repr(e.token.value) if isinstance(e, UnexpectedToken) else repr(text[e.pos_in_stream])
    expected = e.expected if isinstance(e, (UnexpectedToken, UnexpectedEOF)) else (e.allowed or set())
    names = sorted({_EXPECTED.get(t, t.lower()) for t in expected
                    if t not in ("OP_LINE", "STAMP_LINE")})  # (forms of RESULTS ... and of 'stamp' ...)
    if len(names) > 6:
        names = names[:6] + ["..."]
    return f"{filename}:{where}: unexpected {found}; expected {' or '.join(names) or 'something else'}"


def parse_file(path: str | Path, blobs=None) -> Module:
    from .files import read_bytes

    try:
        text = read_bytes(path, ParseError).decode()
    except UnicodeDecodeError as e:
        raise ParseError(f"{path}: not UTF-8 text ({e})") from None
    return parse(text, str(path), blobs)
