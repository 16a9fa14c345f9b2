"""ONNX backend node tests, run through lpuc's frontend and reference evaluator.

`onnx.backend.test.BackendTest` drives a `Backend` whose `prepare` imports the
model with `compiler.frontend.import_onnx` and whose rep's `run` evaluates the
module with `ir.evaluator.evaluate`. We include the node tests of the ops in
`OPS` (CPU device only; lpuc's evaluator has no CUDA). Two adaptations, both
what a user of a static compiler does: inputs that feed shape-like operands
(Reshape's shape, TopK's k, ...) are frozen to constants from the test data
before compiling (`SHAPE_OPERANDS`), and a model whose opset the frontend does
not accept goes through ONNX's version converter first (`lift_opset`).
Cases expected to fail are in `XFAIL` / `XFAIL_OPSET` (strict, each with its
reason); cases not run at all would be in `EXCLUDE` (with reasons; none now).
At the end of the run a table of pass / fail / xfail / excluded per op is
printed to the terminal.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnx.backend.base
import onnx.backend.test
import pytest

import onnx.version_converter
from lpuc.compiler.frontend import import_onnx, onnx_import
from lpuc.ir import DType
from lpuc.ir.evaluator import cast, evaluate

# op -> regex on a case's name (the device suffix `_cpu` stripped). Each case
# belongs to at most one op; NEIGHBOURS below removes the cases of other ops
# whose names start alike.
OPS = {
    "MatMul": r"^test_matmul_",
    "Gemm": r"^test_gemm_",
    "Add": r"^test_add(_|$)",
    "Sub": r"^test_sub(_|$)",
    "Mul": r"^test_mul(_|$)",
    "Div": r"^test_div(_|$)",
    "Pow": r"^test_pow(_|$)",
    "Sqrt": r"^test_sqrt(_|$)",
    "Reciprocal": r"^test_reciprocal(_|$)",
    "Neg": r"^test_neg(_|$)",
    "Exp": r"^test_exp(_|$)",
    "Log": r"^test_log(_|$)",
    "Tanh": r"^test_tanh(_|$)",
    "Sigmoid": r"^test_sigmoid(_|$)",
    "Erf": r"^test_erf(_|$)",
    "Gelu": r"^test_gelu_",
    "Softmax": r"^test_softmax_",
    "LayerNormalization": r"^test_layer_normalization_",
    "RMSNormalization": r"^test_rms_normalization_",
    "ReduceMean": r"^test_reduce_mean_",
    "ReduceSum": r"^test_reduce_sum_",
    "ReduceMax": r"^test_reduce_max_",
    "Reshape": r"^test_reshape_",
    "Transpose": r"^test_transpose_",
    "Flatten": r"^test_flatten_",
    "Squeeze": r"^test_squeeze(_|$)",
    "Unsqueeze": r"^test_unsqueeze_",
    "Expand": r"^test_expand_",
    "Tile": r"^test_tile(_|$)",
    "Concat": r"^test_concat_",
    "Split": r"^test_split_",
    "Slice": r"^test_slice(_|$)",
    "Gather": r"^test_gather_",
    "GatherElements": r"^test_gather_elements_",
    "GatherND": r"^test_gathernd_",
    "Where": r"^test_where_",
    "Equal": r"^test_equal(_|$)",
    "Less": r"^test_less(_|$)",
    "LessOrEqual": r"^test_less_equal(_|$)",
    "Greater": r"^test_greater(_|$)",
    "GreaterOrEqual": r"^test_greater_equal(_|$)",
    "And": r"^test_and(\d|_)",
    "Or": r"^test_or(\d|_)",
    "Not": r"^test_not_",
    "IsNaN": r"^test_isnan(_|$)",
    "Cast": r"^test_cast_",
    "CastLike": r"^test_castlike_",
    "Constant": r"^test_constant(_|$)",
    "ConstantOfShape": r"^test_constantofshape_",
    "Shape": r"^test_shape(_|$)",
    "Range": r"^test_range_",
    "Identity": r"^test_identity(_|$)",
    "Trilu": r"^test_tri[lu](_|$)",
    "TopK": r"^test_top_k(_|$)",
    "CumSum": r"^test_cumsum_",
    "Cos": r"^test_cos(_|$)",
    "Sin": r"^test_sin(_|$)",
    "Attention": r"^test_attention_",
    "RotaryEmbedding": r"^test_rotary_embedding(_|$)",
}

# Cases an op's pattern would catch that test another op: counted for that op
# when it is in OPS, else not collected.
OTHER_OPS = {
    r"^test_reduce_sum_square_": "ReduceSumSquare",
    r"^test_split_to_sequence_": "SplitToSequence",
    r"^test_gather_elements_": "GatherElements",
    r"^test_less_equal": "LessOrEqual",
    r"^test_greater_equal": "GreaterOrEqual",
    r"^test_constant_pad": "Pad",
}

# Cases we do not run, with the reason (shown as skips and in the table).
EXCLUDE: dict[str, str] = {}

# Cases expected to fail (strict: an unexpected pass fails the run), with the reason.
# First those whose (element) type lpuc does not have, then the rest.
XFAIL_TYPES = {
    r"^test_equal_string": "string dtype: lpuc has no string tensors",
    r"^test_identity_opt$": "optional type: lpuc has tensors only",
    r"^test_identity_sequence$": "sequence type: lpuc has tensors only",
}
XFAIL = {
    **XFAIL_TYPES,
    r"^test_range_.*_expanded$": "the expanded body is a Loop (control flow), which static scheduling rejects",
}


def ml_dtypes_differs(values, dtype: DType) -> bool:
    """Whether the installed ml_dtypes casts f32 `values` to `dtype` otherwise than lpuc does."""
    x = np.asarray(values, np.float32)
    with np.errstate(invalid="ignore"):
        theirs = x.astype(dtype.numpy)
    return theirs.tobytes() != np.asarray(cast(x, dtype)).tobytes()


# The case generators compute these casts' expected outputs with the installed ml_dtypes, which
# changes between versions where ONNX leaves the result undefined (floats out of an integer type's
# range: lpuc wraps, ir.evaluator.cast) and departs from ONNX's float4 note (NaN is 6): such a case
# is expected to fail while ml_dtypes differs from lpuc on the generator's inputs.
for _name, _dtype, _values, _rule in (
        ("INT4", DType.i4, range(-9, 16), "out-of-range floats wrap"),
        ("UINT4", DType.u4, range(-9, 16), "out-of-range floats wrap"),
        ("INT2", DType.i2, range(-3, 4), "out-of-range floats wrap"),
        ("UINT2", DType.u2, range(-3, 4), "out-of-range floats wrap"),
        ("FLOAT4E2M1", DType.f4e2m1, [math.nan], "NaN becomes 6, as ONNX's float4 note says")):
    if ml_dtypes_differs(_values, _dtype):
        XFAIL[rf"^test_cast(like)?_FLOAT(16)?_to_{_name}(_expanded)?$"] = (
            f"the expected output is ml_dtypes {ml_dtypes.__version__}'s conversion, not lpuc's ({_rule})")

# Cases expected to fail while the frontend does not accept their opset (see
# lift_opset): pattern -> (opset, reason). They run normally once it does.
XFAIL_OPSET = {
    r"^test_range_(bfloat16|float16)_type_positive_delta$": (
        27, "opset 27 model (float16/bfloat16 Range): not expressible at opsets <= 25, so ONNX's "
            "version converter refuses it"),
}
for _pattern, (_opset, _why) in XFAIL_OPSET.items():
    if _opset not in onnx_import.OPSETS:
        XFAIL[_pattern] = _why


def op_of(case: str) -> str | None:
    """The op of OPS a case (name without device suffix) tests, or None."""
    for pattern, op in OTHER_OPS.items():
        if re.search(pattern, case):
            return op if op in OPS else None
    matches = [op for op, pattern in OPS.items() if re.search(pattern, case)]
    assert len(matches) <= 1, f"{case} matches several ops: {matches}"
    return matches[0] if matches else None


def reason(table: dict[str, str], case: str) -> str | None:
    for pattern, why in table.items():
        if re.search(pattern, case):
            return why
    return None


# --- the backend -------------------------------------------------------------

def _to_numpy_out(a: np.ndarray, dtype: DType) -> np.ndarray:
    if dtype is DType.bf16:
        import ml_dtypes

        return np.asarray(a, np.float32).astype(ml_dtypes.bfloat16)
    return np.asarray(a)


def lift_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """A model in an opset the frontend does not accept, converted by ONNX's own
    version converter to the nearest one it does (what a user would do)."""
    versions = {o.domain: o.version for o in model.opset_import}
    opset = versions.get("", versions.get("ai.onnx", 0))
    if opset in onnx_import.OPSETS:
        return model
    target = onnx_import.OPSETS.start if opset < onnx_import.OPSETS.start else onnx_import.OPSETS.stop - 1
    return onnx.version_converter.convert_version(model, target)


# Operand positions that ONNX passes as tensors but lpuc needs as compile-time
# constants (static shapes: a shape, axes, k, ...). The node tests feed them as
# graph inputs; a static compiler sees them fixed at export, so the backend
# compiles the model specialized on their values (they become initializers).
SHAPE_OPERANDS = {
    "Reshape": {1}, "Expand": {1}, "Tile": {1}, "Slice": {1, 2, 3, 4}, "Split": {1}, "Squeeze": {1},
    "Unsqueeze": {1}, "ReduceMean": {1}, "ReduceSum": {1}, "ReduceMax": {1}, "ReduceMin": {1},
    "CumSum": {1}, "TopK": {1}, "Trilu": {1}, "ConstantOfShape": {0}, "Range": {0, 1, 2}, "Pad": {1, 2, 3},
}


def shape_inputs(model: onnx.ModelProto) -> list[str]:
    """Graph inputs that feed a shape-like operand."""
    graph_inputs = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
    names = []
    for node in model.graph.node:
        for i in SHAPE_OPERANDS.get(node.op_type, ()):
            if i < len(node.input) and node.input[i] in graph_inputs and node.input[i] not in names:
                names.append(node.input[i])
    return names


class LpucRep(onnx.backend.base.BackendRep):
    """Compiles on first run when some inputs must be frozen to constants."""

    def __init__(self, model: onnx.ModelProto):
        inits = {t.name for t in model.graph.initializer}
        self.model = model
        self.input_names = [i.name for i in model.graph.input if i.name not in inits]
        self.frozen = shape_inputs(model)
        self.modules = {}
        if not self.frozen:
            self.modules[()] = self._compile({})

    def _compile(self, frozen: dict[str, np.ndarray]):
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        for name, value in frozen.items():
            model.graph.initializer.append(onnx.numpy_helper.from_array(value, name))
        module, _ = import_onnx(Path(f"{model.graph.name or 'node_test'}.onnx"), model=lift_opset(model))
        return module

    def run(self, inputs, **kwargs):
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        given = dict(zip(self.input_names, (np.asarray(a) for a in inputs), strict=True))
        frozen = {name: given.pop(name) for name in self.frozen}
        key = tuple((name, a.dtype.str, a.shape, a.tobytes()) for name, a in frozen.items())
        if key not in self.modules:
            self.modules[key] = self._compile(frozen)
        module = self.modules[key]
        feed = {}
        for v, a in zip(module.inputs, given.values(), strict=True):  # the remaining inputs, in order
            feed[v.name] = a.astype(np.float32) if v.type.dtype is DType.bf16 else a
        out = evaluate(module, feed)
        return tuple(_to_numpy_out(out[name], v.type.dtype) for name, v in module.outputs)


class LpucBackend(onnx.backend.base.Backend):
    @classmethod
    def is_compatible(cls, model, device="CPU", **kwargs):
        return device == "CPU"

    @classmethod
    def prepare(cls, model, device="CPU", **kwargs):
        super().prepare(model, device, **kwargs)
        return LpucRep(model)

    @classmethod
    def supports_device(cls, device):
        return device == "CPU"


# --- the cases ---------------------------------------------------------------

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the case generators overflow casts on purpose
    backend_test = onnx.backend.test.BackendTest(LpucBackend, __name__)
for _pattern in OPS.values():
    backend_test.include(_pattern)  # names carry a device suffix: `(_|$)` matches its `_`

# Only the node suite is exposed (the model suites are out of scope), and of it
# only the CPU cases of OPS: the rest are deleted rather than collected as skips.
OnnxBackendNodeTest = backend_test.test_cases["OnnxBackendNodeModelTest"]  # a fresh class per access
CASES: dict[str, str] = {}  # case name (no device suffix) -> op
ALL_CASES = [a[: -len("_cpu")] for a in vars(OnnxBackendNodeTest) if a.startswith("test_") and a.endswith("_cpu")]
for _attr in list(vars(OnnxBackendNodeTest)):
    if not _attr.startswith("test_"):
        continue
    _case = _attr[: -len("_cpu")] if _attr.endswith("_cpu") else None
    _op = op_of(_case) if _case else None
    if _op is None:  # another op's case, or the CUDA twin: not collected at all
        delattr(OnnxBackendNodeTest, _attr)
        continue
    CASES[_case] = _op
    _fn = vars(OnnxBackendNodeTest)[_attr]
    if (_why := reason(EXCLUDE, _case)) is not None:
        setattr(OnnxBackendNodeTest, _attr, pytest.mark.skip(reason=f"excluded: {_why}")(_fn))
    elif (_why := reason(XFAIL, _case)) is not None:
        setattr(OnnxBackendNodeTest, _attr, pytest.mark.xfail(reason=_why, strict=True)(_fn))


def test_every_op_has_cases():
    counts = Counter(CASES.values())
    assert set(counts) == set(OPS), f"ops without cases: {sorted(set(OPS) - set(counts))}"


def test_no_stale_patterns():
    for table in (XFAIL, XFAIL_OPSET, EXCLUDE, OTHER_OPS):
        for pattern in table:
            assert any(re.search(pattern, c) for c in ALL_CASES), f"{pattern} matches no case"


# --- the per-op table --------------------------------------------------------

class _Tally:
    """Prints pass / fail / xfail / excluded per op at the end of the run."""

    def pytest_terminal_summary(self, terminalreporter):
        rows: dict[str, Counter] = defaultdict(Counter)
        kinds = {"passed": "pass", "failed": "fail", "error": "fail", "xfailed": "xfail", "xpassed": "fail",
                 "skipped": "excluded"}
        seen = set()
        for key, kind in kinds.items():
            for rep in terminalreporter.stats.get(key, []):
                nodeid = getattr(rep, "nodeid", "")
                if "test_onnx_backend.py::OnnxBackendNodeTest::" not in nodeid:
                    continue
                name = nodeid.rsplit("::", 1)[1]
                case = name[: -len("_cpu")]
                if case not in CASES:
                    continue
                if kind == "pass" and rep.when != "call":
                    continue
                if (name, kind) in seen:
                    continue
                seen.add((name, kind))
                rows[CASES[case]][kind] += 1
        if not rows:
            return
        tw = terminalreporter
        tw.write_sep("=", "ONNX backend node tests per op")
        tw.write_line(f"{'op':<20}{'pass':>6}{'fail':>6}{'xfail':>7}{'excl':>6}{'rate':>8}")
        total = Counter()
        for op in OPS:
            c = rows.get(op, Counter())
            total.update(c)
            run = c["pass"] + c["fail"] + c["xfail"]
            rate = f"{100 * c['pass'] / run:.0f}%" if run else "-"
            tw.write_line(f"{op:<20}{c['pass']:>6}{c['fail']:>6}{c['xfail']:>7}{c['excluded']:>6}{rate:>8}")
        run = total["pass"] + total["fail"] + total["xfail"]
        rate = f"{100 * total['pass'] / run:.1f}%" if run else "-"
        tw.write_line(f"{'total':<20}{total['pass']:>6}{total['fail']:>6}{total['xfail']:>7}"
                      f"{total['excluded']:>6}{rate:>8}")
        typed = sum(1 for case in CASES if reason(XFAIL_TYPES, case) and reason(EXCLUDE, case) is None)
        if run > typed:
            tw.write_line(f"pass rate without the {typed} cases in types lpuc lacks (string, optional, "
                          f"sequence): {100 * total['pass'] / (run - typed):.1f}%")


@pytest.fixture(scope="module", autouse=True)
def _per_op_table(request):
    manager = request.config.pluginmanager
    if manager.get_plugin("lpuc-onnx-backend-tally") is None:
        manager.register(_Tally(), "lpuc-onnx-backend-tally")
    yield

