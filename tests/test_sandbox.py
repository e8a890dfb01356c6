"""Tests for utils/sandbox.py: `course-grade` grading hostile submissions (issue 24).

One `course-grade` run per mode grades two honest copies of the tiny lesson of
tests/test_grading.py (solved, one wrong answer) together with hostile submissions:

- ``steal``: reads a secret file in the grader's home folder (HOME points at a temporary
  folder here, never the real one) and secret environment variables, through
  ``os.environ`` and through ``/proc/*/environ``, and prints whatever it finds;
- ``vandal``: reads the data set (``COURSE_DATA_DIR``), then tries to write into the
  grader's home, a file beside the submissions, the data set, the course package, the
  report folder and another student's submission;
- ``net``: connects to a server on 127.0.0.1 outside the sandbox;
- ``bomb``: a fork bomb (every process forks until refused, then waits);
- ``hog``: allocates 20 GiB;
- ``flood``: prints 1 GiB.

Limits in these runs: 2 GiB of memory per process, 64 processes and threads, 2 MiB of output
per cell. In ``bwrap`` mode every attack fails, the honest notebooks grade exactly as they
do unsandboxed, no secret reaches any output or report, and nothing is left running.

The weaker ``limits`` mode does not stop (asserted below, so a change is noticed): reading
the grader's files (the home secret), connecting to the grader's machine, and, where the
kernel runs as the grader's own user, reading the grader's environment through
``/proc/PID/environ``; writing the grader's files is not stopped either, so ``vandal`` is not
run in that mode. Run as root, the process limit binds only when an unprivileged user can
run this Python; where none can, the fork bomb is not run in that mode either.
"""

from __future__ import annotations

import csv
import hashlib
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest

from utils import grading, sandbox

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_grading import SOLVED, lesson_notebook  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

HONEST = {"solved": "solved/01_tiny.ipynb,01_tiny,PASSED,PASSED,PASSED,3,3,ok,{kind},",
          "wrong": "wrong/01_tiny.ipynb,01_tiny,PASSED,PASSED,FAILED,2,3,ok,{kind},"}

STEAL = '''\
import glob, os
found = []
for path in [{secret_file!r}, *glob.glob({home!r} + "/**", recursive=True)]:
    try:
        found.append(open(path).read())
    except OSError as error:
        print("cannot read", path, type(error).__name__)
found += [f"{{name}}={{value}}" for name, value in os.environ.items()]
parent = os.getppid()  # the grader in limits mode, bubblewrap's init (1) in its sandbox
grandparent = int(open(f"/proc/{{parent}}/stat").read().rsplit(")", 1)[1].split()[1])
for pid in (parent, grandparent, 1):
    try:
        found.append(open(f"/proc/{{pid}}/environ", "rb").read().decode(errors="replace"))
    except OSError as error:
        print("cannot read the environment of", pid, type(error).__name__)
print("\\n".join(found))'''

VANDAL = '''\
import os
print("data set:", open({data_file!r}).read())
for path in {targets!r}:
    try:
        with open(path, "w") as handle:
            handle.write("vandalised")
        print("WROTE", path)
    except OSError as error:
        print("refused", path, type(error).__name__)'''

NET = '''\
import socket
try:
    reply = socket.create_connection(("127.0.0.1", {port}), timeout=10).recv(64)
    print("CONNECTED", reply)
except OSError as error:
    print("connect failed:", type(error).__name__)'''

BOMB = '''\
import os, subprocess, time
def bomb():
    while True:
        try:
            os.fork()
        except OSError:
            time.sleep(1)  # at the limit every process waits (no busy loop)
if os.fork() == 0:
    try:
        bomb()
    finally:
        os._exit(0)
deadline = time.time() + 20
while time.time() < deadline:
    subprocess.run(["true"])  # raises once the bomb has used up the process limit
    time.sleep(0.2)
print("the fork bomb was not stopped")'''

HOG = "data = bytearray(20 * 2**30)\nprint('allocated 20 GiB')"

FLOOD = 'line = "x" * (2**20 - 1)\nfor _ in range(1024):\n    print(line, flush=True)'


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _notebook(path: Path, source: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source),
                                         nbformat.v4.new_code_cell('print("after")')])
    nbformat.write(nb, path)


class _Server:
    """A TCP server on 127.0.0.1 that counts connections and answers a secret."""

    def __init__(self, answer: bytes) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.answer = answer
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.sendall(self.answer)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module", params=["bwrap", "limits"])
def graded(request, tmp_path_factory):
    """One `course-grade` run of the honest and hostile submissions in the given mode."""
    kind = request.param
    if kind == "bwrap" and sandbox.bwrap_problem() is not None:
        pytest.skip(f"bubblewrap cannot run here: {sandbox.bwrap_problem()}")
    root = tmp_path_factory.mktemp(f"sandbox-{kind}")
    home, data, subs, out = root / "home", root / "data", root / "submitted", root / "report"
    token = {"file": "FILE-" + secrets.token_hex(12), "env": "ENV-" + secrets.token_hex(12),
             "net": "NET-" + secrets.token_hex(12)}
    secret_file = home / ".ssh" / "id_course"
    secret_file.parent.mkdir(parents=True)
    secret_file.write_text(token["file"])
    (data / "mnist").mkdir(parents=True)
    data_file = data / "mnist" / "labels.txt"
    data_file.write_text("7 2 1 0 4")
    outside = root / "outside.txt"
    outside.write_text("the grader's file")
    for student, answers in (("solved", SOLVED),
                             ("wrong", {**SOLVED, "negate": "def negate(x):\n    return x"})):
        (subs / student).mkdir(parents=True)
        nbformat.write(lesson_notebook(answers), subs / student / "01_tiny.ipynb")
    other = subs / "wrong" / "01_tiny.ipynb"
    planted = sandbox._course_package() / f"_planted_{secrets.token_hex(4)}.py"
    targets = [str(secret_file), str(outside), str(data_file), str(other), str(planted),
               str(out / "executed" / "forged.txt")]
    server = _Server(token["net"].encode())
    hostile = {
        "steal": STEAL.format(secret_file=str(secret_file), home=str(home)),
        "vandal": VANDAL.format(data_file=str(data_file), targets=targets),
        "net": NET.format(port=server.port),
        "bomb": BOMB, "hog": HOG, "flood": FLOOD,
    }
    if kind == "limits":
        del hostile["vandal"]  # not stopped in this mode: it would write the grader's files
        if not sandbox.process_limit_binds():
            del hostile["bomb"]  # as root, and no unprivileged user can run this Python
    for student, source in hostile.items():
        _notebook(subs / student / "01_attack.ipynb", source)
    watched = [secret_file, outside, data_file, *(subs / s / "01_tiny.ipynb"
                                                   for s in HONEST)]
    before = {path: _digest(path) for path in watched}
    # The command as an instructor runs it, with secrets in its environment from the start
    # (what /proc/PID/environ shows).
    env = {**os.environ, "HOME": str(home), "COURSE_DATA_DIR": str(data),
           "COURSE_API_TOKEN": token["env"],  # an allowed prefix, but a secret's name
           "GITHUB_TOKEN": token["env"], "INSTRUCTOR_SECRET": token["env"]}
    mode = "require" if kind == "bwrap" else kind
    try:
        done = subprocess.run(
            [sys.executable, "-m", "utils.grading", str(subs), "--out", str(out),
             "--sandbox", mode, "--memory", "2", "--processes", "64",
             "--cell-timeout", "30", "--timeout", "60"],
            env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    finally:
        server.close()
        planted_exists = planted.exists()
        planted.unlink(missing_ok=True)
    assert done.returncode == 0, done.stdout + done.stderr
    with open(out / "report.csv", newline="") as handle:
        rows = {row["notebook"].split("/")[0]: row for row in csv.DictReader(handle)}
    return {"kind": kind, "out": out, "log": done.stdout,
            "leftovers": _processes_with(str(data).encode()), "rows": rows, "token": token,
            "before": before, "after": {path: _digest(path) for path in watched},
            "connections": server.connections, "planted": planted_exists,
            "hostile": set(hostile), "forged": targets[-1]}


def _processes_with(marker: bytes) -> list[int]:
    """Processes whose environment contains ``marker`` (the sandboxes' kernels and anything
    they started inherit COURSE_DATA_DIR)."""
    found = []
    for pid in sandbox._process_uids():
        try:
            if marker in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def _executed_text(graded, student: str) -> str:
    nb = nbformat.read(graded["out"] / "executed" / student / "01_attack.ipynb", as_version=4)
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


def _everything_written(out: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())


def test_honest_notebooks_grade_exactly_as_before(graded):
    assert "sandbox: " + ("bubblewrap" if graded["kind"] == "bwrap" else "resource limits only") \
        in graded["log"]
    csv_text = (graded["out"] / "report.csv").read_text().splitlines()
    for line in HONEST.values():
        assert line.format(kind=graded["kind"]) in csv_text
    assert {row["sandbox"] for row in graded["rows"].values()} == {graded["kind"]}
    markdown = (graded["out"] / "report.md").read_text()
    assert f"`{graded['kind']}` {grading.SANDBOX_KINDS[graded['kind']]}" in markdown
    assert "Sandbox limits: 2 GiB of memory per process, 64 processes and threads" in markdown


def test_secrets_stay_out_of_every_output_and_report(graded):
    written = _everything_written(graded["out"])
    stolen = _executed_text(graded, "steal")
    if graded["kind"] == "bwrap":
        for token in graded["token"].values():
            assert token not in written
        assert "cannot read" in stolen
        return
    # limits: the home folder is readable; the environment is filtered, but the grader's
    # own is readable through /proc where the kernel runs as the grader's user.
    assert graded["token"]["file"] in stolen
    kernel_env = [line for line in stolen.splitlines() if line.startswith(("COURSE_API",
                                                                           "GITHUB", "INSTR"))]
    assert kernel_env == []
    same_user = os.geteuid() != 0 or not sandbox.process_limit_binds()
    assert (graded["token"]["env"] in stolen) == same_user


def test_writing_outside_the_work_folder_fails(graded):
    assert graded["after"] == graded["before"]  # home, data set, other submissions, beside
    assert not graded["planted"]
    assert not Path(graded["forged"]).exists()
    if graded["kind"] != "bwrap":
        pytest.skip("limits mode does not stop writes to the grader's files (not attempted)")
    text = _executed_text(graded, "vandal")
    assert "data set: 7 2 1 0 4" in text  # COURSE_DATA_DIR is readable ...
    assert "WROTE" not in text and text.count("refused") == 6  # ... and nothing is writable
    assert graded["rows"]["vandal"]["status"] == "ok"


def test_the_network_outside_is_unreachable(graded):
    text = _executed_text(graded, "net")
    if graded["kind"] == "bwrap":
        assert "connect failed: ConnectionRefusedError" in text
        assert graded["connections"] == 0
    else:  # limits mode does not isolate the network
        assert graded["token"]["net"] in text and graded["connections"] == 1


def test_fork_bomb_is_stopped_and_reported(graded):
    if "bomb" not in graded["hostile"]:
        pytest.skip("as root, and no unprivileged user can run this Python: the limits mode "
                    "cannot limit processes here, so the fork bomb is not run")
    status = graded["rows"]["bomb"]["status"]
    assert status.startswith("error in cell 1: BlockingIOError"), status
    assert graded["leftovers"] == []  # every process it started is gone


def test_a_20_gib_allocation_is_stopped_and_reported(graded):
    assert graded["rows"]["hog"]["status"] == "error in cell 1: MemoryError"


def test_printing_1_gib_is_cut_and_the_executed_notebook_stays_small(graded):
    assert graded["rows"]["flood"]["status"] == (
        "output cut in cell 1: more than 2 MiB printed; stopped")
    executed = graded["out"] / "executed" / "flood" / "01_attack.ipynb"
    assert executed.stat().st_size < 3 * 2**20
    assert "[course-grade: output cut" in executed.read_text()


# ------------------------------------------------------------------ without a kernel


def test_environment_allow_list_drops_secrets_and_unknown_names():
    env = {"PATH": "/usr/bin", "LC_ALL": "C", "COURSE_DATA_DIR": "/data", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--x", "COURSE_API_TOKEN": "t", "GITHUB_TOKEN": "t", "AWS_SECRET": "s",
           "SSH_AUTH_SOCK": "/run/a", "HOME": "/root", "JAX_KEY": "k", "MY_VAR": "v"}
    assert sandbox.kernel_environment(env) == {
        "PATH": "/usr/bin", "LC_ALL": "C", "COURSE_DATA_DIR": "/data", "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--x"}
    assert sandbox.kernel_environment(env, extra=["MY_VAR", "GITHUB_TOKEN"])["MY_VAR"] == "v"


def test_the_graders_compilation_cache_is_not_passed_on():
    # A submission that could write the cache could plant a program the next kernel runs.
    env = {"JAX_COMPILATION_CACHE_DIR": "/var/cache/jax", "JAX_PLATFORMS": "cpu"}
    assert sandbox.kernel_environment(env) == {"JAX_PLATFORMS": "cpu"}
    assert "JAX_COMPILATION_CACHE_DIR" not in sandbox.kernel_environment(
        env, extra=["JAX_COMPILATION_CACHE_DIR"])


def test_bwrap_command_binds_only_what_the_kernel_needs(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "gpu_devices", lambda: [])
    inside = sandbox._course_package() / "checks"  # e.g. submissions inside the repository
    box = sandbox.Sandbox("bwrap", tmp_path, sandbox.Limits(memory=2 << 30), cpu_seconds=99,
                          hide=[inside, tmp_path / "elsewhere"])
    command = box.command(["python", "-m", "ipykernel_launcher"])
    assert command[0] == "bwrap" and "--unshare-net" in command and "--die-with-parent" in command
    binds = [command[i + 1] for i, arg in enumerate(command) if arg in ("--ro-bind", "--bind")]
    assert str(Path.home()) not in binds and "/" not in binds and "/home" not in binds
    assert str(tmp_path.resolve()) in binds
    assert "--as=2147483648" in command and "--cpu=99" in command
    assert command[-3:] == ["python", "-m", "ipykernel_launcher"]
    # A folder to hide that lies inside a bound path gets an empty read-only folder over it.
    assert _contains(command, ["--tmpfs", str(inside), "--remount-ro", str(inside)])
    assert str(tmp_path / "elsewhere") not in command  # not bound anyway
    # With GPU device files: bound, and the data segment is limited instead (CUDA reserves
    # address space far beyond what it uses).
    monkeypatch.setattr(sandbox, "gpu_devices", lambda: ["/dev/nvidia0", "/dev/nvidiactl"])
    box = sandbox.Sandbox("bwrap", tmp_path, sandbox.Limits(memory=2 << 30), cpu_seconds=99)
    command = box.command(["python"])
    assert _contains(command, ["--dev-bind", "/dev/nvidia0", "/dev/nvidia0"])
    assert "--data=2147483648" in command and "--as=2147483648" not in command


def _contains(sequence: list[str], part: list[str]) -> bool:
    return any(sequence[i:i + len(part)] == part for i in range(len(sequence)))


def test_modes_and_limits_reject_bad_values(monkeypatch):
    with pytest.raises(ValueError, match="auto, require, limits, off"):
        sandbox.choose("on")
    with pytest.raises(ValueError, match="Limits.memory must be a positive"):
        sandbox.Limits(memory=0)
    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: "bubblewrap (`bwrap`) is not installed")
    assert sandbox.choose("auto") == "limits" and sandbox.choose("off") == "off"
    with pytest.raises(sandbox.SandboxUnavailable, match="not installed.*--sandbox=auto"):
        sandbox.choose("require")
    with pytest.raises(ValueError, match="refusing"):
        sandbox.kill_user(0)


def test_require_is_a_clear_command_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: "bubblewrap (`bwrap`) is not installed")
    _notebook(tmp_path / "in" / "01_x.ipynb", "x = 1")
    with pytest.raises(SystemExit) as exit_info:
        grading.main([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--sandbox",
                      "require"])
    assert exit_info.value.code == 2
    assert "--sandbox=require, but bubblewrap (`bwrap`) is not installed" in capsys.readouterr().err


def test_grade_notebook_from_python_is_not_sandboxed_unless_asked(tmp_path, monkeypatch):
    # tools/run_notebooks.py (the newest-JAX and Colab legs) relies on this: the kernel gets
    # the caller's environment and network (the Colab leg's first cell runs pip).
    server = _Server(b"reached")
    monkeypatch.setenv("COURSE_CANARY_TOKEN", "canary")
    path = tmp_path / "02_plain.ipynb"
    _notebook(path, "import os, socket\nprint(os.environ['COURSE_CANARY_TOKEN'])\n"
                    f"print(socket.create_connection(('127.0.0.1', {server.port})).recv(9))")
    try:
        result = grading.grade_notebook(path, executed_copy=tmp_path / "run.ipynb")
    finally:
        server.close()
    assert (result.sandbox, result.status) == ("off", "ok")
    text = (tmp_path / "run.ipynb").read_text()
    assert "canary" in text and "reached" in text


def test_limits_without_prlimit_are_set_by_a_python_launcher(tmp_path, monkeypatch):
    which = sandbox.shutil.which
    monkeypatch.setattr(sandbox.shutil, "which",
                        lambda name: None if name == "prlimit" else which(name))
    box = sandbox.Sandbox("limits", tmp_path, sandbox.Limits(memory=2 << 30), cpu_seconds=77)
    box.prepare()
    command = box.command(["sh", "-c", "ulimit -v; ulimit -t; ulimit -c"])
    assert "prlimit" not in command
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    box.cleanup()
    assert done.stdout.split() == ["2097152", "77", "0"], done.stderr


@pytest.mark.skipif(os.geteuid() != 0 or sandbox.shutil.which("setpriv") is None,
                    reason="only root runs kernels as a user id of their own")
def test_what_a_kernel_leaves_running_as_its_own_user_is_killed():
    uid = sandbox._free_uid()
    left = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                             "--", "sleep", "600"])
    try:
        deadline = time.monotonic() + 30
        while sandbox._process_uids().get(left.pid) != uid and time.monotonic() < deadline:
            time.sleep(0.05)  # until setpriv has become that user
        assert sandbox.kill_user(uid) == 1
        assert left.wait(timeout=30) == -9
    finally:
        left.kill()
    with pytest.raises(ValueError, match="refusing"):
        sandbox.kill_user(os.getuid() if os.getuid() not in sandbox.UID_RANGE else 0)
