"""Drive JupyterLab in a real Chromium for tests/test_browser.py.

Three parts:

* :func:`lab_server` starts ``jupyter lab`` the way ``make lab`` does
  (``--config=jupyter/jupyter_server_config.py``) on a free port with a random token,
  rooted at a temporary folder, with a fresh HOME and Jupyter/IPython folders; it always
  stops the whole process group (kernels included) on the way out.
* :func:`run_in_lab` opens one notebook in the browser, runs all its cells from the Run menu,
  waits until the kernel is idle and no cell is pending, and returns what the page shows
  (:class:`CellView` per cell).
* :func:`problems_in_run` is the verdict on a run, a pure function of what the page showed,
  the notebook's JSON (for the ``raises-exception`` tags) and the exercises expected.

How an error looks in the DOM: JupyterLab renders an exception with the same mime type as
text on stderr (``application/vnd.jupyter.stderr``), and under ``%xmode minimal`` without the
word "Traceback"; its last line is always ``ExceptionName: message``. A tagged cell
(``raises-exception``) shows the same; JupyterLab's Run All goes on after it, but stops at an
untagged error, leaving the cells below unrun (``[ ]:``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.exercises import VERDICT_LINE

ROOT = Path(__file__).resolve().parent.parent
SERVER_CONFIG = ROOT / "jupyter" / "jupyter_server_config.py"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
STDERR_MIME = "application/vnd.jupyter.stderr"
STDOUT_MIME = "application/vnd.jupyter.stdout"
#: The last line of a rendered exception: ``ValueError: ...``, ``jax.errors.Foo: ...``,
#: ``KeyboardInterrupt``. Warnings (``file.py:3: UserWarning: ...``) do not match.
EXCEPTION_LINE = re.compile(
    r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit|Failed|Iteration)"
    r"(?::.*)?$")
TRACEBACK = "Traceback (most recent call last)"


def chromium_path() -> str | None:
    """Chromium to drive: ``$COURSE_CHROMIUM``, else Debian's ``/usr/bin/chromium``, else PATH."""
    for candidate in (os.environ.get("COURSE_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


# --------------------------------------------------------------------------- the server

@dataclass
class LabServer:
    url: str
    token: str
    root_dir: Path
    process: subprocess.Popen
    log_path: Path

    def api(self, method: str, path: str) -> Any:
        """Call the server's REST API (token in the header); returns the decoded JSON."""
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """Shut down every kernel session (frees memory between notebooks)."""
        for session in self.api("GET", "/api/sessions"):
            with contextlib.suppress(urllib.error.URLError):
                self.api("DELETE", f"/api/sessions/{session['id']}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _jupyter_command() -> list[str]:
    jupyter = Path(sys.executable).with_name("jupyter")
    return [str(jupyter), "lab"] if jupyter.exists() else [sys.executable, "-m", "jupyter", "lab"]


def _stop(process: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM the server's process group (it shuts its kernels down), wait up to ``grace``
    seconds, then SIGKILL whatever is left in the group."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):  # kernels left in the group, if any
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


@contextlib.contextmanager
def lab_server(root_dir: Path, state_dir: Path, startup_timeout: float = 90,
               extra_env: dict[str, str] | None = None) -> Iterator[LabServer]:
    """``jupyter lab --config=jupyter/jupyter_server_config.py`` on ``root_dir`` (a copy).

    Adds only what a test needs: no browser, a free port, a random token, the root folder,
    and a fresh HOME / JUPYTER_CONFIG_DIR / JUPYTER_DATA_DIR / JUPYTER_RUNTIME_DIR /
    IPYTHONDIR under ``state_dir``. The kernel is this Python's (it imports ``utils``);
    the environment (``COURSE_DATA_DIR`` included) is inherited, except ``MPLBACKEND``,
    which the test session sets and ``make lab`` does not. ``extra_env`` is added on top
    (``{"COURSE_WORK": "smoke"}`` for blank runs).
    """
    token = secrets.token_hex(24)
    port = _free_port()
    home = state_dir / "home"
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)
    env.update(HOME=str(home), JUPYTER_CONFIG_DIR=str(state_dir / "jupyter-config"),
               JUPYTER_DATA_DIR=str(state_dir / "jupyter-data"),
               JUPYTER_RUNTIME_DIR=str(state_dir / "jupyter-runtime"),
               IPYTHONDIR=str(state_dir / "ipython"), **(extra_env or {}))
    for name in ("HOME", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR",
                 "IPYTHONDIR"):
        Path(env[name]).mkdir(parents=True, exist_ok=True)
    command = [*_jupyter_command(), f"--config={SERVER_CONFIG}", "--no-browser",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root_dir}"]
    log_path = state_dir / "jupyter-server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, cwd=state_dir, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = LabServer(f"http://127.0.0.1:{port}", token, root_dir, process, log_path)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {process.returncode}:\n"
                                   f"{server.log_tail()}")
            try:
                server.api("GET", "/api/status")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"jupyter lab did not answer within {startup_timeout:g} s:"
                                       f"\n{server.log_tail()}") from None
                time.sleep(0.3)
        yield server
    finally:
        _stop(process)


def copy_for_lab(notebooks: Sequence[Path], dest: Path) -> list[Path]:
    """Copy notebooks into ``dest`` with outputs and execution counts cleared (so "has this
    cell run?" is read from a clean page); the repository's files are only read."""
    import nbformat

    dest.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs = []
                cell.execution_count = None
        nbformat.write(nb, dest / path.name)
        copies.append(dest / path.name)
    return copies


# --------------------------------------------------------------------------- the page

@dataclass
class CellView:
    """One cell as the page shows it: ``kind`` (code/markdown/raw), the input prompt
    (``"[3]:"``, ``"[*]:"``, ``"[ ]:"``) and each output's ``(mime type, text)``."""

    kind: str
    prompt: str = ""
    outputs: list[tuple[str, str]] = field(default_factory=list)


_READ_CELLS = """() => [...document.querySelectorAll(
    '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell')].map(cell => ({
  kind: cell.classList.contains('jp-CodeCell') ? 'code'
      : cell.classList.contains('jp-MarkdownCell') ? 'markdown' : 'raw',
  prompt: ((cell.querySelector('.jp-InputPrompt') || {}).textContent || '').trim(),
  outputs: [...cell.querySelectorAll('.jp-OutputArea-output')].map(
      o => [o.getAttribute('data-mime-type') || '', o.textContent || '']),
}))"""

_READ_STATE = """() => {
  const texts = [...document.querySelectorAll('.jp-StatusBar-Item')].map(e => e.textContent);
  const kernel = texts.find(t => / \\| [A-Z][a-z]+\\s*$/.test(t)) || '';
  const prompts = [...document.querySelectorAll(
      '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-CodeCell .jp-InputPrompt')]
      .map(p => p.textContent.trim());
  return {kernel: kernel.trim(), prompts};
}"""

_NUMBERED = re.compile(r"^\[\d+\]:$")


@dataclass
class LabRun:
    cells: list[CellView]
    seconds: float
    kernel_status: str
    timed_out: str = ""  # why waiting stopped early, if it did


def _wait_kernel_idle(page, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    state = {"kernel": ""}
    while time.monotonic() < deadline:
        state = page.evaluate(_READ_STATE)
        if state["kernel"].endswith("| Idle"):
            return state["kernel"]
        time.sleep(0.25)
    raise TimeoutError(f"the kernel was not idle within {timeout:g} s "
                       f"(status bar: {state['kernel']!r})")


def run_in_lab(page, server: LabServer, name: str, *, workspace: str,
               cell_timeout: float = 300, notebook_timeout: float = 900) -> LabRun:
    """Open ``name`` in JupyterLab, Run > Run All Cells, wait, and read every cell.

    Waiting ends when the status bar says Idle and no cell shows ``[*]`` (twice in a row,
    half a second apart). It gives up when no further cell finishes for ``cell_timeout``
    seconds or the whole run exceeds ``notebook_timeout``; ``timed_out`` then says so
    (the server is stopped by the caller, which kills the kernel).
    """
    start = time.monotonic()
    page.goto(f"{server.url}/lab/workspaces/{workspace}/tree/{name}?token={server.token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    _wait_kernel_idle(page, timeout=120)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).first.click()
    last_progress, finished, calm, timed_out = time.monotonic(), -1, 0, ""
    state = page.evaluate(_READ_STATE)
    while True:
        time.sleep(0.5)
        state = page.evaluate(_READ_STATE)
        done = sum(bool(_NUMBERED.match(p)) for p in state["prompts"])
        pending = [i for i, p in enumerate(state["prompts"]) if p == "[*]:"]
        if done != finished:
            finished, last_progress = done, time.monotonic()
        idle = state["kernel"].endswith("| Idle")
        started = done > 0 or not any(state["prompts"])
        calm = calm + 1 if (idle and not pending and started) else 0
        if calm >= 2:
            break
        now = time.monotonic()
        if now - last_progress > cell_timeout:
            where = f"code cell {pending[0] + 1}" if pending else "a cell"
            timed_out = f"{where} still running after {cell_timeout:g} s with no cell finishing"
            break
        if now - start > notebook_timeout:
            timed_out = f"the notebook took longer than {notebook_timeout:g} s"
            break
    cells = [CellView(**c) for c in page.evaluate(_READ_CELLS)]
    return LabRun(cells, time.monotonic() - start, state["kernel"], timed_out)


def screenshot(page, path: Path, cell_index: int | None = None) -> Path:
    """Save what the page shows (scrolled to ``cell_index``, if given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if cell_index is not None:
        with contextlib.suppress(Exception):
            page.locator(".jp-Notebook .jp-Cell").nth(cell_index).scroll_into_view_if_needed(
                timeout=5000)
    page.screenshot(path=str(path))
    return path


# --------------------------------------------------------------------------- the verdict

def error_in(output: tuple[str, str]) -> str | None:
    """The exception line (``"ValueError: boom"``) if this output is a rendered error."""
    mime, text = output
    if mime != STDERR_MIME:
        return None
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if lines and EXCEPTION_LINE.match(lines[-1]):
        return lines[-1]
    if TRACEBACK in text:
        return lines[-1] if lines else "Traceback"
    return None


def verdict_lines(cells: Sequence[CellView]) -> list[tuple[str, str]]:
    """``(exercise, verdict)`` for every checker line shown on stdout, top to bottom."""
    found = []
    for cell in cells:
        for mime, text in cell.outputs:
            if mime == STDOUT_MIME:
                for line in text.splitlines():
                    match = VERDICT_LINE.match(line)
                    if match:
                        found.append((match.group(2), match.group(1)))
    return found


def expected_verdicts(solution: dict) -> list[str]:
    """Exercise names of every checker line in a solved notebook's stored outputs."""
    names = []
    for cell in solution.get("cells", []):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stdout":
                text = output.get("text", "")
                text = "".join(text) if isinstance(text, list) else text
                names += [m.group(2) for m in map(VERDICT_LINE.match, text.splitlines()) if m]
    return names


def problems_in_run(cells: Sequence[CellView], notebook: dict, mode: str,
                    expected: Sequence[str]) -> list[str]:
    """Everything wrong with a Run All, as sentences (empty: all good).

    ``mode`` is ``"course"`` (blank exercises: every checker says NOT ATTEMPTED, and a
    NotImplementedError is tolerated) or ``"solutions"`` (every checker PASSED; no error
    except in cells tagged ``raises-exception``). ``notebook`` is the JSON that was opened;
    ``expected`` the exercise names whose checker lines must appear (with multiplicity).
    """
    if mode not in ("course", "solutions"):
        raise ValueError(f"mode must be 'course' or 'solutions', not {mode!r}")
    problems = []
    json_cells = notebook.get("cells", [])
    if len(cells) != len(json_cells):
        problems.append(f"the page shows {len(cells)} cells but the notebook has "
                        f"{len(json_cells)}")
    code_number = 0
    for cell, source in zip(cells, json_cells, strict=False):
        if source.get("cell_type") != "code":
            continue
        code_number += 1
        where = f"code cell {code_number}"
        text = source.get("source", "")
        text = "".join(text) if isinstance(text, list) else text
        if cell.prompt == "[*]:":
            problems.append(f"{where} is still running")
        elif text.strip() and not _NUMBERED.match(cell.prompt):
            problems.append(f"{where} did not run (prompt {cell.prompt or 'missing'})")
        tagged = "raises-exception" in source.get("metadata", {}).get("tags", [])
        for output in cell.outputs:
            error = error_in(output)
            if error is None or tagged:
                continue
            if mode == "course" and error.startswith("NotImplementedError"):
                continue
            problems.append(f"{where}: unexpected error {error}")
    wanted = "NOT ATTEMPTED" if mode == "course" else "PASSED"
    seen = verdict_lines(cells)
    for exercise, verdict in seen:
        if verdict != wanted:
            problems.append(f"exercise {exercise}: {verdict}, expected {wanted}")
    missing = Counter(expected) - Counter(name for name, _ in seen)
    extra = Counter(name for name, _ in seen) - Counter(expected)
    if missing or extra:
        problems.append(f"{len(seen)} checker lines shown, {len(expected)} expected"
                        + (f"; missing: {sorted(missing.elements())}" if missing else "")
                        + (f"; unexpected: {sorted(extra.elements())}" if extra else ""))
    return problems


def first_problem_cell(cells: Sequence[CellView], notebook: dict) -> int | None:
    """Index of the first cell that is unrun, pending or shows an untagged error."""
    for index, (cell, source) in enumerate(zip(cells, notebook.get("cells", []), strict=False)):
        if source.get("cell_type") != "code":
            continue
        tags = source.get("metadata", {}).get("tags", [])
        text = "".join(source.get("source", ""))
        if cell.prompt == "[*]:" or (text.strip() and not _NUMBERED.match(cell.prompt)):
            return index
        if "raises-exception" not in tags and any(error_in(o) for o in cell.outputs):
            return index
    return None
