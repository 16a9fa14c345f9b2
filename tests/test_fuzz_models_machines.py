"""Fuzzers of lpuc's inputs: corrupt ONNX models (byte flips and protobuf-level edits of the
bundled samples) through `lpuc import`, and corrupt machine files (values, keys and lines of
tsp-v1.toml edited) through `lpuc compile` and `lpuc run`. Whatever the input, lpuc either
succeeds or exits 2 with exactly one line on stderr: never a traceback. Deterministic
(derandomized), each well under 20 s."""

from __future__ import annotations

import contextlib
import io
import re
from collections import Counter
from functools import lru_cache

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from lpuc.compiler.cli import main
from lpuc.ir.machine import SHIPPED

from helpers import SAMPLES, save

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

OUTCOMES: dict[str, Counter] = {"onnx": Counter(), "machine": Counter()}


def lpuc(*argv) -> tuple[int, str]:
    """`lpuc ARGV` in-process: (exit code, stderr). An exception out of main fails the test."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


def assert_success_or_one_line(code: int, err: str, outcomes: Counter) -> None:
    assert "Traceback" not in err, err
    if code == 0:
        outcomes["success"] += 1
        return
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("lpuc: error: "), (code, err)
    words = re.sub(r"\S*/\S*|\d+", "", lines[0].removeprefix("lpuc: error: ")).split()
    outcomes[" ".join(words[:6])] += 1  # a few words of the error, to see that they vary


# --- ONNX models -------------------------------------------------------------------

SAMPLE_NAMES = sorted(p.stem for p in SAMPLES.glob("*.onnx"))


@lru_cache(maxsize=None)
def _sample(name: str) -> onnx.ModelProto:
    return onnx.load(str(SAMPLES / f"{name}.onnx"))


def _index(draw, seq) -> int | None:
    return draw(st.integers(0, len(seq) - 1)) if len(seq) else None


def _pick(draw, seq):
    """An item of `seq`, or None when earlier edits emptied it."""
    i = _index(draw, seq)
    return None if i is None else seq[i]


def _respelled(draw, name: str) -> str:
    """A name with one character changed, dropped or added: what a flipped byte does to it."""
    i = draw(st.integers(0, len(name)))
    c = draw(st.sampled_from("x_.0/"))
    return draw(st.sampled_from([name[:i] + c + name[i + 1:], name[:i] + name[i + 1:], name[:i] + c + name[i:]]))


def _rename(field: str, sub: str | None = None):
    """Respell the name of an item of graph.<field> (or one of its <sub> names: node inputs, outputs)."""
    def edit(draw, model):
        items = getattr(model.graph, field)
        i = _index(draw, items)
        if i is None:
            return
        if sub is None:
            items[i].name = _respelled(draw, items[i].name)
        else:
            names = getattr(items[i], sub)
            j = _index(draw, names)
            if j is not None:
                names[j] = _respelled(draw, names[j])
    edit.__qualname__ = f"rename_{field}_{sub or 'name'}"  # what a failing example lists
    return edit


def _drop(field: str):
    def edit(draw, model):
        items = getattr(model.graph, field)
        i = _index(draw, items)
        if i is not None:
            del items[i]
    edit.__qualname__ = f"drop_{field}"
    return edit


def _swap_nodes(draw, model):
    nodes = model.graph.node
    i, j = _index(draw, nodes), _index(draw, nodes)
    if i is None:
        return
    a, b = onnx.NodeProto(), onnx.NodeProto()
    a.CopyFrom(nodes[i])
    b.CopyFrom(nodes[j])
    nodes[i].CopyFrom(b)
    nodes[j].CopyFrom(a)


def _rewire(draw, model):
    """A node input replaced by another tensor of the graph (of any type or shape)."""
    g = model.graph
    names = [t.name for t in g.initializer] + [i.name for i in g.input] + [o for n in g.node for o in n.output]
    node = _pick(draw, g.node)
    j = _index(draw, node.input) if node is not None else None
    if j is not None:
        node.input[j] = draw(st.sampled_from(names))


def _attribute(draw, model):
    node = _pick(draw, [n for n in model.graph.node if n.attribute])
    if node is None:
        return
    attr = node.attribute[_index(draw, node.attribute)]
    how = draw(st.sampled_from(["drop", "type", "int", "ints", "name"]))
    if how == "drop":
        node.attribute.remove(attr)
    elif how == "type":
        attr.type = draw(st.sampled_from(list(onnx.AttributeProto.AttributeType.values())))
    elif how == "int":
        attr.i = draw(st.integers(-2**63, 2**63 - 1))
    elif how == "ints":
        attr.ints[:] = draw(st.lists(st.integers(-2**63, 2**63 - 1), max_size=5))
    else:
        attr.name = _respelled(draw, attr.name)


def _element_type(draw, model):
    g = model.graph
    kind = draw(st.sampled_from(["input", "output", "initializer"]))
    item = _pick(draw, getattr(g, kind))
    value = draw(st.integers(0, 30))
    if item is None:
        return
    if kind == "initializer":
        item.data_type = value
    else:
        item.type.tensor_type.elem_type = value


def _dims(draw, model):
    g = model.graph
    kind = draw(st.sampled_from(["input", "initializer"]))
    item = _pick(draw, getattr(g, kind))
    if item is None:
        return
    dims = item.dims if kind == "initializer" else item.type.tensor_type.shape.dim
    k = _index(draw, dims)
    value = draw(st.sampled_from([0, 1, 2, 3, 1000, 2**31, 2**62, -1]))
    if k is None or draw(st.booleans()):
        if kind == "initializer":
            dims.append(abs(value))
        else:
            dims.add(dim_value=value)
    elif kind == "initializer":
        dims[k] = abs(value)
    else:
        dims[k].dim_value = value


def _op(draw, model):
    node = _pick(draw, model.graph.node)
    how = draw(st.sampled_from(["op_type", "domain", "opset"]))
    if node is None:
        return
    if how == "op_type":
        node.op_type = _respelled(draw, node.op_type)
    elif how == "domain":
        node.domain = draw(st.sampled_from(["ai.onnx", "com.microsoft", "x"]))
    else:
        model.opset_import[0].version = draw(st.integers(0, 30))


EDITS = [_rename("initializer"), _rename("input"), _rename("output"), _rename("node", "input"),
         _rename("node", "output"), _drop("node"), _drop("initializer"), _drop("input"), _drop("output"),
         _swap_nodes, _rewire, _attribute, _element_type, _dims, _op]


def corrupt_model(draw) -> bytes:
    """A sample, its bytes flipped here and there, or edited at the protobuf level once to three times.
    (Drawn step by step from st.data(), so that a failure lists the draws, not a megabyte of bytes.)"""
    name = draw(st.sampled_from(SAMPLE_NAMES))
    if draw(st.integers(0, 3)) == 0:
        data = bytearray((SAMPLES / f"{name}.onnx").read_bytes())
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        if draw(st.integers(0, 7)) == 0:
            data = data[:draw(st.integers(0, len(data)))]
        return bytes(data)
    model = onnx.ModelProto()
    model.CopyFrom(_sample(name))
    for _ in range(draw(st.integers(1, 3))):
        draw(st.sampled_from(EDITS))(draw, model)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@SETTINGS
@given(data=st.data())
def test_import_of_a_corrupt_model(workdir, data):
    model = workdir / "model.onnx"
    model.write_bytes(corrupt_model(data.draw))
    code, err = lpuc("import", model, "-o", workdir / "model.ir")
    assert_success_or_one_line(code, err, OUTCOMES["onnx"])


# --- machine files -----------------------------------------------------------------

TSP = (SHIPPED / "tsp-v1.toml").read_text()
LINES = TSP.splitlines()
KEY_LINES = [i for i, line in enumerate(LINES) if " = " in line and not line.startswith("#")]
SECTION_LINES = [i for i, line in enumerate(LINES) if line.startswith("[")]

toml_values = st.one_of(
    st.integers(-2**70, 2**70).map(str),
    st.sampled_from([0, 1, 2, 7, 8, 16, 64, 256, 320, 1024, 4096, 65536, 100_000, 1 << 20,  # range bounds, tsp-v1
                     10**7, 2**31, 2**63 - 1, -1]).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda x: repr(x).replace("e+", "e")),
    st.sampled_from(["true", "false", '""', '"x"', '"dragonfly"', '"ring"', '"torus2d"', "[1, 2]", "{a = 1}",
                     "1979-05-27", "0x10", "1_000"]),
)


@st.composite
def corrupt_machines(draw) -> str:
    """tsp-v1.toml with one to three lines edited: a value changed, a key or section respelled, a line
    dropped, repeated or added."""
    lines = list(LINES)
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["value", "value", "value", "key", "section", "drop", "repeat", "add"]))
        i = draw(st.sampled_from(SECTION_LINES if how == "section" else KEY_LINES))
        key, _, rest = lines[i].partition(" = ")
        if how == "value":
            lines[i] = f"{key} = {draw(toml_values)}"
        elif how == "key":
            lines[i] = f"{_respelled(draw, key) or 'k'} = {rest}"
        elif how == "section":
            lines[i] = f"[{_respelled(draw, lines[i].strip('[]')) or 's'}]"
        elif how == "drop":
            lines[i] = ""
        elif how == "repeat":
            lines.insert(i, lines[i])
        else:
            lines.insert(i, f"{draw(st.sampled_from(['width', 'max_chips', 'units', 'extra']))} = {draw(toml_values)}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def tiny_model(workdir):
    """y = relu(x @ w), one vector wide: compiles and runs in a fraction of a second."""
    w = numpy_helper.from_array(np.eye(320, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
                              "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 320])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 320])], [w])
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), workdir / "tiny.onnx")


@SETTINGS
@given(text=corrupt_machines(), chips=st.sampled_from([[], ["--chips", "2"]]))
def test_compile_and_run_on_a_corrupt_machine(workdir, tiny_model, text, chips):
    machine, program = workdir / "machine.toml", workdir / "tiny.lpu"
    machine.write_text(text)
    program.unlink(missing_ok=True)
    code, err = lpuc("compile", tiny_model, "-o", program, "--machine", machine, "--scheduler", "list", *chips)
    assert_success_or_one_line(code, err, OUTCOMES["machine"])
    if code == 0:
        code, err = lpuc("run", program, "--timing-only")
        assert code == 0, err


@pytest.mark.parametrize("kind", OUTCOMES)
def test_the_fuzzers_reach_both_outcomes(kind):
    """Runs after the fuzzers (file order); skipped when run alone: they succeed and fail, for many reasons."""
    outcomes = OUTCOMES[kind]
    if not outcomes:
        pytest.skip("needs the fuzzers to run first")
    assert outcomes["success"] >= 10 and len(outcomes) >= 10, outcomes
