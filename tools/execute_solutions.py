"""Execute solution notebooks in place, store their outputs, then regenerate course/.

    python tools/execute_solutions.py                       # every solutions/NN_*.ipynb
    python tools/execute_solutions.py solutions/01_gpu_basics.ipynb

Runs each notebook top to bottom in a fresh kernel of this Python (working directory:
solutions/), without recording timestamps, so a re-run changes only what really changed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate_course  # noqa: E402


def execute(path: Path, timeout: int = 900) -> float:
    """Execute one notebook in place; return the seconds it took."""
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    # No timestamps and no widget state (progress bars): a re-run then changes only what
    # really changed.
    NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                   store_widget_state=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    nb.metadata.pop("widgets", None)
    seconds = time.perf_counter() - start
    path.write_text(generate_course.render(nb))
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(generate_course.SOLUTIONS.glob("[0-9][0-9]_*.ipynb"))
    # Like the tests: the verified dataset copies beside the repository, when present.
    shared_data = generate_course.ROOT.parent / "shared" / "data"
    if not os.environ.get("COURSE_DATA_DIR") and shared_data.is_dir():
        os.environ["COURSE_DATA_DIR"] = str(shared_data)
    generate_course.main([])  # badges and Colab cell first, so they are executed too
    for path in paths:
        print(f"{path}: executed in {execute(path.resolve()):.1f} s")
    return generate_course.main([])


if __name__ == "__main__":
    sys.exit(main())
