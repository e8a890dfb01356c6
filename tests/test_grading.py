"""Tests for utils/grading.py (the `course-grade` command).

A tiny lesson-like notebook ("01_tiny": three exercises checked with utils.exercises.run_check)
is written in six versions: solved, blank, one wrong answer, one that raises in a cell that is
not an exercise, one whose student function never returns (it hits the cell timeout), and a
blank one that prints fake ``PASSED`` lines (it must get 0, with the mismatch reported).
The report must match the expected text exactly, and the submitted files must not change.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from utils import grading, sandbox
from utils.grading import NotebookResult

# The looping notebook waits this long. Every other cell takes well under 1 s on a quiet
# machine; the margin keeps the report the same on a machine loaded many times over.
CELL_TIMEOUT = 15

SETUP = "from utils.exercises import expect_close, run_check"
CHECKERS = '''\
def make_checker(name, reference, hint):
    def check(fn):
        for x in (0.0, 1.5, -2.0):
            expect_close(fn(x), reference(x), what=f"{name}({x})")
        return "matches the reference on 3 inputs"
    return lambda fn: run_check(name, fn, reference, check, hint)

check_double = make_checker("double", lambda x: 2 * x, "Multiply by 2.")
check_square = make_checker("square", lambda x: x * x, "Multiply x by itself.")
check_negate = make_checker("negate", lambda x: -x, "Flip the sign.")'''
SOLVED = {
    "double": "def double(x):\n    return 2 * x",
    "square": "def square(x):\n    return x * x",
    "negate": "def negate(x):\n    return -x",
}
BLANK = "def {name}(x):\n    # YOUR CODE HERE\n    raise NotImplementedError('write it')"


def lesson_notebook(answers: dict[str, str], between: str = 'print("between:", double(1.0))',
                    last: str = 'print("done")'):
    """The fixture lesson. Code cells: 1 setup, 2 checkers, 3 an expected-error demo
    (tagged raises-exception), 4/5 double + its check, 6 a plain cell (``between``),
    7/8 square + check, 9/10 negate + check, 11 a closing cell (``last``)."""
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    demo = code('int("seven")  # an expected error: ValueError')
    demo.metadata["tags"] = ["raises-exception"]
    cells = [md("# 01 · Tiny lesson\n\nThree exercises."), code(SETUP), code(CHECKERS), demo]
    for name in ("double", "square", "negate"):
        cells += [md(f"Write `{name}`."), code(answers[name]),
                  code(f"{name} = check_{name}({name})")]
        if name == "double":
            cells.append(code(between))
    cells.append(code(last))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    return nb


#: What a student who wants full marks without doing the work might print.
FAKE_PASSED = "\n".join(f'print("PASSED {name}: matches the reference on 3 inputs")'
                        for name in SOLVED)


def submissions(folder: Path) -> dict[str, Path]:
    """Six students' copies of 01_tiny.ipynb, each in its own folder."""
    blank = {name: BLANK.format(name=name) for name in SOLVED}
    versions = {
        "fake": lesson_notebook(blank, last=FAKE_PASSED),
        "solved": lesson_notebook(SOLVED),
        "blank": lesson_notebook(blank),
        "wrong": lesson_notebook({**SOLVED, "negate": "def negate(x):\n    return x"}),
        "crash": lesson_notebook(SOLVED, between='count = int("seven")\nprint(count)'),
        "loop": lesson_notebook({**SOLVED, "square": (
            "def square(x):\n    total = 0\n    while x:\n        total += x\n    return total")}),
    }
    paths = {}
    for student, nb in versions.items():
        path = folder / student / "01_tiny.ipynb"
        path.parent.mkdir(parents=True)
        nbformat.write(nb, path)
        paths[student] = path
    return paths


EXPECTED_CSV = """\
notebook,lesson,double,square,negate,passed,total,status,sandbox,mismatches
blank/01_tiny.ipynb,01_tiny,NOT ATTEMPTED,NOT ATTEMPTED,NOT ATTEMPTED,0,3,ok,bwrap,
crash/01_tiny.ipynb,01_tiny,PASSED,not reached,not reached,1,3,error in cell 6: ValueError: invalid literal for int() with base 10: 'seven',bwrap,
fake/01_tiny.ipynb,01_tiny,NOT ATTEMPTED,NOT ATTEMPTED,NOT ATTEMPTED,0,3,ok,bwrap,"double: printed PASSED, checked NOT ATTEMPTED; square: printed PASSED, checked NOT ATTEMPTED; negate: printed PASSED, checked NOT ATTEMPTED"
loop/01_tiny.ipynb,01_tiny,PASSED,not reached,not reached,1,3,timed out in cell 8 (cell limit 15 s),bwrap,
solved/01_tiny.ipynb,01_tiny,PASSED,PASSED,PASSED,3,3,ok,bwrap,
wrong/01_tiny.ipynb,01_tiny,PASSED,PASSED,FAILED,2,3,ok,bwrap,
"""  # noqa: E501

EXPECTED_MD = """\
# Grading report

6 notebooks graded, 4 ran to the end.
1 notebook printed verdicts that the checks do not confirm: see `mismatches` (graded by the checks).
Limits: 15 s per cell, 120 s per notebook.
Sandbox limits: 8 GiB of memory per process, 1024 processes and threads, 2 MiB of output per cell.

| notebook | lesson | double | square | negate | passed | status | sandbox | mismatches |
|---|---|---|---|---|---|---|---|---|
| blank/01_tiny.ipynb | 01_tiny | NOT ATTEMPTED | NOT ATTEMPTED | NOT ATTEMPTED | 0/3 | ok | bwrap |  |
| crash/01_tiny.ipynb | 01_tiny | PASSED | not reached | not reached | 1/3 | error in cell 6: ValueError: invalid literal for int() with base 10: 'seven' | bwrap |  |
| fake/01_tiny.ipynb | 01_tiny | NOT ATTEMPTED | NOT ATTEMPTED | NOT ATTEMPTED | 0/3 | ok | bwrap | double: printed PASSED, checked NOT ATTEMPTED; square: printed PASSED, checked NOT ATTEMPTED; negate: printed PASSED, checked NOT ATTEMPTED |
| loop/01_tiny.ipynb | 01_tiny | PASSED | not reached | not reached | 1/3 | timed out in cell 8 (cell limit 15 s) | bwrap |  |
| solved/01_tiny.ipynb | 01_tiny | PASSED | PASSED | PASSED | 3/3 | ok | bwrap |  |
| wrong/01_tiny.ipynb | 01_tiny | PASSED | PASSED | FAILED | 2/3 | ok | bwrap |  |

Passed, per exercise:

- `double`: 4 of 6
- `square`: 2 of 6
- `negate`: 1 of 6

`not reached`: the notebook stopped before that checker ran; `missing`: it ran to the end without calling it. `cell N` counts code cells from the top. Verdicts come from the checks themselves, re-run after the last cell; `mismatches` lists printed verdict lines they do not confirm.

`sandbox`: `bwrap` ran in bubblewrap: no view of the grader's files or the other submissions, no network, limits on memory, processes, CPU time and output.
"""  # noqa: E501


def _kind() -> str:
    """The sandbox `course-grade` uses here by default: bubblewrap, or limits without it."""
    return sandbox.choose("auto")


def _for_kind(expected: str) -> str:
    """An expected report for this machine's sandbox (README's sample shows bubblewrap)."""
    kind = _kind()
    if kind == "bwrap":
        return expected
    return (expected.replace(",bwrap,", f",{kind},").replace("| bwrap |", f"| {kind} |")
            .replace(f"`bwrap` {grading.SANDBOX_KINDS['bwrap']}",
                     f"`{kind}` {grading.SANDBOX_KINDS[kind]}"))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Grade the five submissions once through the command's entry point."""
    root = tmp_path_factory.mktemp("grading")
    paths = submissions(root / "submitted")
    before = {student: _digest(p) for student, p in paths.items()}
    out = root / "report"
    code = grading.main([str(root / "submitted"), "--out", str(out),
                         "--cell-timeout", str(CELL_TIMEOUT), "--timeout", "120"])
    return {"code": code, "out": out, "paths": paths, "before": before}


def test_report_csv_is_exactly_as_expected(graded):
    assert graded["code"] == 0
    assert (graded["out"] / "report.csv").read_text() == _for_kind(EXPECTED_CSV)


def test_report_markdown_is_exactly_as_expected(graded):
    assert (graded["out"] / "report.md").read_text() == _for_kind(EXPECTED_MD)


def test_submitted_files_are_not_modified(graded):
    after = {student: _digest(p) for student, p in graded["paths"].items()}
    assert after == graded["before"]
    assert sorted(p.name for p in graded["paths"]["solved"].parent.iterdir()) == ["01_tiny.ipynb"]


def test_executed_copies_show_what_the_student_saw(graded):
    executed = graded["out"] / "executed" / "crash" / "01_tiny.ipynb"
    nb = nbformat.read(executed, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.output_type == "error"]
    # The tagged demo's expected ValueError, then the crash that stopped the notebook.
    assert [e.evalue for e in errors] == ["invalid literal for int() with base 10: 'seven'"] * 2
    # The reference list of exercises can come from a solved notebook's stored outputs.
    solved = graded["out"] / "executed" / "solved" / "01_tiny.ipynb"
    assert grading.expected_exercises([solved]) == {"01_tiny": ["double", "square", "negate"]}


def test_overall_timeout_stops_a_notebook(tmp_path):
    # A checked exercise, then a loop: the notebook limit (not the cell limit) stops it.
    path = _notebook(tmp_path, f"{SETUP}\n{CHECKERS}\ndouble = check_double(lambda x: 2 * x)",
                     "while True:\n    pass")
    result = grading.grade_notebook(path, cell_timeout=600, timeout=20)
    assert result.status == "timed out in cell 2 (notebook limit 20 s)"
    assert result.verdicts == {"double": "PASSED"} and not result.completed
    assert result.seconds < 120


def test_a_kernel_that_dies_is_reported_and_old_outputs_are_not_counted(tmp_path):
    code, stream = nbformat.v4.new_code_cell, nbformat.v4.new_output
    stale = stream("stream", name="stdout", text="PASSED b: from the student's last run\n")
    nb = nbformat.v4.new_notebook(cells=[
        code(f"{SETUP}\n_ = run_check('a', abs, abs, lambda f: 'ok', 'x')"),
        code("import os\nos._exit(1)"),
        code('print("FAILED b: never runs")', outputs=[stale])])
    path = tmp_path / "02_die.ipynb"
    nbformat.write(nb, path)
    result = grading.grade_notebook(path, executed_copy=tmp_path / "executed.ipynb")
    # The check's verdict was recorded before the kernel died; nothing could be re-checked.
    assert (result.status, result.verdicts, result.completed, result.rechecked) == (
        "kernel died in cell 2", {"a": "PASSED"}, False, False)
    assert result.printed == {"a": "PASSED"} and result.mismatches == []
    assert nbformat.read(tmp_path / "executed.ipynb", as_version=4).cells[2].outputs == []


def test_unreadable_notebook_is_reported_and_others_still_graded(tmp_path):
    submissions(tmp_path / "in")
    for student in ("crash", "loop", "wrong", "blank", "fake"):
        (tmp_path / "in" / student / "01_tiny.ipynb").unlink()
    (tmp_path / "in" / "broken.ipynb").write_text("{not json")
    out = tmp_path / "out"
    assert grading.main([str(tmp_path / "in"), "--out", str(out)]) == 0
    rows = (out / "report.csv").read_text().splitlines()
    # Two lessons now ("broken" from its file name): columns are lesson-qualified.
    assert rows[0] == ("notebook,lesson,01_tiny:double,01_tiny:square,01_tiny:negate,"
                       "passed,total,status,sandbox,mismatches")
    assert rows[1].startswith("broken.ipynb,broken,,,,0,0,unreadable notebook: ")
    assert rows[2] == f"solved/01_tiny.ipynb,01_tiny,PASSED,PASSED,PASSED,3,3,ok,{_kind()},"
    assert len(rows) == 3


def test_several_lessons_get_lesson_qualified_columns():
    results = [
        NotebookResult("a/01_gpu_basics.ipynb", "01_gpu_basics", {"matmul_flops": "PASSED"},
                       ["matmul_flops"], completed=True),
        NotebookResult("a/02_jit.ipynb", "02_jit", {"relu": "FAILED"}, ["relu"],
                       completed=False, status="error in cell 3: KeyError: 'x'"),
    ]
    expected = {"02_jit": ["relu", "gelu"], "05_cnn": ["conv"]}  # 05 is not graded: no column
    assert grading.render_csv(results, expected) == (
        "notebook,lesson,01_gpu_basics:matmul_flops,02_jit:relu,02_jit:gelu,passed,total,status,"
        "sandbox,mismatches\n"
        "a/01_gpu_basics.ipynb,01_gpu_basics,PASSED,,,1,1,ok,off,\n"
        "a/02_jit.ipynb,02_jit,,FAILED,not reached,0,2,error in cell 3: KeyError: 'x',off,\n")


def test_missing_checker_in_a_completed_notebook_is_marked_missing():
    results = [
        NotebookResult("x.ipynb", "01_tiny", {"double": "PASSED"}, ["double"], completed=True),
        NotebookResult("y.ipynb", "01_tiny", {"double": "PASSED", "negate": "FAILED"},
                       ["double", "negate"], completed=True),
    ]
    csv_text = grading.render_csv(results)
    assert csv_text.splitlines()[1] == "x.ipynb,01_tiny,PASSED,missing,1,2,ok,off,"
    markdown = grading.render_markdown(results)
    assert "| y.ipynb | 01_tiny | PASSED | FAILED | 1/2 | ok | off |  |" in markdown


def test_markdown_escapes_pipes_in_status():
    results = [NotebookResult("z.ipynb", "01_tiny", status="error in cell 2: ValueError: a|b")]
    assert "ValueError: a\\|b | off |" in grading.render_markdown(results)


@pytest.mark.parametrize(("name", "title", "lesson"), [
    ("01_gpu_basics.ipynb", None, "01_gpu_basics"),
    ("Copy of 02_jit (1).ipynb", None, "02_jit"),
    ("alice_03_vmap_grad.ipynb", None, "03_vmap_grad"),
    ("homework.ipynb", "# 04 · An MNIST MLP\n\ntext", "04_an_mnist_mlp"),
    ("homework.ipynb", "Some notes", "homework"),
])
def test_lesson_from_file_name_or_title(name, title, lesson):
    nb = {"cells": [{"cell_type": "markdown", "source": title}]} if title else None
    assert grading.lesson_of(Path(name), nb) == lesson


def test_verdicts_are_read_from_stdout_only_even_when_split():
    outputs = [
        {"output_type": "stream", "name": "stdout", "text": "hello\nPASSED re"},
        {"output_type": "stream", "name": "stdout", "text": "lu: fine\nFAILED gelu: no\n"},
        {"output_type": "stream", "name": "stderr", "text": "PASSED fake: from stderr\n"},
        {"output_type": "execute_result", "data": {"text/plain": "'PASSED quoted: no'"}},
        {"output_type": "display_data", "data": {"text/plain": "NOT ATTEMPTED softmax: later"}},
    ]
    assert grading.verdicts_in_outputs(outputs) == [
        ("relu", "PASSED"), ("gelu", "FAILED"), ("softmax", "NOT ATTEMPTED")]


def test_command_line_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        grading.main([str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "no notebooks found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        grading.main([str(tmp_path / "nope"), "--out", str(tmp_path / "out")])


def test_a_second_run_into_the_same_folder_skips_the_executed_copies(tmp_path):
    path = submissions(tmp_path / "in")["solved"]
    for other in ("blank", "wrong", "crash", "loop", "fake"):
        (tmp_path / "in" / other / "01_tiny.ipynb").unlink()
    out = tmp_path / "in" / "report"  # the report folder inside the submissions folder
    for _ in range(2):
        assert grading.main([str(tmp_path / "in"), "--out", str(out)]) == 0
        assert (out / "report.csv").read_text().splitlines()[1:] == [
            f"solved/01_tiny.ipynb,01_tiny,PASSED,PASSED,PASSED,3,3,ok,{_kind()},"]
    assert path.exists()


def test_module_runs_as_a_command():
    done = subprocess.run([sys.executable, "-m", "utils.grading", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "--cell-timeout" in done.stdout and "--sandbox" in done.stdout


# ------------------------------------------------------------- verdicts printing cannot forge

def _notebook(tmp_path: Path, *sources: str, name: str = "03_forge.ipynb") -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


def test_printed_verdicts_without_any_check_count_for_nothing(tmp_path):
    path = _notebook(tmp_path, 'print("PASSED double: ok")\nprint("PASSED square: ok")')
    result = grading.grade_notebook(path)
    assert result.sandbox == "off"  # from Python: no sandbox unless asked (run_notebooks.py)
    assert result.completed and result.verdicts == {}
    assert result.mismatches == ["double: printed PASSED, never checked",
                                 "square: printed PASSED, never checked"]
    row = grading.render_csv([result], {"03_forge": ["double", "square"]}).splitlines()[1]
    assert row.startswith("03_forge.ipynb,03_forge,missing,missing,0,2,ok,")


def test_a_fake_passed_line_after_a_real_failure_is_graded_as_the_failure(tmp_path):
    path = _notebook(tmp_path, SETUP, CHECKERS, "def double(x):\n    return x",
                     "double = check_double(double)",
                     'print("PASSED double: matches the reference on 3 inputs")')
    result = grading.grade_notebook(path)
    assert result.verdicts == {"double": "FAILED"} and result.rechecked
    assert result.mismatches == ["double: printed PASSED, checked FAILED"]


def test_the_recheck_grades_the_function_as_it_is_after_the_last_cell(tmp_path):
    # Passes when checked, then a later cell changes what it computes: the re-check, run
    # after the last cell, grades what the function now does, and says so.
    path = _notebook(tmp_path, SETUP, CHECKERS, "SCALE = 2\ndef double(x):\n    return SCALE * x",
                     "double = check_double(double)", "SCALE = 3")
    result = grading.grade_notebook(path)
    assert result.verdicts == {"double": "FAILED"} and result.rechecked
    assert result.printed == {"double": "PASSED"}
    assert result.mismatches == ["double: checked PASSED, re-checked FAILED",
                                 "double: printed PASSED, checked FAILED"]


def test_stderr_of_cells_is_collected(tmp_path):
    path = _notebook(tmp_path, 'import sys\nprint("careful", file=sys.stderr)', "x = 1")
    assert grading.grade_notebook(path).stderr == ["cell 1: careful"]


def test_a_torn_or_foreign_record_line_is_ignored(tmp_path):
    record = tmp_path / "record.jsonl"
    record.write_text('{"phase": "check", "exercise": "a", "verdict": "PASSED"}\n'
                      '{"phase": "check", "exercise": "b", "verdict": "GREAT"}\n'
                      '{"phase": "check", "exer')
    result = NotebookResult("x.ipynb", "01_x")
    grading._read_record(record, result)
    assert result.verdicts == {"a": "PASSED"} and result.order == ["a"]


def test_readme_sample_report_is_the_real_one():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert EXPECTED_MD in readme and EXPECTED_CSV in readme, (
        "README.md's sample report differs from what the tests expect: paste the new one")
