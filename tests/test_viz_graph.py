"""The dataflow graph (backends/graph.py, `lpuc viz --dot`): valid DOT, one node per op,
shape-labelled edges, unit-class colours, repeated layers collapsed; the Graphviz-less
fallback; bad arguments; and the HTML report wired into `viz --html` and `demo`."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from lpuc.backends.graph import UNIT_CLASS_COLORS, find_layers, graph_dot, unit_class
from lpuc.compiler.cli import main
from lpuc.compiler.driver import compile_model, load_model
from lpuc.ir.registry import OPS

from helpers import SAMPLES, legacy_transformer, save

HAVE_DOT = shutil.which("dot") is not None
TYPE = r"(?:[a-z]+\d*)\[[\d,]*\]"  # f32[1,7,96], bool[1,7], i64[]
NODE = re.compile(r'^\s*(op\d+) \[label="([^"]*)"(.*)\]$', re.M)
EDGE = re.compile(r'^\s*(\w+) -> (\w+) \[(.*)\]$', re.M)


@pytest.fixture(scope="module")
def six_layers(tmp_path_factory):
    return save(legacy_transformer(layers=6, seq=7), tmp_path_factory.mktemp("viz") / "six.onnx")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def drawn_ops(module) -> list:
    return [op for op in module.ops if op.name not in ("graph.constant", "mem.constant")]


def check_dot(source: str) -> None:
    """Graphviz itself parses the source, when installed."""
    if HAVE_DOT:
        subprocess.run(["dot", "-Tsvg", "-o", "/dev/null"], input=source.encode(), check=True, capture_output=True)
    else:
        assert source.startswith("digraph") and source.rstrip().endswith("}")


def test_every_op_has_a_unit_class():
    for name in OPS:
        assert unit_class(name) in UNIT_CLASS_COLORS, name
    assert [unit_class(n) for n in ("graph.matmul", "graph.softmax", "graph.rms_norm", "graph.transpose",
                                    "graph.gather", "graph.add", "mxm.install", "host.output", "mem.join")] \
        == ["mxm", "vxm", "vxm", "sxm", "mem", "vxm", "mxm", "host", "view"]


def test_one_node_per_op_and_shape_labelled_edges():
    module, _ = load_model(SAMPLES / "llama_prefill.onnx")
    source = graph_dot(module, collapse=False).source
    check_dot(source)
    nodes = NODE.findall(source)
    assert len(nodes) == len(drawn_ops(module)) == len({n for n, *_ in nodes})
    edges = EDGE.findall(source)
    assert edges and all(re.search(rf'label="{TYPE}"', attrs) for *_, attrs in edges)
    assert 'label="f32[1,7,96]"' in source
    assert "cluster_chip0" not in source and "cluster_layers" not in source  # a model: no chip yet
    matmul = next(attrs for _, label, attrs in nodes if label.startswith("matmul"))
    assert UNIT_CLASS_COLORS["mxm"] in matmul
    assert re.search(r"w f32\[96,96\]", source)  # weights folded into their consumer


def test_repeated_layers_are_found_and_collapsed(six_layers):
    module, _ = load_model(six_layers)
    layers = find_layers(module)
    assert layers.count == 6 and layers.size >= 20
    assert all(len(b) == layers.size for b in layers.blocks)
    assert len({i for b in layers.blocks for i in b}) == 6 * layers.size
    source = graph_dot(module).source  # 6 >= 3 repeats: collapsed by default
    check_dot(source)
    assert "cluster_layers" in source and "layer × 6" in source
    assert len(NODE.findall(source)) == len(drawn_ops(module)) - 5 * layers.size
    assert "(next layer)" in source  # the residual stream, from one layer into the next
    full = graph_dot(module, collapse=False).source
    assert "cluster_layers" not in full and len(NODE.findall(full)) == len(drawn_ops(module))


def test_a_program_is_drawn_per_chip_and_collapses_too(six_layers):
    module, _, _ = compile_model(six_layers)
    source = graph_dot(module, chips=1).source
    check_dot(source)
    assert "subgraph cluster_chip0" in source and "layer × 6" in source
    assert len(NODE.findall(source)) < len(drawn_ops(module)) / 3


def test_a_many_chip_program_is_drawn_in_its_chips():
    from lpuc.compiler.pipeline import CompileOptions
    from lpuc.ir import machine_ops as mo

    module, _, _ = compile_model(SAMPLES / "llama_decode.onnx",
                                 options=CompileOptions(scheduler="list", chips=4, partition="pipeline"))
    source = graph_dot(module, chips=4, collapse=False).source
    check_dot(source)
    clusters = re.split(r"subgraph cluster_chip(\d+)", source)[1:]
    drawn = {int(chip): len(NODE.findall(body)) for chip, body in zip(clusters[::2], clusters[1::2])}
    per_chip = {c: sum(1 for op in drawn_ops(module) if mo.chip_of(op) == c) for c in range(4)}
    assert drawn == per_chip and all(per_chip.values())


def test_viz_dot_on_each_input_kind(six_layers, tmp_path, capsys):
    lpu = tmp_path / "six.lpu"
    assert run(capsys, "compile", six_layers, "-o", lpu)[0] == 0
    lpuc_import = run(capsys, "import", six_layers, "-o", tmp_path / "six.ir")
    assert lpuc_import[0] == 0
    for src in (six_layers, tmp_path / "six.ir", lpu):
        out = tmp_path / f"{src.suffix[1:]}.dot"
        code, _, err = run(capsys, "viz", src, "--dot", out, "--no-collapse")
        assert code == 0 and f"wrote {out}" in err
        check_dot(out.read_text())
        assert ("cluster_chip0" in out.read_text()) == (src.suffix == ".lpu")


@pytest.mark.skipif(not HAVE_DOT,
                    reason="Graphviz's dot is not installed (Debian package graphviz; CI installs it: .ci/run)")
def test_viz_renders_svg(tmp_path, capsys):
    out = tmp_path / "g.svg"
    code, _, _ = run(capsys, "viz", SAMPLES / "gpt2_prefill.onnx", "--dot", out)
    assert code == 0 and "<svg" in out.read_text()


def test_without_dot_the_source_is_written_and_install_advice_given(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "g.svg"
    code, _, err = run(capsys, "viz", SAMPLES / "gpt2_prefill.onnx", "--dot", out)
    assert code == 0 and not out.exists()
    assert "apt-get install graphviz" in err and str(tmp_path / "g.dot") in err
    assert (tmp_path / "g.dot").read_text().startswith("digraph")


@pytest.mark.parametrize("argv, words", [
    (["viz", "{tmp}/nowhere.onnx", "--dot", "{tmp}/o.svg"], ["nowhere.onnx", "no such file"]),
    (["viz", "{tmp}/nowhere.lpu", "--dot", "{tmp}/o.svg"], ["nowhere.lpu", "no such file"]),
    (["viz", "{model}", "--dot", "{tmp}/o.gif"], ["--dot", "'.gif'", ".svg"]),
    (["viz", "{tmp}/model.txt", "--dot", "{tmp}/o.svg"], ["model.txt", ".onnx", ".lpu"]),
    (["viz", "{model}", "--dot", "{tmp}/missing/o.svg"], ["cannot write", "no such directory"]),
    (["viz", "{model}", "--html", "{tmp}/o.txt"], ["--html", "'.txt'"]),
    (["viz", "{model}"], ["nothing to draw", "--dot"]),
])
def test_bad_viz_arguments(tmp_path, capsys, argv, words):
    (tmp_path / "model.txt").write_text("not a model")
    argv = [a.format(tmp=tmp_path, model=SAMPLES / "gpt2_prefill.onnx") for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lpuc: error: "), err
    assert all(w in lines[0] for w in words), lines[0]
    assert not list(tmp_path.glob("o.*"))


# --- the HTML report (backends/report.py) ------------------------------------------------------------

def test_viz_html_writes_the_report(tmp_path, capsys):
    out = tmp_path / "r.html"
    code, _, err = run(capsys, "viz", SAMPLES / "gpt2_decode.onnx", "--html", out)
    assert code == 0 and f"wrote {out}" in err
    assert out.read_text().lstrip().lower().startswith("<!doctype html")


def test_demo_writes_the_report(tmp_path, capsys):
    code, out, _ = run(capsys, "demo", "--out-dir", tmp_path)
    assert code == 0
    assert f"report: {tmp_path / 'report.html'}" in out
    assert (tmp_path / "report.html").stat().st_size > 1000


def test_the_longest_run_skips_only_periods_that_cannot_win():
    """backends.graph._best_run skips a period when no run of it can cover more than the best so far (its equal
    positions plus a period; a multiple of it, no more than the sequence): on random sequences with planted
    repeats it finds what trying every period finds."""
    import random

    from lpuc.backends.graph import MIN_LAYER_OPS, _best_run

    def every_period(a):
        """Of each period, the longest run of positions equal to the one a period on (the first of the longest);
        the best: the most positions covered, then the shorter period."""
        best = None
        for p in range(MIN_LAYER_OPS, len(a) // 2 + 1):
            runs, j = [], 0
            while j + p < len(a):
                start = j
                while j + p < len(a) and a[j] == a[j + p]:
                    j += 1
                if j > start:
                    runs.append((j - start, -start))
                j += 1
            if runs:
                length, start = max(runs)
                count = (length + p) // p
                if count >= 2 and (best is None or count * p > best[1] * best[2]):
                    best = (-start, p, count)
        return best

    rng = random.Random(5)
    for _ in range(300):
        block = [rng.randint(0, 5) for _ in range(rng.randint(2, 30))]
        a = [rng.randint(0, 5) for _ in range(rng.randint(0, 20))] + block * rng.randint(1, 6) \
            + [rng.randint(0, 5) for _ in range(rng.randint(0, 20))]
        if rng.random() < 0.3:
            a = [rng.randint(0, 2) for _ in range(rng.randint(0, 80))]
        assert _best_run(a) == every_period(a), a
