"""Tests of tools/generate_course.py, and that course/ is exactly what it generates.

The notebook checks read solutions/ and course/ and never write to them; they pass with
any number of notebooks, zero included.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_generator() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("generate_course",
                                                  ROOT / "tools" / "generate_course.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
REPOSITORY = PYPROJECT["tool"]["course"]["repository"].rstrip("/")
BRANCH = PYPROJECT["tool"]["course"]["branch"]
SETTINGS = gen.course_settings()
NOTEBOOKS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb")) + sorted(
    (ROOT / "course").glob("*.ipynb"))


# ---------------------------------------------------------------------------- stub_code

def test_stub_code_replaces_a_block_keeping_indentation_and_hint():
    source = '''def relu(x):
    """Elementwise max(x, 0)."""
    ### BEGIN SOLUTION use jnp.maximum
    # a comment does not count as a line
    y = jnp.maximum(x, 0)

    return y
    ### END SOLUTION'''
    assert gen.stub_code(source) == '''def relu(x):
    """Elementwise max(x, 0)."""
    # YOUR CODE HERE (about 2 lines): use jnp.maximum
    raise NotImplementedError('use jnp.maximum')'''


def test_stub_code_handles_several_blocks_tabs_and_no_hint():
    source = "\n".join([
        "import jax",
        "def f(x):",
        "\t### BEGIN SOLUTION: double it",
        "\treturn 2 * x",
        "\t### END SOLUTION",
        "",
        "class Model:",
        "    def g(self, x):",
        "        ### BEGIN SOLUTION",
        "        return x + 1",
        "        ### END SOLUTION",
        "",
        "print('kept')",
    ])
    out = gen.stub_code(source).split("\n")
    assert out == [
        "import jax",
        "def f(x):",
        "\t# YOUR CODE HERE (about 1 line): double it",
        "\traise NotImplementedError('double it')",
        "",
        "class Model:",
        "    def g(self, x):",
        f"        # YOUR CODE HERE (about 1 line): {gen.DEFAULT_HINT}",
        f"        raise NotImplementedError({gen.DEFAULT_HINT!r})",
        "",
        "print('kept')",
    ]


def test_stubbed_code_is_valid_python_that_raises_the_hint():
    source = '''def f(x):
    ### BEGIN SOLUTION use "quotes" and 'apostrophes' \\ safely
    return x
    ### END SOLUTION
'''
    stub = gen.stub_code(source)
    ast.parse(stub)
    namespace: dict = {}
    exec(stub, namespace)
    with pytest.raises(NotImplementedError) as info:
        namespace["f"](1)
    assert str(info.value) == "use \"quotes\" and 'apostrophes' \\ safely"


def test_stub_code_without_markers_is_unchanged():
    source = "x = 1\n# ### not a marker: BEGIN SOLUTION\n\ny = 2\n"
    assert gen.stub_code(source) == source


@pytest.mark.parametrize(("source", "match"), [
    ("x = 1\n### END SOLUTION", "END SOLUTION' without BEGIN"),
    ("### BEGIN SOLUTION\nx = 1", "BEGIN SOLUTION' without END"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION", "nested"),
    ("### BEGIN SOLUTION\nx=1\n### END SOLUTION\n### END SOLUTION", "without BEGIN"),
])
def test_stub_code_rejects_unbalanced_markers(source, match):
    with pytest.raises(ValueError, match=match) as info:
        gen.stub_code(source, where="solutions/99_x.ipynb")
    assert "solutions/99_x.ipynb" in str(info.value)


# ---------------------------------------------------------------------------- notebooks

def lesson(name: str = "07_demo.ipynb") -> nbformat.NotebookNode:
    """A small solved lesson: title cell, setup, an exercise, a solution-only cell."""
    nb = nbformat.v4.new_notebook()
    solution_only = nbformat.v4.new_markdown_cell("Only in the solution.")
    solution_only.metadata["tags"] = ["solution-only"]
    secret = nbformat.v4.new_code_cell("print('teacher')")
    secret.metadata["tags"] = ["solution-only", "nbval-ignore-output"]
    exercise = nbformat.v4.new_code_cell(
        "def relu(x):\n    ### BEGIN SOLUTION jnp.maximum\n    return jnp.maximum(x, 0)\n"
        "    ### END SOLUTION")
    exercise.execution_count = 3
    exercise.metadata["execution"] = {"iopub.status.idle": "2026-11-21T00:00:00Z"}
    exercise.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hi\n")]
    tagged = nbformat.v4.new_code_cell("1 / 0")
    tagged.metadata["tags"] = ["raises-exception"]
    nb.cells = [
        nbformat.v4.new_markdown_cell("# 07 · Demo\n**You will learn**\n- things"),
        nbformat.v4.new_code_cell("%xmode minimal\nimport jax.numpy as jnp", execution_count=1),
        solution_only, exercise, secret, tagged,
    ]
    return nb


def test_sync_solution_writes_badge_and_colab_cell_once():
    nb = lesson()
    synced = gen.sync_solution(nb, "07_demo.ipynb", SETTINGS)
    title = synced.cells[0].source.split("\n")
    assert title[:4] == ["# 07 · Demo", "", gen.badge_line("solutions", "07_demo.ipynb",
                                                           SETTINGS), ""]
    assert title[4] == "**You will learn**"  # the badge is a paragraph of its own
    code = [c for c in synced.cells if c.cell_type == "code"]
    assert code[0].source == gen.colab_cell_source(SETTINGS)
    assert code[0].id == gen.COLAB_CELL_ID
    assert synced.cells[1] is code[0]  # right before the first code cell
    assert len(synced.cells) == len(nb.cells) + 1
    assert nb.cells[0].source.startswith("# 07 · Demo\n**You")  # the input is not modified
    # idempotent: syncing again changes nothing
    assert gen.render(gen.sync_solution(synced, "07_demo.ipynb", SETTINGS)) == gen.render(synced)


def test_sync_solution_replaces_an_outdated_badge_and_colab_cell():
    original = lesson()
    nb = gen.sync_solution(original, "07_demo.ipynb", SETTINGS)
    old = {"repository": "https://github.com/someone/old-name", "branch": "dev"}
    stale = gen.sync_solution(original, "07_demo.ipynb", old)
    assert "someone/old-name" in stale.cells[0].source
    assert "someone/old-name" in [c for c in stale.cells if c.cell_type == "code"][0].source
    fixed = gen.sync_solution(stale, "07_demo.ipynb", SETTINGS)
    assert gen.render(fixed) == gen.render(nb)


@pytest.mark.parametrize("title", [
    "# 07 · Demo\n**You will learn**",
    "# 07 · Demo\n\n**You will learn**",
    "# 07 · Demo\n[![Open In Colab](x.svg)](https://old/url)\n**You will learn**",
    "# 07 · Demo\n\n[![Open In Colab](x.svg)](https://old/url)\n\n\n**You will learn**",
])
def test_the_badge_is_its_own_paragraph_under_the_title(title):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(title)]
    badge = gen.badge_line("solutions", "07_demo.ipynb", SETTINGS)
    expected = f"# 07 · Demo\n\n{badge}\n\n**You will learn**"
    synced = gen.sync_solution(nb, "07_demo.ipynb", SETTINGS)
    assert synced.cells[0].source == expected
    assert gen.sync_solution(synced, "07_demo.ipynb", SETTINGS).cells[0].source == expected
    student = gen.make_student(synced, "07_demo.ipynb", SETTINGS)
    assert student.cells[0].source == expected.replace("/solutions/", "/course/")


@pytest.mark.parametrize("first", [nbformat.v4.new_code_cell("x = 1"),
                                   nbformat.v4.new_markdown_cell("No title here")])
def test_sync_solution_requires_a_title_cell(first):
    nb = nbformat.v4.new_notebook()
    nb.cells = [first]
    with pytest.raises(ValueError, match="first cell"):
        gen.sync_solution(nb, "07_demo.ipynb", SETTINGS)


def test_make_student_drops_solution_only_clears_outputs_and_stubs():
    solution = gen.sync_solution(lesson(), "07_demo.ipynb", SETTINGS)
    before = gen.render(solution)
    student = gen.make_student(solution, "07_demo.ipynb", SETTINGS)
    assert gen.render(solution) == before  # the solution is not modified

    sources = [c.source for c in student.cells]
    assert "Only in the solution." not in sources and "print('teacher')" not in sources
    assert len(student.cells) == len(solution.cells) - 2
    for cell in student.cells:
        assert "solution-only" not in cell.metadata.get("tags", [])
        assert "execution" not in cell.metadata
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
            assert "### BEGIN SOLUTION" not in cell.source
            assert "jnp.maximum(x, 0)" not in cell.source
    exercise = next(c for c in student.cells if c.source.startswith("def relu"))
    assert "raise NotImplementedError('jnp.maximum')" in exercise.source
    assert next(c for c in student.cells if c.source == "1 / 0").metadata["tags"] == [
        "raises-exception"]
    badge = gen.badge_line("course", "07_demo.ipynb", SETTINGS)
    assert badge in student.cells[0].source and "/solutions/" not in student.cells[0].source
    nbformat.validate(student)


def test_badge_and_colab_cell_use_the_repository_from_pyproject():
    assert SETTINGS == {"repository": REPOSITORY, "branch": BRANCH}
    path = REPOSITORY.removeprefix("https://github.com/")
    assert gen.badge_line("course", "03_x.ipynb", SETTINGS) == (
        "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"(https://colab.research.google.com/github/{path}/blob/{BRANCH}/course/03_x.ipynb)")
    cell = gen.colab_cell_source(SETTINGS)
    assert f'"jax-gpu-course @ git+{REPOSITORY}@{BRANCH}"' in cell
    ast.parse(cell)


def test_course_settings_reads_tool_course(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.course]\nrepository = "https://github.com/a/b/"\nbranch = "x"\n')
    settings = gen.course_settings(pyproject)
    assert settings == {"repository": "https://github.com/a/b", "branch": "x"}
    assert "github/a/b/blob/x/solutions/01_y.ipynb)" in gen.badge_line("solutions",
                                                                       "01_y.ipynb", settings)


def test_out_of_date_finds_stale_missing_and_stray_notebooks(tmp_path):
    solutions, course = tmp_path / "solutions", tmp_path / "course"
    solutions.mkdir()
    course.mkdir()
    assert gen.out_of_date(solutions, course) == []  # zero notebooks: nothing to do

    nbformat.write(lesson(), solutions / "07_demo.ipynb")
    stale = gen.out_of_date(solutions, course)
    assert stale == [str(solutions / "07_demo.ipynb"), str(course / "07_demo.ipynb")]

    for path, text in gen.planned_files(solutions, course).items():
        path.write_text(text)
    assert gen.out_of_date(solutions, course) == []

    (course / "99_orphan.ipynb").write_text(gen.render(lesson()))
    (course / "07_demo.ipynb").write_text(gen.render(lesson()))
    assert gen.out_of_date(solutions, course) == [
        str(course / "07_demo.ipynb"), f"{course / '99_orphan.ipynb'} (no solution of that name)"]


# ---------------------------------------------------------------------------- the repository

def test_course_is_generated_from_solutions():
    stale = gen.out_of_date()
    assert not stale, (
        "course/ (or a solution's badge / Colab cell) is not what tools/generate_course.py "
        "makes from solutions/:\n  " + "\n  ".join(stale)
        + "\nRun `make course` (python tools/generate_course.py) and commit the result.")


def _notebook_problems(path: Path) -> list[str]:
    folder = path.parent.name
    nb = nbformat.read(path, as_version=4)
    problems = []
    badge = gen.badge_line(folder, path.name, SETTINGS)
    badges = sum(c.source.count("colab-badge.svg") for c in nb.cells)
    if not nb.cells or nb.cells[0].cell_type != "markdown":
        problems.append("the first cell is not a Markdown title cell")
    elif badge not in nb.cells[0].source.split("\n"):
        problems.append(f"the first cell has no badge line pointing at {folder}/{path.name}")
    if badges != 1:
        problems.append(f"{badges} Colab badges (expected exactly 1)")
    code = [c for c in nb.cells if c.cell_type == "code"]
    if not code or code[0].source != gen.colab_cell_source(SETTINGS):
        problems.append("the first code cell is not the exact Colab set-up cell")
    if sum(c.source == gen.colab_cell_source(SETTINGS) for c in code) > 1:
        problems.append("the Colab set-up cell appears more than once")
    return [f"{folder}/{path.name}: {p}" for p in problems]


def test_every_notebook_has_one_badge_and_the_colab_setup_cell():
    problems = [p for path in NOTEBOOKS for p in _notebook_problems(path)]
    assert not problems, "\n".join(problems) + "\nRun `make course`."


def test_notebook_problems_are_detected(tmp_path):
    folder = tmp_path / "course"
    folder.mkdir()
    good = gen.make_student(gen.sync_solution(lesson(), "07_demo.ipynb", SETTINGS),
                            "07_demo.ipynb", SETTINGS)
    nbformat.write(good, folder / "07_demo.ipynb")
    assert _notebook_problems(folder / "07_demo.ipynb") == []
    nbformat.write(good, folder / "08_other.ipynb")  # badge points at 07_demo
    assert any("no badge line" in p for p in _notebook_problems(folder / "08_other.ipynb"))
    good.cells[1].source += "\nprint(1)"
    good.cells.append(nbformat.v4.new_markdown_cell(good.cells[0].source))
    nbformat.write(good, folder / "07_demo.ipynb")
    problems = _notebook_problems(folder / "07_demo.ipynb")
    assert any("2 Colab badges" in p for p in problems)
    assert any("not the exact Colab set-up cell" in p for p in problems)


# ---------------------------------------------------------------------------- the Colab cell
# What the cell's set-up does on Colab (keep or upgrade JAX) is tested in tests/test_colab.py
# and, on a replica of Colab's package set, by tools/test_colab.sh.

@pytest.fixture
def colab_cell(monkeypatch):
    """Runs the Colab cell's source; subprocess.run and utils.colab.set_up only record calls."""
    from utils import colab

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: calls.append((args, kwargs)))
    monkeypatch.setattr(colab, "set_up", lambda source: calls.append(("set_up", source)))

    def run():
        exec(compile(gen.colab_cell_source(SETTINGS), "<colab cell>", "exec"), {})
        return calls

    return run


def test_colab_cell_does_nothing_outside_colab(colab_cell, monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert colab_cell() == []


def test_colab_cell_installs_the_course_alone_then_sets_up(colab_cell, monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.delenv("COURSE_INSTALL_SOURCE", raising=False)
    calls = colab_cell()
    source = f"jax-gpu-course @ git+{REPOSITORY}@{BRANCH}"
    assert len(calls) == 2
    (command,), kwargs = calls[0]
    # The course's code only (no dependencies, so nothing of Colab's changes yet) ...
    assert command == [sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                       "--root-user-action=ignore", source]
    assert kwargs.get("check") is True
    # ... then utils.colab decides what else to install, in one pip call.
    assert calls[1] == ("set_up", source)


def test_colab_cell_takes_the_install_source_from_the_environment(colab_cell, monkeypatch):
    """Only the tests set it (a local checkout instead of the repository URL)."""
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setenv("COURSE_INSTALL_SOURCE", "/tmp/checkout")
    calls = colab_cell()
    assert calls[0][0][0][-1] == "/tmp/checkout" and calls[1] == ("set_up", "/tmp/checkout")
