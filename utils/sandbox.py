"""Sandboxes for graded notebooks: what ``course-grade`` runs each student's kernel in.

For instructors (the README's "Grading" section); used by :mod:`utils.grading`.

Two kinds, chosen per run with ``course-grade --sandbox=auto|require|limits|off``:

``bwrap``
    The kernel runs inside bubblewrap (Debian/Ubuntu package ``bubblewrap``): its own mount,
    process, network, IPC and host-name namespaces; the system folders (``/usr``, ``/etc``,
    ...) read-only; of everything else only what the kernel needs (the Python installation,
    the course's ``utils`` package, ``COURSE_DATA_DIR``), read-only; a private writable work
    folder holding the notebook's copy, a private ``/tmp``; no network at all (a loopback of
    its own), so the kernel talks to the grader over Unix sockets in the work folder. It
    cannot see the grader's home folder, the other submissions or the report folder. Run as
    root, the kernel also drops to an unprivileged user id of its own.
``limits``
    Where bubblewrap or user namespaces are missing (many containers, Colab): the same
    resource limits, environment allow-list, separate work folder and timeouts, but no
    isolation of the file system or the network. Run as root, the kernel drops to an
    unprivileged user id when that user can run the Python installation.

Both set per-process limits (``prlimit``): memory (address space; the data segment when
GPU device files are bound, since CUDA reserves large address ranges), processes and
threads, CPU time, the size of one written file and no core dumps; the kernel gets only an
allow-listed set of environment variables (:func:`kernel_environment`). The grader keeps at
most :attr:`Limits.output` bytes of output per cell and stops a cell that prints more.
"""

from __future__ import annotations

import functools
import glob
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "KINDS",
    "MODES",
    "Limits",
    "Sandbox",
    "SandboxUnavailable",
    "bwrap_problem",
    "choose",
    "kernel_environment",
    "process_limit_binds",
]

MiB = 1 << 20
GiB = 1 << 30

#: What ``--sandbox`` accepts: ``auto`` (bubblewrap where it works, else ``limits``),
#: ``require`` (bubblewrap or an error), ``limits`` (the weaker mode), ``off`` (none).
MODES = ("auto", "require", "limits", "off")
#: What a notebook was graded in (the report's ``sandbox`` column).
KINDS = ("bwrap", "limits", "off")

#: Environment variables a sandboxed kernel may inherit: exact names, then name prefixes.
ALLOWED_NAMES = frozenset({
    "PATH", "LANG", "LANGUAGE", "TZ", "TERM", "LD_LIBRARY_PATH", "VIRTUAL_ENV",
    "PYTHONHASHSEED", "PYTHONWARNINGS", "PYTHONDONTWRITEBYTECODE", "MPLBACKEND",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
})
ALLOWED_PREFIXES = ("LC_", "COURSE_", "JAX_", "XLA_", "TF_CPP_")
#: Never passed on, whatever the name's prefix (``COURSE_API_TOKEN``, say).
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|AUTH|COOKIE|PRIVATE|(^|_)KEY", re.I)
#: Never passed on either: the grader's persistent compilation cache holds compiled programs
#: that later kernels load and run, so a submission that could write to it could run code in
#: the next notebook graded. (Inside bubblewrap its folder is not even there.)
HOST_ONLY_NAMES = frozenset({"JAX_COMPILATION_CACHE_DIR"})

#: System folders the bubblewrap sandbox shows read-only (those that exist here).
SYSTEM_PATHS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
                "/opt", "/sys", "/nix")
#: Unprivileged user ids tried for the kernel when the grader runs as root (a free one:
#: no account, no process), so that the process limit binds (it never binds root).
UID_RANGE = range(61000, 62000)
#: The user ids this process's sandboxes ran kernels as.
USED_UIDS: set[int] = set()


class SandboxUnavailable(RuntimeError):
    """``--sandbox=require`` on a machine where bubblewrap cannot run."""


@dataclass(frozen=True)
class Limits:
    """Per-notebook limits. ``memory``: bytes one process may map (address space, or the
    data segment where GPU device files are bound); ``processes``: processes and threads in
    the sandbox (of the kernel's user in ``limits`` mode); ``file_size``: the largest file one
    process may write; ``output``: bytes of output the grader keeps per cell (it stops the
    cell at that point); ``tmp_size``: the private ``/tmp`` (bubblewrap); ``cpu_seconds``:
    CPU time of one process (None: from the timeouts, see :meth:`cpu_for`)."""

    memory: int = 8 * GiB
    processes: int = 1024  # threads count too: XLA starts several per core
    file_size: int = 1 * GiB
    output: int = 2 * MiB
    tmp_size: int = 1 * GiB
    cpu_seconds: int | None = None

    def __post_init__(self) -> None:
        for name in ("memory", "processes", "file_size", "output", "tmp_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"Limits.{name} must be a positive whole number, got {value!r}")

    def cpu_for(self, seconds: float) -> int:
        """CPU seconds one process may use when the notebook may run ``seconds`` of wall
        time: every core busy the whole time, plus a minute (a backstop; the timeouts stop
        a notebook first)."""
        if self.cpu_seconds is not None:
            return self.cpu_seconds
        return math.ceil(seconds * (os.cpu_count() or 1)) + 60


def kernel_environment(environ: Mapping[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """The variables of ``environ`` a sandboxed kernel may see: the allow-listed names and
    prefixes (:data:`ALLOWED_NAMES`, :data:`ALLOWED_PREFIXES`) and the names in ``extra``,
    never one whose name looks like a secret (:data:`SECRET_NAME`) unless ``extra`` names it,
    nor the grader's own compilation cache (:data:`HOST_ONLY_NAMES`)."""
    extra = set(extra)
    kept = {}
    for name, value in environ.items():
        if name in HOST_ONLY_NAMES:
            continue
        if name in extra:
            kept[name] = value
        elif (name in ALLOWED_NAMES or name.startswith(ALLOWED_PREFIXES)) \
                and not SECRET_NAME.search(name):
            kept[name] = value
    return kept


def _course_package() -> Path:
    return Path(__file__).resolve().parent


def data_folder(environ: Mapping[str, str]) -> Path | None:
    """The course's data sets as the kernel should find them: ``COURSE_DATA_DIR``, else the
    grader's own cache (:func:`utils.data.data_dir`) where it exists, since the kernel's home
    folder is a new one."""
    if environ.get("COURSE_DATA_DIR"):
        return Path(environ["COURSE_DATA_DIR"]).expanduser()
    try:
        from utils.data import data_dir

        found = data_dir()
    except Exception:  # pooch missing, no cache folder: the kernel will say what it lacks
        return None
    return found if found.is_dir() else None


def _needed_paths(data: Path | None = None) -> list[Path]:
    """What a kernel needs to see besides the system folders: this Python installation
    (and the virtual environment's), the course package, and the data folder."""
    paths = {Path(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                               sys.base_exec_prefix)}
    paths.add(Path(sys.executable).parent)
    paths.add(Path(os.path.realpath(sys.executable)).parent.parent)
    paths.add(_course_package())
    for entry in sys.path:  # e.g. packages installed with --user, or PYTHONPATH
        if entry.endswith("-packages") and os.path.isdir(entry):
            paths.add(Path(entry))
    if data is not None and data.is_dir():
        paths.add(data)
    for entry in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep):
        if entry and os.path.isdir(entry):
            paths.add(Path(entry))
    resolved = set()
    for path in paths:
        for variant in (path, Path(os.path.realpath(path))):
            if variant.is_absolute() and variant.exists() and variant != Path("/"):
                resolved.add(variant)
    return _outermost(resolved)


def _outermost(paths: Iterable[Path]) -> list[Path]:
    """The paths not inside another of them, sorted."""
    ordered = sorted(set(paths), key=lambda p: (len(p.parts), str(p)))
    kept: list[Path] = []
    for path in ordered:
        if not any(path == k or k in path.parents for k in kept):
            kept.append(path)
    return sorted(kept)


def gpu_devices() -> list[str]:
    """NVIDIA device files to bind into the sandbox (``/dev/nvidia*``), where they exist."""
    return sorted(glob.glob("/dev/nvidia*"))


def _process_uids() -> dict[int, int]:
    """Real user id of every process: ``{pid: uid}``."""
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = entry.stat(follow_symlinks=False).st_uid
            except OSError:
                continue
    return found


def _tasks_of(uid: int) -> int:
    """Threads of all processes of ``uid`` (what the process limit counts)."""
    count = 0
    for pid, owner in _process_uids().items():
        if owner != uid:
            continue
        try:
            count += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            continue
    return count


def _free_uid() -> int:
    import grp  # Unix only: imported where root needs it
    import pwd

    used = set(_process_uids().values())
    start = os.getpid() % len(UID_RANGE)
    for offset in range(len(UID_RANGE)):
        uid = UID_RANGE[(start + offset) % len(UID_RANGE)]
        if uid in used:
            continue
        try:
            pwd.getpwuid(uid)
            continue
        except KeyError:
            pass
        try:
            grp.getgrgid(uid)  # the kernel's group id is the same number
        except KeyError:
            return uid
    raise SandboxUnavailable(f"no free user id in {UID_RANGE.start}-{UID_RANGE.stop - 1}")


def kill_user(uid: int, rounds: int = 50) -> int:
    """Kill every process of the unprivileged ``uid`` (a sandbox's leftovers: daemons, a
    fork bomb); returns how many were found at first. Only for ids this module chose."""
    if uid == 0 or uid not in UID_RANGE:
        raise ValueError(f"refusing to kill the processes of user {uid}")
    first = None
    for _ in range(rounds):
        alive = [pid for pid, owner in _process_uids().items() if owner == uid]
        first = len(alive) if first is None else first
        if not alive:
            break
        # As that user, kill(-1) reaches exactly that user's processes (not this one).
        subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--",
                        "kill", "-KILL", "-1"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
    return first or 0


@functools.cache
def _unprivileged_can_run_python() -> bool:
    """Whether a user without an account (only the permissions every user has) can start
    this Python and import the kernel and the course. Tried once per process (as root)."""
    uid = _free_uid()
    if shutil.which("setpriv") is None:
        return False
    # Through prlimit as the kernel will be: setpriv itself can exec what its user cannot.
    probe = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--",
             "prlimit", "--core=0", "--", sys.executable, "-c", "import ipykernel, utils.exercises"]
    try:
        done = subprocess.run(probe, capture_output=True, timeout=120, cwd="/")
    except (OSError, subprocess.TimeoutExpired):
        return False
    finally:
        kill_user(uid)
    return done.returncode == 0


@functools.cache
def bwrap_problem() -> str | None:
    """None when the bubblewrap sandbox works here, else why not (one line). Tried once per
    process: a sandboxed Python imports the kernel and the course package."""
    for tool in ("bwrap", "prlimit") + (("setpriv",) if os.geteuid() == 0 else ()):
        if shutil.which(tool) is None:
            return (f"`{tool}` is not installed" if tool != "bwrap" else
                    "bubblewrap (`bwrap`) is not installed (Debian/Ubuntu: apt-get install "
                    "bubblewrap)")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="course-grade-probe-") as tmp:
        box = Sandbox("bwrap", Path(tmp), Limits(), cpu_seconds=600)
        try:
            box.prepare()
            command = box.command([sys.executable, "-c", "import ipykernel, utils.exercises"])
            done = subprocess.run(command, capture_output=True, timeout=120, cwd=tmp,
                                  env=kernel_environment(os.environ))
        except (OSError, subprocess.TimeoutExpired, SandboxUnavailable) as error:
            return f"bubblewrap could not start: {error}"
        finally:
            box.cleanup()
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        why = lines[-1] if lines else f"exit status {done.returncode}"
        if "namespace" in why or "uid map" in why or "Operation not permitted" in why:
            why += " (user namespaces may be disabled here)"
        return f"bubblewrap could not run a sandboxed Python: {why[:300]}"
    return None


def process_limit_binds() -> bool:
    """Whether the ``limits`` mode can limit processes here: always, except as root when no
    unprivileged user can run this Python (the limit never binds root)."""
    return os.geteuid() != 0 or _unprivileged_can_run_python()


def choose(mode: str) -> str:
    """The kind of sandbox (:data:`KINDS`) that ``mode`` (:data:`MODES`) gives here; raises
    :class:`SandboxUnavailable` for ``require`` where bubblewrap cannot run."""
    if mode not in MODES:
        raise ValueError(f"sandbox mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode in ("off", "limits"):
        return mode
    problem = bwrap_problem()
    if problem is None:
        return "bwrap"
    if mode == "require":
        raise SandboxUnavailable(
            f"--sandbox=require, but {problem}. Install bubblewrap and make sure user "
            "namespaces are enabled (sysctl kernel.unprivileged_userns_clone=1 on older "
            "Debian; user.max_user_namespaces > 0), or use --sandbox=auto for the weaker "
            "limits-only mode.")
    return "limits"


def _bytes(value: int) -> str:
    return str(int(value))


class Sandbox:
    """One notebook's sandbox of the given ``kind`` (``bwrap`` or ``limits``) around the
    work folder ``workdir`` (created by the caller, holding the notebook's copy).

    ``hide``: folders the kernel must not see even where they lie inside a path it needs
    (the submissions, the report folder). :meth:`prepare` before starting the kernel
    (ownership of the work folder), :meth:`command` wraps the kernel's command line,
    :meth:`environment` filters its environment, :meth:`cleanup` after it ended (kills
    what it left behind where that is possible)."""

    def __init__(self, kind: str, workdir: Path, limits: Limits, *, cpu_seconds: int,
                 hide: Sequence[Path] = (), pass_env: Iterable[str] = ()) -> None:
        if kind not in ("bwrap", "limits"):
            raise ValueError(f"sandbox kind must be 'bwrap' or 'limits', got {kind!r}")
        self.kind = kind
        self.workdir = Path(workdir).resolve()
        self.home = self.workdir / "home"
        self.limits = limits
        self.cpu_seconds = cpu_seconds
        self.hide = [Path(p).resolve() for p in hide]
        self.pass_env = tuple(pass_env)
        self.gpu = gpu_devices() if kind == "bwrap" else []
        self.data = data_folder(os.environ)
        self.uid: int | None = None  # the unprivileged user the kernel runs as (root only)
        if os.geteuid() == 0:
            uid = _free_uid()
            if kind == "bwrap" or _unprivileged_can_run_python():
                self.uid = uid
                USED_UIDS.add(uid)

    def prepare(self) -> None:
        """Create the kernel's home folder and hand the work folder to the kernel's user."""
        self.home.mkdir(exist_ok=True)
        _copy_matplotlib_cache(self.home)
        if self.uid is not None:
            for root, dirs, files in os.walk(self.workdir):
                for name in [*dirs, *files]:
                    os.chown(os.path.join(root, name), self.uid, self.uid, follow_symlinks=False)
            os.chown(self.workdir, self.uid, self.uid)

    def own(self, path: Path) -> None:
        """Give a file the grader wrote into the work folder (the connection file) to the
        kernel's user."""
        if self.uid is not None:
            os.chown(path, self.uid, self.uid)

    def environment(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The kernel's environment: the allow-list, a private home and temporary folder."""
        env = kernel_environment(environ, self.pass_env)
        if self.data is not None:
            env["COURSE_DATA_DIR"] = str(self.data)
        env.update(HOME=str(self.home), USER="student", LOGNAME="student",
                   TMPDIR="/tmp" if self.kind == "bwrap" else str(self.workdir))
        env.setdefault("PATH", os.defpath)
        return env

    def rlimits(self) -> dict[str, int]:
        """The resource limits of the kernel's processes: ``{prlimit option: value}``."""
        limits = self.limits
        found = {"cpu": self.cpu_seconds, "fsize": limits.file_size, "core": 0}
        # CUDA reserves address space far beyond what it uses: with a GPU bound, limit the
        # data segment (private writable memory, what malloc and NumPy allocate) instead.
        found["data" if self.gpu else "as"] = limits.memory
        processes = limits.processes
        if self.kind == "limits" and self.uid is None:
            if os.geteuid() == 0:
                processes = 0  # never binds root: leave it out
            else:  # counts all this user's threads, not only the sandbox's
                processes += _tasks_of(os.getuid())
        if processes:
            found["nproc"] = processes
        return found

    def _rlimits(self) -> list[str]:
        limits = self.rlimits()
        if self.kind == "bwrap" or shutil.which("prlimit"):
            return ["prlimit", *(f"--{name}={value}" for name, value in limits.items()), "--"]
        # Without util-linux (macOS, say): the same limits set by a small Python launcher.
        return [sys.executable, "-S", "-c", _LAUNCHER, repr(limits), "--"]

    def _drop(self) -> list[str]:
        if self.uid is None:
            return []
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups",
                "--no-new-privs", "--"]

    def command(self, argv: Sequence[str]) -> list[str]:
        """The command line that runs ``argv`` (the kernel) in this sandbox."""
        inner = [*self._drop(), *self._rlimits(), *argv]
        if self.kind == "limits":
            return inner
        return [*self._bwrap(), "--", *inner]

    def _bwrap(self) -> list[str]:
        args = ["bwrap", "--die-with-parent", "--new-session", "--unshare-ipc", "--unshare-pid",
                "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
                "--hostname", "course-grade",
                # The kernel's parent is bubblewrap's init (pid 1) here, which ipykernel would
                # take for its parent having died; bubblewrap ends it with the grader instead.
                "--setenv", "JPY_PARENT_PID", "1"]
        if os.geteuid() == 0:  # no user namespace: setpriv drops to self.uid inside
            args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            args += ["--unshare-user", "--disable-userns"]
        for top in SYSTEM_PATHS:
            if os.path.islink(top):
                args += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                args += ["--ro-bind", top, top]
        args += ["--proc", "/proc", "--dev", "/dev",
                 "--size", _bytes(self.limits.tmp_size), "--tmpfs", "/tmp",
                 "--size", _bytes(self.limits.tmp_size), "--tmpfs", "/dev/shm"]
        for device in self.gpu:
            args += ["--dev-bind", device, device]
        system = [Path(p) for p in SYSTEM_PATHS]
        needed = [p for p in _needed_paths(self.data)
                  if not any(p == s or s in p.parents for s in system)
                  and not (p == self.workdir or self.workdir in p.parents)]
        made: set[Path] = {Path("/"), Path("/tmp"), *system}

        def parents(path: Path) -> list[str]:  # bubblewrap would make them private (0700)
            new = [p for p in reversed(path.parents) if p not in made]
            made.update(new)
            return [arg for p in new for arg in ("--perms", "0755", "--dir", str(p))]

        for path in needed:
            args += [*parents(path), "--ro-bind", str(path), str(path)]
        for path in _outermost(self.hide):
            shown = any(path == n or n in path.parents for n in [*needed, *system])
            if shown and path.is_dir() and path != self.workdir:
                args += ["--size", "4096", "--tmpfs", str(path), "--remount-ro", str(path)]
        args += [*parents(self.workdir), "--bind", str(self.workdir), str(self.workdir),
                 "--chdir", str(self.workdir)]
        return args

    def cleanup(self) -> None:
        """Kill whatever the kernel left running (its own user id only; the bubblewrap
        sandbox also ends every process in it when the kernel ends)."""
        if self.uid is not None:
            kill_user(self.uid)

    def kernel_manager_class(self) -> type:
        """A ``jupyter_client`` kernel manager that starts the kernel in this sandbox:
        Unix sockets in the work folder with bubblewrap (no network inside), interrupts by
        message (a signal would reach bubblewrap, not the kernel)."""
        from jupyter_client.manager import AsyncKernelManager

        box = self

        class SandboxedKernelManager(AsyncKernelManager):
            def __init__(self, **kwargs: Any) -> None:
                if box.kind == "bwrap":
                    kwargs.setdefault("transport", "ipc")
                    kwargs.setdefault("ip", str(box.workdir / "kernel"))
                kwargs.setdefault("connection_file", str(box.workdir / "kernel.json"))
                super().__init__(**kwargs)

            def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
                assert self.kernel_spec is not None
                self.kernel_spec.interrupt_mode = "message"
                box.own(Path(self.connection_file))
                return box.command(super().format_kernel_cmd(extra_arguments))

        return SandboxedKernelManager


#: Sets the resource limits given as ``repr({option: value})`` and runs the command after
#: ``--`` (where ``prlimit`` is missing).
_LAUNCHER = """import ast, os, resource, sys
names = {"cpu": "RLIMIT_CPU", "fsize": "RLIMIT_FSIZE", "core": "RLIMIT_CORE",
         "as": "RLIMIT_AS", "data": "RLIMIT_DATA", "nproc": "RLIMIT_NPROC"}
for option, value in ast.literal_eval(sys.argv[1]).items():
    which = getattr(resource, names[option], None)
    if which is not None:
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            resource.setrlimit(which, (min(value, resource.getrlimit(which)[1]),) * 2)
os.execvp(sys.argv[3], sys.argv[3:])
"""


def _copy_matplotlib_cache(home: Path) -> None:
    """Copy the grader's Matplotlib font list into the kernel's home, so that a notebook
    importing Matplotlib does not rebuild it (seconds) in every sandbox."""
    cache = Path(os.environ.get("MPLCONFIGDIR") or
                 Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "matplotlib")
    try:
        fonts = sorted(cache.glob("fontlist-*.json"))
    except OSError:
        return
    if fonts:
        target = home / ".cache" / "matplotlib"
        target.mkdir(parents=True, exist_ok=True)
        for font in fonts:
            try:
                shutil.copyfile(font, target / font.name)
            except OSError:
                continue
