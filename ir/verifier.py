"""The verifier: the rules every module obeys, whatever pass produced it.

Each rule raises a VerifyError whose message names the op and the value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .attributes import compare_value
from .core import Module, Op
from .errors import VerifyError
from .registry import ATTR_KINDS, HOST, LINK, OPS, PLANE, SRAM, TypeRuleError
from .rewrite import rewrite_of

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

    checked = set()  # signatures of ops that passed the op-local rules: layers and tiles repeat them
    # ... and by the attributes object, when it has no OWN_ATTRS (a pass makes equal attributes one object:
    # ir.attributes.shared; the module keeps it alive meanwhile): id -> (op name, operand types, result types)
    passed_with: dict[int, set] = {}
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
    for j, op in enumerate(module.ops):
        for v in op.operands:
            if defined.get(v.name) is not v.type:  # (a value's uses share its type: the rest is the rare case)
                _check_operand(module, op, v, defined)
        if rewrite is not None:  # the op passed before, its operands defined by the same ops (in their places)
            was = since.ops[rewrite.order[j]]
            if op.attrs is not was.attrs:
                check_own_attrs(op, was, changed)
        else:
            types = (op.name, tuple([v.type for v in op.operands]), tuple([r.type for r in op.results]))
            passed = passed_with.get(id(op.attrs))
            if passed is None or types not in passed:
                shared = _shared_attrs(op.attrs)
                if (types, shared) not in checked:
                    check_op(op, machine, chips)
                    checked.add((types, shared))
                else:
                    check_own_attrs(op)
                if len(shared) == len(op.attrs):  # none of its own: other ops may have this object
                    passed_with.setdefault(id(op.attrs), set()).add(types)
            check_places(op, [place[v.name] for v in op.operands])
        for r in op.results:
            if r.name in defined:
                raise VerifyError(f"{op.label()}: value {r} is defined twice")
            defined[r.name] = r.type
        if rewrite is None:  # (of a rewrite, the places held before)
            for r in op.results:
                place[r.name] = OPS[op.name].result_place
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
# reads them, so an op whose other attributes, op name and types were checked before needs only these checked.
OWN_ATTRS = ("cycle", "out", "streams", "unit")


def _shared_attrs(attrs) -> tuple:
    """An op's attributes but its own (OWN_ATTRS), as they compare (ir.attributes.AttrDict)."""
    return tuple((k, compare_value(v)) for k, v in attrs.items() if k not in OWN_ATTRS)


def _check_operand(module: Module, op: Op, v, defined: dict) -> None:
    """An operand defined before, of the type it was defined with."""
    if v.name not in defined:
        if any(r.name == v.name for later in module.ops for r in later.results):
            raise VerifyError(f"{op.label()}: operand {v} is used before its definition")
        raise VerifyError(f"{op.label()}: operand {v} is not defined")
    if defined[v.name] != v.type:
        raise VerifyError(f"{op.label()}: operand {v} has type {v.type} but is defined as {defined[v.name]}")


def check_own_attrs(op: Op, was: Op | None = None, keys: tuple[str, ...] = OWN_ATTRS) -> None:
    """The op-local rules of an op's OWN_ATTRS (those among `keys`): each is an attribute of its op, of its kind
    (those `was`, the op it rewrites, had already: checked there)."""
    opdef, attrs = OPS[op.name], op.attrs
    for key in keys:
        value = attrs.get(key, _GONE)
        if value is not _GONE and (was is None or value is not was.attrs.get(key)):
            _check_attr(op, opdef, key, value, None)


_GONE = object()


def check_state(module: Module) -> None:
    """The rules of persistent state (docs/machine-ir.md, "State"): each state is declared once by name and
    read only by its one in-place write (so every reader sees it after this step's write), and a module writing
    state names the integer input holding the step's position (module attribute `position`)."""
    names: dict[str, str] = {}
    states: dict[str, str] = {}     # state value -> the op writing it
    for op in module.ops:
        opdef = OPS[op.name]
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
                raise VerifyError(f"{op.label()}: reads the state {v} itself; read its write's result")
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


def check_op(op: Op, machine: Machine | None = None, chips: int | None = None) -> None:
    """The op-local rules: known op, operand count, attributes, result types; with `machine`, the
    op's rules that depend on the machine description; with `chips`, that every chip the op names
    (its `chip`, a split's `parts`) is one of the module's."""
    where = op.label()
    opdef = OPS.get(op.name)
    if opdef is None:
        raise VerifyError(f"{where}: unknown op {op.name}")
    n, lo, hi = len(op.operands), opdef.min_operands, opdef.max_operands
    if n < lo or (hi is not None and n > hi):
        want = f"{lo}" if lo == hi else f"{lo} or more" if hi is None else f"{lo} to {hi}"
        raise VerifyError(f"{where}: takes {want} operands, got {n}")
    for key, value in op.attrs.items():
        _check_attr(op, opdef, key, value, chips)
    for key, spec in opdef.attrs.items():
        if spec.required and key not in op.attrs:
            raise VerifyError(f"{where}: missing attribute {key!r}")
    try:
        operand_types = tuple(v.type for v in op.operands)
        attrs = opdef.attrs_with_defaults(op.attrs)  # once, for the type rule and the machine rule
        expected = opdef.result_types(operand_types, attrs, defaults_filled=True)
        if machine is not None and opdef.machine_rule is not None:
            opdef.machine_rule(operand_types, attrs, machine)
    except TypeRuleError as e:
        raise VerifyError(f"{where}: {e} (operands {', '.join(f'{v}: {v.type}' for v in op.operands)})") from None
    if len(expected) != len(op.results):
        raise VerifyError(f"{where}: has {len(op.results)} results, {op.name} gives {len(expected)}")
    for r, t in zip(op.results, expected):
        if r.type != t:
            raise VerifyError(f"{where}: result {r} has type {r.type}, expected {t}")


def _check_attr(op: Op, opdef, key: str, value, chips: int | None) -> None:
    spec = opdef.attrs.get(key)
    if spec is None:
        raise VerifyError(f"{op.label()}: unknown attribute {key!r}")
    if not ATTR_KINDS[spec.kind](value):
        raise VerifyError(f"{op.label()}: attribute {key!r} must be {spec.kind}, got {value!r}")
    if chips is not None and spec.kind in ("chip", "chips") \
            and any(c >= chips for c in (value if spec.kind == "chips" else (value,))):
        raise VerifyError(f"{op.label()}: {key} = {list(value) if spec.kind == 'chips' else value} names a chip "
                          f"outside the module's {chips} (module attribute chips)")
