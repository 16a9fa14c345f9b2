"""The verifier: the rules every module obeys, whatever pass produced it.

Each rule raises a VerifyError whose message names the op and the value.

A scheduled program has millions of ops, each checked: its attributes of the common kinds are accepted by
exact-type tests (_FAST_KINDS; the rest judged, and errors worded, by the registry's ATTR_KINDS), and its
type and machine rules are remembered by the attribute values they read (_run_rules).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import chain, repeat
from typing import TYPE_CHECKING

from .attributes import compare_value
from .core import Module, Op
from .errors import VerifyError
from .machine_ops import SCHEDULE_ATTRS
from .pieces import STAMPED, stamped_from, template_ops
from .registry import ATTR_KINDS, HOST, LINK, OPS, PLANE, SRAM, TypeRuleError
from .rewrite import rewrite_of
from .types import DType

PLACE_NAMES = {SRAM: "in SRAM", HOST: "on the host (a model input)",
               PLANE: "on an MXM plane (an mxm.install result)", LINK: "a transfer in flight (a c2c.send result)"}

if TYPE_CHECKING:
    from .machine import Machine


def verify(module: Module, machine: Machine | None = None, since: Module | None = None) -> Module:
    """Check `module`; return it unchanged, or raise VerifyError on the first broken rule. Given the
    `machine` it targets, also the rules that depend on it (e.g. a view's vector-column alignment).
    `since`: a module this verifier passed (with the same machine) that `module` may rewrite, as allocation
    and scheduling do (ir.rewrite: the same ops, in any order, only their OWN_ATTRS changed): then the
    order and the attributes changed are checked, the rules that held of the ops in `since` are not."""
    defined: dict[str, object] = {}  # each value's type, by its name
    place: dict[str, str | None] = {}  # where each value lives, by its definition (graph ops: None)

    def define(value, where: Callable[[], str]):  # (the label only for the error: ops are many)
        if value.name in defined:
            raise VerifyError(f"{where()}: value {value} is defined twice")
        defined[value.name] = value.type

    known: dict[str, _Known] = {}  # what check_op learns of each op's definition and rules (see _Known)
    rewrite = rewrite_of(since, module) if since is not None and since.attrs == module.attrs else None
    if rewrite is not None and not rewrite.changed <= set(OWN_ATTRS):
        rewrite = None
    changed = tuple(k for k in OWN_ATTRS if rewrite is not None and k in rewrite.changed)  # (in OWN_ATTRS order)
    chips = module.attrs.get("chips", 1)
    if not ATTR_KINDS["int"](chips) or chips < 1:
        raise VerifyError(f"module attribute chips = {chips!r}: must be a positive int")
    for v in module.inputs:
        define(v, lambda: f"input {v}")
        place[v.name] = HOST
    places_passed = set()  # (op name, its operands' places) that passed check_places
    # a template's ops first (ir.pieces): then each stamp of one needs only what it has of its own
    stamped = stamped_from(module.pieces, len(module.ops))
    templates = set(chain.from_iterable(template_ops(module.pieces).values()))
    if rewrite is None:
        for i in templates:
            check_op(module.ops[i], machine, chips, known)
        stamps_in_order = _stamps_in_order(module, known)
    for j, op in enumerate(module.ops):
        operands = op.operands
        outside = stamps_in_order[j] if rewrite is None else None
        if outside is not None:  # a stamp's op in order: its own piece's values are its template op's renamed
            if outside:
                for k in outside:
                    v = operands[k]
                    if defined.get(v.name) is not v.type:
                        _check_operand(module, op, v, defined)
                key = (op.name, tuple([place[v.name] if k in outside else None for k, v in enumerate(operands)]))
                if key not in places_passed:
                    check_places(op, key[1])
                    places_passed.add(key)
        else:
            for v in operands:
                if defined.get(v.name) is not v.type:  # (a value's uses share its type: the rest is the rare case)
                    _check_operand(module, op, v, defined)
            if rewrite is not None:  # the op passed before, its operands defined by the same ops (in their places)
                was = since.ops[rewrite.order[j]]
                if op.attrs is not was.attrs:
                    check_own_attrs(op, was, changed)
            else:
                template = stamped[j]
                if template is not None:
                    _check_stamped(op, module.ops[template], machine, known)
                elif j not in templates:
                    check_op(op, machine, chips, known)
                key = (op.name, tuple([place[v.name] for v in operands]))
                if key not in places_passed:
                    check_places(op, key[1])
                    places_passed.add(key)
        result_place = OPS[op.name].result_place if rewrite is None else None  # (of a rewrite, the places held)
        for r in op.results:
            if r.name in defined:
                raise VerifyError(f"{op.label()}: value {r} is defined twice")
            defined[r.name] = r.type
            if rewrite is None:
                place[r.name] = result_place
    names = set()
    for name, v in module.outputs:
        if name in names:
            raise VerifyError(f"output {name!r}: named twice")
        names.add(name)
        if v.name not in defined:
            raise VerifyError(f"output {name!r}: value {v} is not defined")
        if defined[v.name] != v.type:
            raise VerifyError(f"output {name!r}: value {v} has type {v.type} but is defined as {defined[v.name]}")
    check_state(module)
    return module


# The attributes allocation and scheduling give each instruction its own values of: no type or machine rule
# reads them, so of a rewrite changing only these (verify's `since`) only these are checked.
OWN_ATTRS = ("cycle", "out", "streams", "unit")


def _stamps_in_order(module: Module, known: dict[str, _Known]) -> list[tuple[int, ...] | None]:
    """Per op of a piece (not its template's) that _check_stamped would pass, the positions of its operands from
    outside its piece (the rest are its piece's own values, as its stamp says); None for every other op. Found
    for a whole piece at once, from its Stamp: its STAMPED are of their kinds, and its operands from outside have
    the types of its template op's (the template's ops passed check_op: `known`). A piece found otherwise is
    checked op by op, which names what is wrong and where."""
    all_ops = module.ops
    outside: list[tuple[int, ...] | None] = [None] * len(all_ops)
    first = template_ops(module.pieces)
    templates: dict[int, tuple | None] = {}  # a template -> _from_outside of its ops, the types of those operands,
                                             # and its ops' `out` (None: not plainly stamped)
    for piece in module.pieces:
        template = first[piece.template]
        if template is piece.ops:
            continue
        if piece.template not in templates:
            tops = [all_ops[i] for i in template]
            per_op, pairs = _from_outside(tops)
            templates[piece.template] = (per_op, pairs, [tops[j].operands[k].type for j, k in pairs],
                                         [op.attrs.get("out") for op in tops]) \
                if all(map(_plainly_stamped, {op.name for op in tops}, repeat(known))) else None
        if templates[piece.template] is None:
            continue
        per_op, pairs, template_types, template_outs = templates[piece.template]
        stamp = piece.stamp
        if [all_ops[piece.ops[j]].operands[k].type for j, k in pairs] != template_types:  # (equal types: mostly one)
            continue
        moved = [x for x, t in zip(stamp.out, template_outs) if x and x is not t] if stamp.out is not None else []
        if type(stamp.cycle) is int and set(map(type, stamp.chips)) <= _INT and set(map(type, stamp.units)) <= _STR \
                and set(map(type, stamp.streams)) <= _TUPLE \
                and set(map(type, chain.from_iterable(stamp.streams))) <= _INT and all(map(_fast_extents, moved)):
            for i, ks in zip(piece.ops, per_op):
                outside[i] = ks
    return outside


def _from_outside(ops: list[Op]) -> tuple[list[tuple[int, ...]], list[tuple[int, int]]]:
    """Per op of a piece, the positions of its operands that no op before it in the piece makes; and those as
    (op, position) pairs."""
    made: set[str] = set()
    per_op = []
    for op in ops:
        per_op.append(tuple(k for k, v in enumerate(op.operands) if v.name not in made))
        made.update(r.name for r in op.results)
    return per_op, [(j, k) for j, ks in enumerate(per_op) for k in ks]


_INT, _STR, _TUPLE = {int, type(None)}, {str, type(None)}, {tuple, type(None)}  # (None: an op without the attribute)


def _plainly_stamped(name: str, known: dict[str, _Known]) -> bool:
    """Whether the STAMPED of op `name` are the schedule's, of their usual kinds, and read by no rule."""
    opdef = OPS[name]
    return not known[name].reads_stamped and all(opdef.attrs.get(k) == SCHEDULE_ATTRS[k] for k in STAMPED)


def _check_stamped(op: Op, template: Op, machine: Machine | None, known: dict[str, _Known]) -> None:
    """An op stamped from `template`, which passed check_op: the same op (ir.pieces) but for its value names and
    STAMPED. Its operands must have the template's types (then its rules give what they gave there, unless
    they read what the stamp changed) and its STAMPED be of their kinds."""
    of = known[op.name]
    for v, t in zip(op.operands, template.operands):
        if v.type is not t.type and v.type != t.type:
            raise VerifyError(f"{op.label()}: operand {v} has type {v.type}, but in the template it stamps "
                              f"({template.label()}) it has {t.type}")
    check_own_attrs(op, template, STAMPED)
    if of.reads_stamped:  # (no rule of the registry does: see _run_rules)
        check_op(op, machine, None, {op.name: of})


def _compare(v):
    """compare_value(v), the common cases first: a value of a _PLAIN type, a tuple of ints (as it)."""
    t = type(v)
    if t in _PLAIN or (t is tuple and _fast_ints(v)):
        return t, v
    return compare_value(v)


_PLAIN = frozenset((int, str, bool, DType))  # (compare_value gives (type, value) of these, neither tuple nor float)


def _check_operand(module: Module, op: Op, v, defined: dict) -> None:
    """An operand defined before, of the type it was defined with."""
    if v.name not in defined:
        if any(r.name == v.name for later in module.ops for r in later.results):
            raise VerifyError(f"{op.label()}: operand {v} is used before its definition")
        raise VerifyError(f"{op.label()}: operand {v} is not defined")
    if defined[v.name] != v.type:
        raise VerifyError(f"{op.label()}: operand {v} has type {v.type} but is defined as {defined[v.name]}")


def check_own_attrs(op: Op, was: Op | None = None, keys: tuple[str, ...] = OWN_ATTRS) -> None:
    """The op-local rules of the attributes `keys` (OWN_ATTRS; a stamp's, STAMPED): each is an attribute of
    its op, of its kind (those `was`, the op it rewrites or stamps, had already: checked there)."""
    mine, theirs = op.attrs.as_dict(), was.attrs.as_dict() if was is not None else {}
    for key in keys:
        value = mine.get(key, _GONE)
        if value is not _GONE and value is not theirs.get(key, _GONE):
            fast = _fast_checks.get((op.name, key))
            if fast is None:  # (once per op name and key)
                spec = OPS[op.name].attrs.get(key)
                fast = _fast_checks[op.name, key] = _FAST_KINDS.get(spec.kind, _judge) if spec else _judge
            if not fast(value):
                _check_attr(op, OPS[op.name], key, value, None)


_GONE = object()
_fast_checks: dict[tuple[str, str], Callable[[object], bool]] = {}  # (op name, key) -> its kind's fast check


def _judge(value) -> bool:  # (a kind without a fast check: _check_attr judges the value)
    return False


def check_state(module: Module) -> None:
    """The rules of persistent state (docs/machine-ir.md, "State"): each state is declared once by name and
    written once, in place; what reads the state itself comes before its write in program order (and sees it as
    the step found it), what comes after reads the write's result; and a module writing state names the integer
    input holding the step's position (module attribute `position`)."""
    names: dict[str, str] = {}
    states: dict[str, str] = {}     # state value -> the op writing it
    for op in module.ops:
        opdef = OPS[op.name]
        if not (states or opdef.persistent or opdef.in_place):  # (no state yet: none of the rules below applies)
            continue
        if opdef.persistent:
            name = op.attrs["name"]
            if name in names:
                raise VerifyError(f"{op.label()}: state {name!r} is declared twice (also by {names[name]})")
            names[name] = op.label()
            states[op.result.name] = ""
        for k, v in enumerate(op.operands):
            if v.name not in states:
                if opdef.in_place and k == 0:
                    raise VerifyError(f"{op.label()}: writes {v}, which is no state (declare it with a state op)")
                continue
            if not (opdef.in_place and k == 0):
                if states[v.name]:
                    raise VerifyError(f"{op.label()}: reads the state {v} itself after its write "
                                      f"({states[v.name]}); read the write's result")
                continue
            if states[v.name]:
                raise VerifyError(f"{op.label()}: writes the state {v} a second time (already by "
                                  f"{states[v.name]}): one write per state per step")
            states[v.name] = op.label()
    position = module.attrs.get("position")
    if any(states.values()) and position is None:
        raise VerifyError(f"module @{module.name} writes state but has no attribute position (the input holding "
                          "the step's position)")
    if position is not None:
        kinds = {v.name: v.type for v in module.inputs}
        if not isinstance(position, str) or position not in kinds or not kinds[position].dtype.is_int:
            raise VerifyError(f"module attribute position = {position!r}: must name an integer input")


def check_places(op: Op, operand_places) -> None:
    """Each operand of a machine op lives where the op's definition says (e.g. a matmul's weight on an MXM
    plane, so it comes from an install; a receive's operand in flight, so it comes from a send)."""
    opdef = OPS[op.name]
    for k, (v, got) in enumerate(zip(op.operands, operand_places)):
        want = opdef.operand_place(k)
        if want is not None and got is not None and want != got:
            raise VerifyError(f"{op.label()}: operand {v} must be {PLACE_NAMES[want]}, but it is {PLACE_NAMES[got]}")


def check_op(op: Op, machine: Machine | None = None, chips: int | None = None,
             known: dict[str, _Known] | None = None) -> None:
    """The op-local rules: known op, operand count, attributes, result types; with `machine`, the
    op's rules that depend on the machine description; with `chips`, that every chip the op names
    (its `chip`, a split's `parts`) is one of the module's. `known`: what checking other ops with this
    machine learnt, by op name (_Known), for checking many ops."""
    of = known.get(op.name) if known is not None else None
    if of is None:
        opdef = OPS.get(op.name)
        if opdef is None:
            raise VerifyError(f"{op.label()}: unknown op {op.name}")
        of = _Known(opdef)
        if known is not None:
            known[op.name] = of
    opdef = of.opdef
    n, lo, hi = len(op.operands), opdef.min_operands, opdef.max_operands
    if n < lo or (hi is not None and n > hi):
        want = f"{lo}" if lo == hi else f"{lo} or more" if hi is None else f"{lo} to {hi}"
        raise VerifyError(f"{op.label()}: takes {want} operands, got {n}")
    attrs = op.attrs
    for key, value in attrs.items():
        _check_attr(op, opdef, key, value, chips)
    for key in of.required:
        if key not in attrs:
            raise VerifyError(f"{op.label()}: missing attribute {key!r}")
    try:
        expected = _run_rules(of, op, machine)
    except TypeRuleError as e:
        raise VerifyError(f"{op.label()}: {e} (operands {', '.join(f'{v}: {v.type}' for v in op.operands)})") \
            from None
    if len(expected) != len(op.results):
        raise VerifyError(f"{op.label()}: has {len(op.results)} results, {op.name} gives {len(expected)}")
    for r, t in zip(op.results, expected):
        if r.type != t:
            raise VerifyError(f"{op.label()}: result {r} has type {r.type}, expected {t}")


class _Known:
    """Of an op's definition: the required attributes, in order; the defaults its rules see (OpDef.attrs_with_defaults); and its type and machine
    rules that passed, with one machine (see _run_rules). (The registry does not change during a verify.)"""

    __slots__ = ("opdef", "required", "defaults", "rules", "reads_stamped")

    def __init__(self, opdef):
        self.opdef = opdef
        self.required = tuple(k for k, s in opdef.attrs.items() if s.required)
        self.defaults = opdef.attrs_with_defaults({})
        self.rules: dict[tuple, list] = {}
        self.reads_stamped = False  # a rule read one of STAMPED: each stamped op is checked whole


def _run_rules(known: _Known, op: Op, machine: Machine | None) -> tuple:
    """The result types the type rule of `op` gives, after its machine rule (given `machine`) passed; either
    raises TypeRuleError. The rules see the op's attributes with the defaults filled.
    known.rules: by operand types, the attributes the rules read when they passed, each with a table: the
    values they read (as they compare; absent: _GONE) -> the result types. A rule gives the same for the same
    values of what it reads, so an op giving those keys those values passes and gets those results. (A window
    `mxm.install` reads its start and size, not its chip: the tiles of a model on a hundred chips repeat.
    Most machine ops read nothing but their types.)"""
    attrs, defaults = op.attrs, known.defaults
    # (the operand types, a type as its shape and dtype's value: equal as the types are, and hashed without
    # TensorType's and DType's __hash__, Python's: slow for millions of ops)
    by = tuple([(v.type.shape, v.type.dtype._value_) for v in op.operands])
    seen = known.rules.get(by)
    for keys, passed in seen or ():
        expected = passed.get(tuple([_compare(attrs.get(k, defaults.get(k, _GONE))) for k in keys]))
        if expected is not None:
            return expected
    opdef, operand_types = known.opdef, tuple([v.type for v in op.operands])
    full = opdef.attrs_with_defaults(attrs)
    reads = _Reads(full)  # (once, for the type rule and the machine rule)
    expected = opdef.result_types(operand_types, reads, defaults_filled=True)
    if machine is not None and opdef.machine_rule is not None:
        opdef.machine_rule(operand_types, reads, machine)
    if reads.read is None or not reads.read.isdisjoint(STAMPED):
        known.reads_stamped = True
    if reads.read is not None:  # (not when a rule went through all of them)
        keys = tuple(sorted(reads.read))
        seen = known.rules.setdefault(by, [])
        passed = next((p for k, p in seen if k == keys), None)
        if passed is None:
            passed = {}
            seen.append((keys, passed))
        passed[tuple([_compare(full.get(k, _GONE)) for k in keys])] = expected
    return expected


class _Reads(Mapping):
    """A rule's view of an op's attributes, noting which it reads (present or not): `read`, None once the rule
    asks for all of them (iterates, counts, compares)."""

    __slots__ = ("_attrs", "read")

    def __init__(self, attrs: dict):
        self._attrs, self.read = attrs, set()

    def _note(self, key):
        if self.read is not None:
            self.read.add(key)

    def __getitem__(self, key):
        self._note(key)
        return self._attrs[key]

    def get(self, key, default=None):
        self._note(key)
        return self._attrs.get(key, default)

    def __contains__(self, key) -> bool:
        self._note(key)
        return key in self._attrs

    def _all(self):
        self.read = None
        return self._attrs

    def __iter__(self):
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def keys(self):
        return self._all().keys()

    def items(self):
        return self._all().items()

    def values(self):
        return self._all().values()

    def __eq__(self, other):
        return self._all() == other

    __hash__ = None


# Fast acceptance of the common attribute kinds (a scheduled program has millions of cycles, extents and
# streams): each says yes only of values ATTR_KINDS[kind] accepts, and says no to the rest (e.g. a bool, a
# subclass of int or tuple) for _check_attr to judge (and word the error) as before. Not "chip" / "chips":
# those are checked against the module's chip count too.
def _fast_int(v) -> bool:
    return type(v) is int


def _fast_str(v) -> bool:
    return type(v) is str


def _fast_ints(v) -> bool:
    if type(v) is not tuple:
        return False
    for x in v:
        if type(x) is not int:
            return False
    return True


def _fast_extents(v) -> bool:
    if type(v) is not tuple:
        return False
    for e in v:
        if type(e) is not tuple or len(e) != 3:
            return False
        a, b, c = e
        if type(a) is not int or type(b) is not int or type(c) is not int or a < 0 or b < 0 or c < 0:
            return False
    return True


_FAST_KINDS: dict[str, Callable[[object], bool]] = {
    "int": _fast_int, "str": _fast_str, "ints": _fast_ints, "extents": _fast_extents,
    "bool": lambda v: type(v) is bool, "float": lambda v: type(v) is float, "dtype": lambda v: type(v) is DType}


def _check_attr(op: Op, opdef, key: str, value, chips: int | None) -> None:
    spec = opdef.attrs.get(key)
    if spec is None:
        raise VerifyError(f"{op.label()}: unknown attribute {key!r}")
    fast = _FAST_KINDS.get(spec.kind)
    if fast is not None and fast(value):  # (else ATTR_KINDS judges it, and words the error)
        return
    if not ATTR_KINDS[spec.kind](value):
        raise VerifyError(f"{op.label()}: attribute {key!r} must be {spec.kind}, got {value!r}")
    if chips is not None and spec.kind in ("chip", "chips") \
            and any(c >= chips for c in (value if spec.kind == "chips" else (value,))):
        raise VerifyError(f"{op.label()}: {key} = {list(value) if spec.kind == 'chips' else value} names a chip "
                          f"outside the module's {chips} (module attribute chips)")
