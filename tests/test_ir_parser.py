"""Parser errors (`file:line:column: what was expected`, never a traceback), the
compound-token parts of the grammar (among them OP_LINE, a whole op statement), and `lpuc check`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from lpuc.compiler.cli import main
from lpuc.ir import LpucError, ParseError, parse, parse_file, print_module
from lpuc.ir.parser import _parser
from helpers import by_the_rules, compiled_sample

ROOT = Path(__file__).resolve().parents[1]
HEAD = "module @m {\n  input %x : f32[2,3]\n"

# name -> (text, the whole error message for a file named bad.ir)
ERRORS = {
    "missing type": (HEAD + '  %y = graph.exp %x :\n  output "y" = %y\n}\n',
                     "bad.ir:4:3: unexpected 'output'; expected a type like f32[1,7]"),
    "missing input type": ("module @m {\n  input %x :\n}\n",
                           "bad.ir:3:1: unexpected '}'; expected a type like f32[1,7]"),
    "bad token": (HEAD + "  %y = graph.exp %x ; : f32[2,3]\n}\n",
                  "bad.ir:3:21: unexpected ';'; expected ':' or 'input' or 'output' or 'stamp' or '{' or '}' "
                  "or ..."),
    "bad character in an attribute": (HEAD + "  %y = graph.softmax %x {axis = $} : f32[2,3]\n}\n",
                                      "bad.ir:3:33: unexpected '$'; expected '[' or 'false' or 'tensor' or 'true' "
                                      "or a dtype like f32 or a float or ..."),
    "unexpected end": (HEAD + "  %y = graph.exp %x : f32[2,3]\n",
                       "bad.ir:3:31: unexpected end of input; expected 'input' or 'output' or 'stamp' or '}' "
                       "or an op name like graph.add or results like '%y ='"),
    "end inside a list": (HEAD + "  %y, %z = graph.split %x {axis = 1, sizes = [1,",
                          "bad.ir:3:49: unexpected end of input; expected '[' or 'false' or 'tensor' or 'true' "
                          "or a dtype like f32 or a float or ..."),
    "empty file": ("", "bad.ir:1:1: unexpected end of input; expected 'module'"),
    "binary junk": ("\x00\x01", "bad.ir:1:1: unexpected '\\x00'; expected 'module'"),
    "missing =": (HEAD + "  %y graph.exp %x : f32[2,3]\n}\n",
                  "bad.ir:3:3: unexpected '%y'; expected 'input' or 'output' or 'stamp' or '}' or an op name like "
                  "graph.add or results like '%y ='"),
    "unclosed attribute dict": (HEAD + "  %y = graph.softmax %x {axis = 1 : f32[2,3]\n}\n",
                                "bad.ir:3:35: unexpected ':'; expected ',' or ']' or '}'"),
    "undefined value": (HEAD + "  %y = graph.add %x, %z : f32[2,3]\n}\n",
                        "bad.ir:3:22: use of undefined value %z"),
    "undefined value in an output": (HEAD + '  output "y" = %nope\n}\n',
                                     "bad.ir:3:16: use of undefined value %nope"),
    "value defined twice": (HEAD + "  %y = graph.exp %x : f32[2,3]\n  %z, %y = graph.split %x {axis = 0, "
                            "sizes = [1, 1]} : f32[1,3], f32[1,3]\n}\n",
                            "bad.ir:4:7: value %y is defined twice"),
    "fewer result types than results": (HEAD + "  %y, %z = graph.split %x {axis = 1, sizes = [1, 2]} : f32[2,1]\n}\n",
                                        "bad.ir:3:12: graph.split has 2 result(s) but 1 result type(s)"),
    "a result type without a result": (HEAD + "  graph.exp %x : f32[2,3]\n}\n",
                                       "bad.ir:3:3: graph.exp has 0 result(s) but 1 result type(s)"),
    "tensor element count": (HEAD + "  %c = graph.constant {value = tensor<f32[2,2], [1.0, 2.0, 3.0]>} : f32[2,2]\n}\n",
                             "bad.ir:3:39: tensor<f32[2,2]> needs 4 elements, got 3"),
    "float in an int tensor": (HEAD + "  %c = graph.constant {value = tensor<i32[2], [1, 2.5]>} : i32[2]\n}\n",
                               "bad.ir:3:39: tensor<i32[2]>: element 2.5 is not an integer"),
    "int out of range": (HEAD + "  %c = graph.constant {value = tensor<u8[2], [1, -1]>} : u8[2]\n}\n",
                         "bad.ir:3:39: tensor<u8[2]>: element -1 is out of range for u8"),
    "number in a bool tensor": (HEAD + "  %c = graph.constant {value = tensor<bool[2], [1, 0]>} : bool[2]\n}\n",
                                "bad.ir:3:39: tensor<bool[2]>: element 1 is not true or false"),
    "attribute given twice": (HEAD + "  %y = graph.softmax %x {axis = 1, axis = 0} : f32[2,3]\n}\n",
                              "bad.ir:3:36: attribute axis is given twice"),
    "bad string escape": (HEAD + '  output "y\\q" = %x\n}\n',
                          'bad.ir:3:10: bad string "y\\q": Invalid \\escape: line 1 column 3 (char 2)'),
    "raw newline in a string": (HEAD + '  output "y\nz" = %x\n}\n',  # shown escaped: the message is one line
                                'bad.ir:3:10: bad string "y\\nz": Invalid control character at: line 1 column 3 '
                                '(char 2)'),
    "error on a later line of a statement": (HEAD + "  %y = graph.add %x,\n      %x,\n      %w : f32[2,3]\n}\n",
                                             "bad.ir:5:7: use of undefined value %w"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_parse_error_message(case):
    text, message = ERRORS[case]
    with pytest.raises(ParseError) as e:
        parse(text, "bad.ir")
    assert str(e.value) == message
    assert e.value.__cause__ is None and e.value.__suppress_context__  # no chained lark or Python error


def test_parse_error_is_a_user_error():
    assert issubclass(ParseError, LpucError)


def test_parse_file_names_the_file(tmp_path):
    path = tmp_path / "m.ir"
    path.write_text(ERRORS["undefined value"][0])
    with pytest.raises(ParseError, match=rf"^{path}:3:22: use of undefined value %z$"):
        parse_file(path)
    with pytest.raises(ParseError, match="missing.ir: no such file"):
        parse_file(tmp_path / "missing.ir")


def test_the_parser_is_usable_after_an_error():
    with pytest.raises(ParseError):
        parse(ERRORS["undefined value"][0])
    assert parse(HEAD + '  output "x" = %x\n}\n').inputs[0].name == "x"


# --- the language: whitespace, comments and compound tokens --------------------------

def test_whitespace_and_comments_go_anywhere_between_tokens():
    canonical = ('module @m attributes {n = [1, 2]} {\n  input %x : f32[2,3]\n'
                 '  %a, %b = graph.split %x {axis = 1, sizes = [1, 2]} : f32[2,1], f32[2,2]\n'
                 '  %c = graph.constant {value = tensor<f32[2], "k">} : f32[2]\n  output "b" = %b\n}\n')
    spread = ('module\n@m\nattributes{n=[1,#c\n2]}{input %x :f32[2,3]\n'
              '%a #c\n , # c, %z\n %b = # c\n graph.split\n%x{sizes=[1,2],axis=1}:f32[2,1] #c\n,f32[2,2]'
              '%c=graph.constant{value=tensor #c\n < f32[2] , #c\n "k" > }:f32[2]'
              'output"b"=%b}')
    assert print_module(parse(spread)) == canonical


def test_a_comment_may_hold_anything():
    text = HEAD + '  # %y = graph.exp %nope : "unterminated [ { tensor<\n  output "x#1" = %x  # "x#2"\n}\n'
    assert parse(text).outputs[0][0] == "x#1"


def test_keywords_and_dtypes_are_attribute_names_too():
    text = ('module @m attributes {attributes = 1, bool = bool, f32 = [], false = true, input = "i", module = 0.5, '
            'output = tensor<f32[1], "k">, tensor = [[1, 2, 3]], true = false} {\n}\n')
    m = parse(text)
    assert m.attrs["input"] == "i" and m.attrs["true"] is False and m.attrs["tensor"] == ((1, 2, 3),)
    assert print_module(m) == text


def test_number_lists_keep_ints_and_floats_apart():
    m = parse("module @m attributes {a = [1, -2, 3.0, 1e3, -0.0, inf, -inf, nan], b = [1.5], c = []} {\n}\n")
    a = m.attrs["a"]
    assert [type(v) for v in a] == [int, int, float, float, float, float, float, float]
    assert a[:6] == (1, -2, 3.0, 1000.0, 0.0, float("inf")) and str(a[4]) == "-0.0"
    assert m.attrs["c"] == ()


def test_value_names_may_use_dots_colons_slashes_and_dashes():
    text = ('module @m-1.x {\n  input %layer.0/attn:q-proj : f32[2]\n  %0 = graph.exp %layer.0/attn:q-proj : f32[2]\n'
            '  output "y" = %0\n}\n')
    assert print_module(parse(text)) == text


# --- OP_LINE: an op statement as one token, taken apart as the rules would ------------

OP_LINE = re.compile(next(t.pattern.to_regexp() for t in _parser.terminals if t.name == "OP_LINE"))


def same_module(a, b) -> None:
    """Equal to the last detail: every op's attributes with their Python types (1, 1.0, true; tuples)."""
    assert print_module(a) == print_module(b)
    assert [op.attrs.compare_key() for op in a.ops] == [op.attrs.compare_key() for op in b.ops]
    assert a == b


EDGE_VALUES = HEAD + (
    '  %a = graph.softmax %x {axis = -1, f = [1, -2, 3.0, 1e3, -0.0, inf, -inf, nan], g = 1e-07, h = nan, '
    'l = [[1], [2, 3.5]], m = [], s = "} : f32[1] = %x, \\"q\\" \\u00e9", t = true, u = false, '
    'v = tensor<f32[2], [1.0, inf]>, w = tensor<i8[2], [1, -1]>, x = tensor<f32[2], "k"> , y = f16, '
    'z = -0} : f32[2,3]\n'
    '  %b:1, %c/2 = graph.split %a {axis = 1, sizes = [1, 2]} : f32[2,1], f32[2,2]\n'
    '  %d = graph.constant {n = [[]], value = tensor<bool[2], [true, false]>} : bool[2]\n'  # (not an OP_LINE)
    '  output "b" = %b:1\n}\n')


def golden_texts() -> dict[str, str]:
    """The modules of tests/golden/ir: each file's input and, after its separator, its expected output."""
    texts = {}
    for path in sorted((ROOT / "tests/golden/ir").glob("*.ir")):
        for k, part in enumerate(path.read_text().split("# ---- output ----\n")):
            if "module @" in part:
                texts[f"{path.stem}.{k}"] = part
    return texts


@pytest.mark.parametrize("text", [EDGE_VALUES, *golden_texts().values()], ids=["edge values", *golden_texts()])
def test_one_line_statements_read_as_the_rules_read_them(text):
    if text is EDGE_VALUES:
        assert [bool(OP_LINE.fullmatch(line.strip())) for line in text.splitlines()[2:5]] == [True, True, False]
    same_module(parse(text), parse(by_the_rules(text)))


def test_a_scheduled_program_is_all_one_line_statements():
    """What the printer writes for a compiled program (the text a run parses) is OP_LINEs, read as the rules
    read them: a printer change that left the fast form would show here, not only as a slower run."""
    text = print_module(compiled_sample("llama_decode")[0])
    ops = [line.strip() for line in text.splitlines() if line.startswith("  %")]
    assert len(ops) > 100 and all(OP_LINE.fullmatch(line) for line in ops)
    same_module(parse(text), parse(by_the_rules(text)))


def test_a_number_in_a_list_is_an_int_or_a_float():
    """grammar.lark spells NUMBER as INT | FLOAT in one regex, an integer tried first (a scheduled program's lists
    are integers: the other order scans each twice): a list holds just what INT and FLOAT accept."""
    terminal = {t.name: re.compile(t.pattern.to_regexp()) for t in _parser.terminals}
    for text in ["0", "-7", "12", "8102", "1.", "1.5", "-0.0", "1e3", "1E-07", "2.5e+3", "inf", "-inf", "nan",
                 "1.2.3", "e3", "--1", "1e", "0x1", "+1", ".5", "-nan", "infinity", "1_000", ""]:
        alone = bool(terminal["INT"].fullmatch(text) or terminal["FLOAT"].fullmatch(text))
        assert bool(terminal["NUMBERS"].fullmatch(f"[{text}]")) == alone, text
        assert bool(terminal["NUMBERS"].fullmatch(f"[1, {text}, 2]")) == alone, text


def test_a_statement_that_goes_on_is_not_cut_short():
    """OP_LINE never ends where the statement goes on, on the next line (more result types)."""
    text = HEAD + "  %y, %z = graph.split %x {axis = 1, sizes = [1, 2]} : f32[2,1]  # c\n  , f32[2,2]\n}\n"
    assert [str(r.type) for r in parse(text).ops[0].results] == ["f32[2,1]", "f32[2,2]"]


# --- lpuc check --------------------------------------------------------------------------

GOOD = ("module @m {  # not canonical\n  input %x :f32[2,3]\n  %y=graph.softmax %x {axis=-1}: f32[2,3]\n"
        "  output \"y\" = %y\n}\n")
CANONICAL = ('module @m {\n  input %x : f32[2,3]\n  %y = graph.softmax %x {axis = -1} : f32[2,3]\n'
             '  output "y" = %y\n}\n')


def test_check_prints_the_canonical_text(tmp_path, capsys):
    path = tmp_path / "m.ir"
    path.write_text(GOOD)
    assert main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == CANONICAL and err == ""


def test_check_writes_the_canonical_text(tmp_path, capsys):
    path, out_path = tmp_path / "m.ir", tmp_path / "out.ir"
    path.write_text(CANONICAL)
    assert main(["check", str(path), "-o", str(out_path)]) == 0
    assert out_path.read_text() == CANONICAL
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("case", ["missing type", "bad token", "unexpected end", "undefined value",
                                  "fewer result types than results", "tensor element count"])
def test_check_reports_a_parse_error_in_one_line(tmp_path, capsys, case):
    text, message = ERRORS[case]
    path, out_path = tmp_path / "bad.ir", tmp_path / "out.ir"
    path.write_text(text)
    assert main(["check", str(path), "-o", str(out_path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"lpuc: error: {tmp_path}/{message}"]
    assert not out_path.exists()
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left either


def test_check_reports_a_verifier_error_in_one_line(tmp_path, capsys):
    path = tmp_path / "bad.ir"
    path.write_text(HEAD + "  %y = graph.exp %x : f32[3,2]\n  output \"y\" = %y\n}\n")
    assert main(["check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"lpuc: error: {path}: %y = graph.exp: result %y has type f32[3,2], expected f32[2,3]"]


def test_check_with_debug_shows_the_traceback(tmp_path, capsys):
    path = tmp_path / "bad.ir"
    path.write_text(ERRORS["undefined value"][0])
    assert main(["--debug", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ParseError" in err
    assert err.splitlines()[-1] == f"lpuc: error: {path}:3:22: use of undefined value %z"


def test_check_in_a_real_process(tmp_path):
    good, bad = tmp_path / "good.ir", tmp_path / "bad.ir"
    good.write_text(CANONICAL)
    bad.write_text(ERRORS["missing type"][0])
    r = subprocess.run([sys.executable, "-m", "lpuc.compiler", "check", str(good)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (0, CANONICAL, "")
    r = subprocess.run([sys.executable, "-m", "lpuc.compiler", "check", str(bad)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.splitlines() == [f"lpuc: error: {tmp_path}/{ERRORS['missing type'][1]}"]


def test_a_large_text_reports_its_parse_in_eighths():
    """`progress` hears (characters read, characters) every eighth of a text (`lpuc run` of a large program
    says how far its parse is); a text under 64 KiB is not worth it."""
    lines = [f"  %y{k} = graph.exp %{'x' if k == 0 else f'y{k - 1}'} : f32[2,3]" for k in range(30_000)]
    text = HEAD + "\n".join(lines) + '\n  output "y" = %y29999\n}\n'
    assert len(text) > 2**19
    heard: list[tuple[int, int]] = []
    module = parse(text, progress=lambda pos, end: heard.append((pos, end)))
    assert len(module.ops) == 30_000
    assert 7 <= len(heard) <= 8 and all(end == len(text) for _, end in heard), heard
    assert [pos for pos, _ in heard] == sorted(pos for pos, _ in heard) and heard[-1][0] < len(text)
    parse(HEAD + '  output "x" = %x\n}\n', progress=lambda pos, end: heard.append(None))  # small: silent
    assert None not in heard
