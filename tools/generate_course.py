"""Generate the student notebooks in ``course/`` from the solved ones in ``solutions/``.

``solutions/`` is the only place a lesson is written. For each ``solutions/NN_name.ipynb``
this script:

1. writes the "Open in Colab" badge (under the H1 title) and the Colab set-up cell (the
   first code cell) into the solution, from the repository URL in ``pyproject.toml``
   (``[tool.course]``), the one place that URL is written;
2. writes ``course/NN_name.ipynb``: code between ``### BEGIN SOLUTION`` and
   ``### END SOLUTION`` becomes a stub (``# YOUR CODE HERE`` and
   ``raise NotImplementedError`` with a one-line hint; text after ``BEGIN SOLUTION`` on
   the marker line is that hint), outputs and execution counts are cleared, and cells
   tagged ``solution-only`` are dropped.

Usage::

    python tools/generate_course.py          # write course/ (and badges in solutions/)
    python tools/generate_course.py --check  # exit 1 and list notebooks that are out of date
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import tomllib
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"
COURSE = ROOT / "course"

BEGIN = re.compile(r"^(?P<indent>[ \t]*)### BEGIN SOLUTION\b[ :\-]*(?P<hint>.*)$")
END = re.compile(r"^[ \t]*### END SOLUTION\b")
BADGE = re.compile(r"^\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)[ \t]*$", re.MULTILINE)
COLAB_BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
SOLUTION_ONLY_TAG = "solution-only"
COLAB_CELL_ID = "colab-setup"
DEFAULT_HINT = "replace this line with your solution"

COLAB_CELL = '''\
# Colab set-up: on Google Colab this installs the course helpers and, when Colab's own JAX
# is older than the course needs, the course's tested JAX stack (utils/colab.py says how).
# Elsewhere it does nothing.
import sys

if "google.colab" in sys.modules:
    import importlib
    import os
    import subprocess

    source = os.environ.get("COURSE_INSTALL_SOURCE",
                            "jax-gpu-course @ git+{repository}@{branch}")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--root-user-action=ignore", source], check=True)
    importlib.invalidate_caches()
    from utils import colab

    colab.set_up(source)'''


def course_settings(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """``{"repository": URL, "branch": NAME}`` from ``[tool.course]`` in pyproject.toml."""
    settings = tomllib.loads(pyproject.read_text())["tool"]["course"]
    return {"repository": settings["repository"].rstrip("/"), "branch": settings["branch"]}


def badge_line(folder: str, name: str, settings: dict[str, str]) -> str:
    """The Markdown "Open in Colab" badge for ``folder/name`` (folder: course or solutions)."""
    repo = settings["repository"].removeprefix("https://").removeprefix("github.com/")
    url = f"https://colab.research.google.com/github/{repo}/blob/{settings['branch']}/{folder}/{name}"
    return f"[![Open In Colab]({COLAB_BADGE_IMAGE})]({url})"


def colab_cell_source(settings: dict[str, str]) -> str:
    """The exact source of every notebook's first code cell."""
    # str.replace, not str.format: the cell's own code contains braces.
    return (COLAB_CELL.replace("{repository}", settings["repository"])
            .replace("{branch}", settings["branch"]))


def stub_code(source: str, where: str = "") -> str:
    """Replace each BEGIN/END SOLUTION block of a code cell's source with a stub."""
    out: list[str] = []
    lines = source.split("\n")
    i = 0
    while i < len(lines):
        begin = BEGIN.match(lines[i])
        if not begin:
            if END.match(lines[i]):
                raise ValueError(f"{where}: '### END SOLUTION' without BEGIN:\n{source}")
            out.append(lines[i])
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not END.match(lines[j]):
            if BEGIN.match(lines[j]):
                raise ValueError(f"{where}: nested '### BEGIN SOLUTION':\n{source}")
            j += 1
        if j == len(lines):
            raise ValueError(f"{where}: '### BEGIN SOLUTION' without END:\n{source}")
        body = [line for line in lines[i + 1 : j]
                if line.strip() and not line.strip().startswith("#")]
        indent, hint = begin["indent"], begin["hint"].strip() or DEFAULT_HINT
        about = f" (about {len(body)} line{'s' if len(body) != 1 else ''})"
        out.append(f"{indent}# YOUR CODE HERE{about}: {hint}")
        out.append(f"{indent}raise NotImplementedError({hint!r})")
        i = j + 1
    return "\n".join(out)


def _with_badge(source: str, badge: str, where: str) -> str:
    """The title cell with ``badge`` as its own paragraph right under the H1 title."""
    lines = source.split("\n")
    if not lines or not lines[0].startswith("# "):
        raise ValueError(f"{where}: the first cell must start with an H1 title ('# ...').")
    rest = [line for line in lines[1:] if not BADGE.match(line)]  # any old badge goes
    while rest and not rest[0].strip():
        rest.pop(0)
    # Blank lines around the badge keep it out of the title's and the next paragraph.
    return "\n".join([lines[0], "", badge, *([""] if rest else []), *rest])


def sync_solution(
    nb: nbformat.NotebookNode, name: str, settings: dict[str, str]
) -> nbformat.NotebookNode:
    """The solution notebook with its badge and Colab set-up cell written in (a copy)."""
    nb = copy.deepcopy(nb)
    where = f"solutions/{name}"
    if not nb.cells or nb.cells[0].cell_type != "markdown":
        raise ValueError(f"{where}: the first cell must be a Markdown title cell.")
    badge = badge_line("solutions", name, settings)
    nb.cells[0].source = _with_badge(nb.cells[0].source, badge, where)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    source = colab_cell_source(settings)
    if code and nb.cells[code[0]].get("id") == COLAB_CELL_ID:
        nb.cells[code[0]].source = source
    else:
        cell = nbformat.v4.new_code_cell(source)
        cell.id = COLAB_CELL_ID
        nb.cells.insert(code[0] if code else len(nb.cells), cell)
    return nb


def make_student(
    solution: nbformat.NotebookNode, name: str, settings: dict[str, str]
) -> nbformat.NotebookNode:
    """The student notebook generated from a (synced) solution notebook."""
    nb = copy.deepcopy(solution)
    nb.metadata.pop("widgets", None)  # widget state belongs to outputs, which are cleared
    cells = []
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if SOLUTION_ONLY_TAG in tags:
            continue
        cell.get("metadata", {}).pop("execution", None)
        if cell.cell_type == "code":
            cell.source = stub_code(cell.source, where=f"solutions/{name}")
            cell.outputs = []
            cell.execution_count = None
        cells.append(cell)
    nb.cells = cells
    nb.cells[0].source = BADGE.sub(lambda _: badge_line("course", name, settings),
                                   nb.cells[0].source, count=1)
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    """A notebook as the text written to disk (stable: sorted keys, trailing newline)."""
    return nbformat.writes(nb, version=4) + "\n"


def planned_files(solutions: Path = SOLUTIONS, course: Path = COURSE) -> dict[Path, str]:
    """Every file this script writes, with its intended text."""
    settings = course_settings()
    planned: dict[Path, str] = {}
    for path in sorted(solutions.glob("[0-9][0-9]_*.ipynb")):
        solution = sync_solution(nbformat.read(path, as_version=4), path.name, settings)
        planned[path] = render(solution)
        planned[course / path.name] = render(make_student(solution, path.name, settings))
    return planned


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def out_of_date(solutions: Path = SOLUTIONS, course: Path = COURSE) -> list[str]:
    """Files that differ from what the script would write, plus stray course notebooks."""
    planned = planned_files(solutions, course)
    stale = [_shown(p) for p, text in planned.items()
             if not p.exists() or p.read_text() != text]
    stale += [f"{_shown(p)} (no solution of that name)"
              for p in sorted(course.glob("*.ipynb")) if p not in planned]
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if any notebook is out of date")
    args = parser.parse_args(argv)
    if args.check:
        stale = out_of_date()
        for name in stale:
            print(f"out of date: {name}")
        if stale:
            print("Run `python tools/generate_course.py` and commit the result.")
        return 1 if stale else 0
    for path, text in planned_files().items():
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
