"""The verifier: one failing module per rule, and the exact message (which op,
which value). Op-local rules are written as IR text; rules the parser already
enforces for text (a value defined twice, a use before definition ...) are built
with the core classes directly, as a pass could."""

from __future__ import annotations

import pytest

from lpuc.ir import AttrDict, Block, DType, LpucError, Module, Op, TensorType, Value, VerifyError, parse
from lpuc.ir.verifier import check_op, verify

F23 = TensorType((2, 3), DType.f32)
X = Value("x", F23)


def text_module(*lines: str, inputs: str = "input %x : f32[2,3]", output: str = "%y") -> Module:
    body = "\n".join(f"  {line}" for line in (inputs, *lines, f'output "out" = {output}'))
    return parse(f"module @m {{\n{body}\n}}\n")


def module(ops, inputs=(X,), outputs=None) -> Module:
    ops = tuple(ops)
    if outputs is None:
        outputs = (("out", ops[-1].results[0]),)
    return Module("m", Block(inputs, ops, outputs))


def verify_error(m: Module) -> str:
    with pytest.raises(VerifyError) as e:
        verify(m)
    return str(e.value)


# --- op-local rules ---------------------------------------------------------------

OP_RULES = {
    "unknown op": (["%y = graph.frobnicate %x : f32[2,3]"],
                   "%y = graph.frobnicate: unknown op graph.frobnicate"),
    "too few operands": (["%y = graph.add %x : f32[2,3]"],
                         "%y = graph.add: takes 2 operands, got 1"),
    "too many operands": (["%y = graph.layer_norm %x, %x, %x, %x : f32[2,3]"],
                          "%y = graph.layer_norm: takes 2 to 3 operands, got 4"),
    "no operand of a variadic op": (["%y = graph.concat {axis = 0} : f32[2,3]"],
                                    "%y = graph.concat: takes 1 or more operands, got 0"),
    "unknown attribute": (["%y = graph.exp %x {base = 2} : f32[2,3]"],
                          "%y = graph.exp: unknown attribute 'base'"),
    "missing attribute": (["%y = graph.cast %x : f32[2,3]"],
                          "%y = graph.cast: missing attribute 'to'"),
    "attribute of the wrong kind": (['%y = graph.cast %x {to = "f16"} : f16[2,3]'],
                                    "%y = graph.cast: attribute 'to' must be dtype, got 'f16'"),
    "an int where a bool is wanted": (["%y = graph.reduce_sum %x {axes = [1], keepdims = 1} : f32[2,1]"],
                                      "%y = graph.reduce_sum: attribute 'keepdims' must be bool, got 1"),
    "an int where a float is wanted": (["%y = graph.rms_norm %x, %x {epsilon = 0} : f32[2,3]"],
                                       "%y = graph.rms_norm: attribute 'epsilon' must be float, got 0"),
    "type rule: no broadcast": (
        ["%b = graph.constant {value = tensor<f32[4], [1.0, 2.0, 3.0, 4.0]>} : f32[4]",
         "%y = graph.add %x, %b : f32[2,3]"],
        "%y = graph.add: shapes (2, 3) and (4,) do not broadcast (operands %x: f32[2,3], %b: f32[4])"),
    "type rule: dtypes differ": (
        ["%b = graph.cast %x {to = f16} : f16[2,3]", "%y = graph.mul %x, %b : f32[2,3]"],
        "%y = graph.mul: operands must share one dtype, got f32[2,3], f16[2,3] (operands %x: f32[2,3], %b: f16[2,3])"),
    "type rule: attribute out of range": (
        ["%y = graph.softmax %x {axis = 2} : f32[2,3]"],
        "%y = graph.softmax: axis 2 out of range for rank 2 (operands %x: f32[2,3])"),
    "type rule: indices larger than data": (
        ["%i = graph.constant {value = tensor<i64[3,1], [0, 1, 2]>} : i64[3,1]",
         "%y = graph.gather_elements %x, %i {axis = 1} : f32[3,1]"],
        "%y = graph.gather_elements: indices i64[3,1] exceed data f32[2,3] outside axis 1 "
        "(operands %x: f32[2,3], %i: i64[3,1])"),
    "wrong result type": (["%y = graph.transpose %x {perm = [1, 0]} : f32[2,3]"],
                          "%y = graph.transpose: result %y has type f32[2,3], expected f32[3,2]"),
    "wrong result dtype": (["%y = graph.less %x, %x : f32[2,3]"],
                           "%y = graph.less: result %y has type f32[2,3], expected bool[2,3]"),
    "too few results": (["%y = graph.split %x {axis = 1, sizes = [1, 2]} : f32[2,1]"],
                        "%y = graph.split: has 1 results, graph.split gives 2"),
    "too many results": (["%y, %z = graph.exp %x : f32[2,3], f32[2,3]"],
                         "%y = graph.exp: has 2 results, graph.exp gives 1"),
    "an install's window outside its weight": (
        ['%a = host.input %x {name = "x"} : f32[2,3]',
         "%y = mxm.install %a {size = [2, 3], start = [1, 0]} : f32[2,3]"],
        "%y = mxm.install: window start [1, 0] size [2, 3] is outside f32[2,3] (operands %a: f32[2,3])"),
    "an install's empty window": (
        ['%a = host.input %x {name = "x"} : f32[2,3]',
         "%y = mxm.install %a {size = [2, 0], start = [0, 0]} : f32[2,0]"],
        "%y = mxm.install: window start [0, 0] size [2, 0] is outside f32[2,3] (operands %a: f32[2,3])"),
    "an install's window without a size": (
        ['%a = host.input %x {name = "x"} : f32[2,3]', "%y = mxm.install %a {start = [0, 0]} : f32[2,3]"],
        "%y = mxm.install: a window needs both start and size (operands %a: f32[2,3])"),
    "an install's window of three axes": (
        ['%a = host.input %x {name = "x"} : f32[2,3]',
         "%y = mxm.install %a {size = [1, 1, 1], start = [0, 0, 0]} : f32[2,3]"],
        "%y = mxm.install: a window's start and size are [rows, columns]: [0, 0, 0], [1, 1, 1] "
        "(operands %a: f32[2,3])"),
    "an install's window of the wrong type": (
        ['%a = host.input %x {name = "x"} : f32[2,3]',
         "%y = mxm.install %a {size = [1, 2], start = [0, 1]} : f32[2,3]"],
        "%y = mxm.install: result %y has type f32[2,3], expected f32[1,2]"),
}


@pytest.mark.parametrize("rule", OP_RULES)
def test_op_rule(rule):
    lines, message = OP_RULES[rule]
    assert verify_error(text_module(*lines)) == message


def test_an_op_without_results_is_named_by_its_op_name():
    op = Op("graph.exp", (X,), ())
    with pytest.raises(VerifyError, match=r"^graph.exp: has 0 results, graph.exp gives 1$"):
        check_op(op)


# --- rules of the block -------------------------------------------------------------

def test_value_defined_twice_by_ops():
    y = Value("y", F23)
    ops = [Op("graph.exp", (X,), (y,)), Op("graph.neg", (X,), (y,))]
    assert verify_error(module(ops)) == "%y = graph.neg: value %y is defined twice"


def test_value_defined_twice_by_an_op_and_an_input():
    ops = [Op("graph.exp", (X,), (Value("x", F23),))]
    assert verify_error(module(ops)) == "%x = graph.exp: value %x is defined twice"


def test_input_defined_twice():
    m = module([Op("graph.exp", (X,), (Value("y", F23),))], inputs=(X, Value("x", F23)))
    assert verify_error(m) == "input %x: value %x is defined twice"


def test_use_before_definition():
    y, z = Value("y", F23), Value("z", F23)
    ops = [Op("graph.exp", (z,), (y,)), Op("graph.neg", (X,), (z,))]
    assert verify_error(module(ops)) == "%y = graph.exp: operand %z is used before its definition"


def test_undefined_operand():
    ops = [Op("graph.exp", (Value("ghost", F23),), (Value("y", F23),))]
    assert verify_error(module(ops)) == "%y = graph.exp: operand %ghost is not defined"


def test_an_op_using_its_own_result():
    y = Value("y", F23)
    assert verify_error(module([Op("graph.exp", (y,), (y,))])) == \
        "%y = graph.exp: operand %y is used before its definition"


def test_operand_type_differs_from_its_definition():
    stale = Value("x", TensorType((3,), DType.f32))
    ops = [Op("graph.exp", (stale,), (Value("y", TensorType((3,), DType.f32)),))]
    assert verify_error(module(ops)) == "%y = graph.exp: operand %x has type f32[3] but is defined as f32[2,3]"


def test_ops_sharing_one_attributes_object_are_each_checked():
    """A pass makes equal attributes one object (ir.attributes.shared): another op or other types with the same
    object are checked again."""
    attrs = AttrDict({"axes": (1,), "keepdims": True})
    f21 = TensorType((2, 1), DType.f32)
    y, z = Value("y", f21), Value("z", F23)
    assert verify_error(module([Op("graph.reduce_sum", (X,), (y,), attrs), Op("graph.reduce_sum", (X,), (z,), attrs)])
                        ) == "%z = graph.reduce_sum: result %z has type f32[2,3], expected f32[2,1]"
    assert verify_error(module([Op("graph.reduce_sum", (X,), (y,), attrs), Op("graph.exp", (X,), (z,), attrs)])
                        ) == "%z = graph.exp: unknown attribute 'axes'"


def test_output_of_an_undefined_value():
    ops = [Op("graph.exp", (X,), (Value("y", F23),))]
    m = module(ops, outputs=(("out", Value("nowhere", F23)),))
    assert verify_error(m) == "output 'out': value %nowhere is not defined"


def test_output_type_differs_from_the_definition():
    ops = [Op("graph.exp", (X,), (Value("y", F23),))]
    m = module(ops, outputs=(("out", Value("y", TensorType((6,), DType.f32))),))
    assert verify_error(m) == "output 'out': value %y has type f32[6] but is defined as f32[2,3]"


def test_duplicate_output_name():
    y = Value("y", F23)
    m = module([Op("graph.exp", (X,), (y,))], outputs=(("out", y), ("out", X)))
    assert verify_error(m) == "output 'out': named twice"


def test_the_first_broken_rule_is_reported():
    m = text_module("%y = graph.frobnicate %x : f32[2,3]", "%z = graph.cast %y : f32[2,3]", output="%z")
    assert verify_error(m).startswith("%y = graph.frobnicate")


# --- what passes -----------------------------------------------------------------------

def test_a_valid_module_is_returned_unchanged():
    m = text_module("%s, %t = graph.split %x {axis = 1, sizes = [1, 2]} : f32[2,1], f32[2,2]",
                    "%y = graph.concat %t, %s {axis = -1} : f32[2,3]")
    assert verify(m) is m


def test_defaults_need_not_be_spelled():
    m = text_module("%y = graph.reduce_max %x {axes = [0]} : f32[3]")  # keepdims defaults to true ...
    assert verify_error(m) == "%y = graph.reduce_max: result %y has type f32[3], expected f32[1,3]"
    verify(text_module("%y = graph.reduce_max %x {axes = [0]} : f32[1,3]"))


def test_outputs_may_name_inputs_and_share_values():
    m = Module("m", Block((X,), (), (("a", X), ("b", X))))
    assert verify(m) is m


def test_verify_error_is_a_user_error():
    assert issubclass(VerifyError, LpucError)


def test_attrs_are_checked_with_their_spec_kinds():
    op = Op("graph.slice", (X,), (Value("y", TensorType((1, 3), DType.f32)),),
            AttrDict({"starts": (0,), "ends": (1,), "axes": (0,), "steps": (1.0,)}))
    with pytest.raises(VerifyError, match=r"attribute 'steps' must be ints, got \(1\.0,\)"):
        check_op(op)


# --- rules of the machine ------------------------------------------------------------

MACHINE_RULES = {  # (IR lines, error on tsp-v1, error on the 160-lane narrow-160 or None: valid there)
    "a join of parts that are not whole vector columns": (
        ['%a = host.input %x {name = "x"} : f32[2,160]', "%y = mem.join %a, %a : f32[2,320]"],
        "%y = mem.join: all but the last part must be whole vector columns (320 lanes): f32[2,160]", None),
    "a column slice starting inside a vector column": (
        ['%a = host.input %x {name = "x"} : f32[2,480]',
         "%y = mem.column_slice %a {size = 320, start = 160} : f32[2,320]"],
        "%y = mem.column_slice: a column slice must start on a vector column (320 lanes): 160", None),
    "a column slice ending inside a vector column": (
        ['%a = host.input %x {name = "x"} : f32[2,480]',
         "%y = mem.column_slice %a {size = 100, start = 0} : f32[2,100]"],
        "%y = mem.column_slice: a column slice must end on a vector column (320 lanes) or the end",
        "%y = mem.column_slice: a column slice must end on a vector column (160 lanes) or the end"),
    "a weight tile larger than the MXM": (
        ['%a = host.input %x {name = "x"} : f32[200,300]', "%y = mxm.install %a : f32[200,300]"],
        None, "%y = mxm.install: a weight tile is at most 160 x 160: f32[200,300]"),
    "a window larger than the MXM": (
        ['%a = host.input %x {name = "x"} : f32[400,400]',
         "%y = mxm.install %a {size = [330, 320], start = [0, 0]} : f32[330,320]"],
        "%y = mxm.install: a weight tile is at most 320 x 320: f32[330,320]",
        "%y = mxm.install: a weight tile is at most 160 x 160: f32[330,320]"),
    "a window starting inside a vector column": (
        ['%a = host.input %x {name = "x"} : f32[100,480]',
         "%y = mxm.install %a {size = [100, 160], start = [0, 160]} : f32[100,160]"],
        "%y = mxm.install: a weight tile's window must start on a vector column (320 lanes): 160", None),
    "a window ending inside a vector column": (
        ['%a = host.input %x {name = "x"} : f32[100,480]',
         "%y = mxm.install %a {size = [100, 100], start = [0, 0]} : f32[100,100]"],
        "%y = mxm.install: a weight tile's window must end on a vector column (320 lanes) or the end",
        "%y = mxm.install: a weight tile's window must end on a vector column (160 lanes) or the end"),
}


@pytest.mark.parametrize("rule", sorted(MACHINE_RULES))
def test_machine_rule(rule):
    """Rules that depend on the vector width hold for the machine the verifier is given, and only then."""
    from pathlib import Path

    from lpuc.ir.machine import load_machine

    lines, on_tsp, on_narrow = MACHINE_RULES[rule]
    operand = lines[0].rsplit(": ", 1)[1]
    m = text_module(*lines, inputs=f"input %x : {operand}")
    verify(m)  # no machine, no machine rules
    for machine, error in ((load_machine("tsp-v1"), on_tsp),
                           (load_machine(Path(__file__).parent / "machines" / "narrow-160.toml"), on_narrow)):
        if error is None:
            verify(m, machine)
        else:
            with pytest.raises(VerifyError) as e:
                verify(m, machine)
            assert str(e.value).startswith(error), str(e.value)


# --- the fast ways hold the same rules ----------------------------------------------------

class _Int(int):
    pass


class _Tuple(tuple):
    pass


class _Float(float):
    pass


def test_fast_kinds_accept_only_what_their_kinds_accept():
    """Each fast acceptance says yes only where ATTR_KINDS says yes (else the slow way judges, as before), and
    yes to the common values (else it would not be fast)."""
    from lpuc.ir.registry import ATTR_KINDS
    from lpuc.ir.verifier import _FAST_KINDS

    samples = [0, 7, -1, True, False, _Int(3), 1.0, float("nan"), _Float(1.0), "a", "", None, DType.f32, (), (0,),
               (1, 2, 3), (True,),
               (1, 2.0), (1, "2"), _Tuple((1, 2)), (_Int(1),), ((0, 1, 2),), ((0, 1, 2), (3, 4, 5)),
               ((0, 1, -2),), ((-1, 0, 0),), ((0, 1),), ((0, 1, 2, 3),), ((0, 1, True),), ((0, 1.0, 2),),
               ([0, 1, 2],), (_Tuple((0, 1, 2)),), ((0, _Int(1), 2),), ((0, 1, 2), 3), [1, 2]]
    for kind, fast in _FAST_KINDS.items():
        for v in samples:
            assert not fast(v) or ATTR_KINDS[kind](v), (kind, v)
    common = {"int": [0, 7, -1], "str": ["vxm0", ""], "ints": [(), (0,), (1, 57, 58)],
              "extents": [(), ((0, 8102, 1),), ((16, 3840, 1), (18, 3712, 1))], "bool": [True, False],
              "float": [0.5, -0.0], "dtype": [DType.f32, DType.i8]}
    for kind, values in common.items():
        assert all(_FAST_KINDS[kind](v) for v in values), kind


SCHEDULED = {"chip": 0, "cycle": 1, "out": ((0, 0, 1),), "streams": (0, 1), "unit": "vxm0"}


def scheduled(*changes: dict) -> Module:
    """host.input, then a vxm.exp per change of SCHEDULED: the same op name, types and chip (one signature)."""
    a = Value("a", F23)
    ops = [Op("host.input", (X,), (a,), AttrDict({"name": "x"}))]
    ops += [Op("vxm.exp", (a,), (Value(f"y{k}", F23),), AttrDict({**SCHEDULED, **change}))
            for k, change in enumerate(changes)]
    return module(ops)


@pytest.mark.parametrize("key, value, kind", [
    ("out", ((0, 0, -1),), "extents"),  # a negative word count
    ("out", ((0, 0),), "extents"),
    ("out", ((0, 0, True),), "extents"),
    ("out", (0, 0, 1), "extents"),  # a triple, not a tuple of them
    ("cycle", True, "int"),  # a bool where an int is wanted
    ("cycle", 1.0, "int"),
    ("streams", (0, "1"), "ints"),  # a stream that is no int
    ("streams", (0, True), "ints"),
    ("streams", 0, "ints"),
    ("unit", 0, "str"),
])
def test_an_own_attribute_of_the_wrong_kind_is_caught_on_every_op(key, value, kind):
    """The first op of a signature gets all its rules checked; the next only its own attributes (OWN_ATTRS):
    both the fast way, both with the message of the slow way."""
    want = f"attribute {key!r} must be {kind}, got {value!r}"
    assert verify_error(scheduled({key: value})) == f"%y0 = vxm.exp: {want}"
    assert verify_error(scheduled({}, {key: value})) == f"%y1 = vxm.exp: {want}"
    assert verify_error(scheduled({}, {}, {"cycle": 2, key: value})) == f"%y2 = vxm.exp: {want}"


def test_what_only_the_slow_way_accepts_is_still_accepted():
    """Subclasses of int and tuple are of the kinds as before (the fast way leaves them to the slow way)."""
    m = scheduled({}, {"cycle": _Int(5), "streams": _Tuple((0, 1)), "out": _Tuple(((0, _Int(2), 1),))})
    assert verify(m) is m


WINDOWS = ['%a = host.input %x {name = "x"} : f32[100,640]',
           "%y = mxm.install %a {chip = 1, size = [100, 320], start = [0, 0]} : f32[100,320]",
           "%z = mxm.install %a {chip = 2, size = [100, 320], start = [0, 0]} : f32[100,320]"]


def test_rules_that_passed_are_remembered_by_the_values_they_read():
    """A window install on another chip reads the same start and size: it passes as the first did; another
    window, or a machine where it does not hold, is checked again and fails with its message."""
    from lpuc.ir.machine import load_machine

    tsp = load_machine("tsp-v1")
    verify(text_module(*WINDOWS, inputs="input %x : f32[100,640]", output="%z"), tsp)
    bad = [*WINDOWS, "%w = mxm.install %a {chip = 3, size = [100, 320], start = [0, 160]} : f32[100,320]"]
    m = text_module(*bad, inputs="input %x : f32[100,640]", output="%w")
    verify(m)  # (no machine: the window is inside the weight)
    with pytest.raises(VerifyError) as e:
        verify(m, tsp)
    assert str(e.value) == ("%w = mxm.install: a weight tile's window must start on a vector column (320 lanes): "
                            "160 (operands %a: f32[100,640])")
    bad = [*WINDOWS, "%w = mxm.install %a {chip = 3, size = [100, 320], start = [0, 0]} : f32[100,640]"]
    assert verify_error(text_module(*bad, inputs="input %x : f32[100,640]", output="%w")) == \
        "%w = mxm.install: result %w has type f32[100,640], expected f32[100,320]"
    bad = [*WINDOWS, "%w = mxm.install %a {chip = 3, size = [100, 320], start = [0, 400]} : f32[100,320]"]
    assert verify_error(text_module(*bad, inputs="input %x : f32[100,640]", output="%w")) == \
        "%w = mxm.install: window start [0, 400] size [100, 320] is outside f32[100,640] (operands %a: f32[100,640])"


def test_a_rule_reading_all_attributes_is_not_remembered():
    from lpuc.ir.verifier import _Reads

    reads = _Reads({"a": 1, "b": 2})
    assert reads.get("a") == 1 and "c" not in reads and reads["b"] == 2
    assert reads.read == {"a", "b", "c"}
    assert dict(reads) == {"a": 1, "b": 2} and reads.read is None
    for ask in (len, list, lambda r: r.items(), lambda r: r.values(), lambda r: r == {}):
        reads = _Reads({"a": 1})
        ask(reads)
        assert reads.read is None


def test_rules_remembered_tell_absent_from_default_and_other_values():
    """An attribute left to its default reads as the default; one absent without a default, or of another
    value, is checked again."""
    from lpuc.ir.machine import load_machine

    m = text_module("%a = graph.reduce_max %x {axes = [0], keepdims = true} : f32[1,3]",
                    "%y = graph.reduce_max %x {axes = [0]} : f32[1,3]")
    verify(m)
    m = text_module("%a = graph.reduce_max %x {axes = [0]} : f32[1,3]",
                    "%y = graph.reduce_max %x {axes = [0], keepdims = false} : f32[1,3]")
    assert verify_error(m) == "%y = graph.reduce_max: result %y has type f32[1,3], expected f32[3]"
    whole = [*WINDOWS, "%w = mxm.install %a {chip = 3} : f32[100,640]"]  # (no window: all of the weight)
    m = text_module(*whole, inputs="input %x : f32[100,640]", output="%w")
    verify(m)
    with pytest.raises(VerifyError) as e:
        verify(m, load_machine("tsp-v1"))
    assert str(e.value) == ("%w = mxm.install: a weight tile is at most 320 x 320: f32[100,640] "
                            "(operands %a: f32[100,640])")
