"""The Colab leg of the tests: every lesson from its real first cell on a replica of Colab.

Run with the replica venv's Python (``tools/test_colab.sh`` makes the venv and calls this)::

    python tools/colab_leg.py replica   # (re)make the replica: Colab's versions, no course
    python tools/colab_leg.py run       # the checks below, then every solution, smoke-sized

The replica is Colab's GPU runtime's package set (``requirements/colab-gpu.txt``, Google's
published list) for the packages the course and its runner touch, CPU wheels, with a stub
``google.colab`` imported at start-up. ``run`` then:

1. resolves, without installing (``pip install --dry-run``), exactly what the first cell
   would install on a *GPU* runtime (``jax[cuda12]`` and the tested stack), and reports the
   bytes that took from the network;
2. runs ``solutions/00_*`` from its real first cell, which must take the upgrade branch
   (Colab's JAX 0.7.2 is below the floor) and install the tested stack (the CPU build here:
   no GPU);
3. runs every other solution: each first cell must take the keep branch, asking pip for no
   JAX, and leave the installed JAX exactly as it was (same files);
4. fails on any error, stderr, kernel warning or verdict other than PASSED
   (``tools/run_notebooks.py``), and prints each lesson's time and the cell's install times.

The course is installed from a snapshot of this checkout (``COURSE_INSTALL_SOURCE``), never
from the network, and the notebooks themselves are never modified.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils import colab  # noqa: E402  (imports no JAX; the replica's JAX is Colab's)

CONSTRAINTS = ROOT / "requirements" / "colab-gpu.txt"
STUB = ROOT / "tests" / "colab_stub" / "google" / "colab"  # its modules are copied
#: What the replica installs (at Colab's versions, from the constraints file): the course's
#: libraries and what a notebook kernel and the runner need, as Colab has them.
REPLICA_PACKAGES = [
    "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy", "ml_dtypes",
    "matplotlib", "tqdm", "pooch", "absl-py", "ipython", "ipykernel", "ipywidgets", "notebook",
    "nbclient", "nbformat", "jupyter_client", "requests", "packaging",
]


def pip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], check=check)


def make_replica() -> None:
    """Colab's versions of REPLICA_PACKAGES, no course, google.colab importable at start-up."""
    start = time.monotonic()
    if _installed(colab.COURSE_PACKAGE):
        pip("uninstall", "-q", "-y", colab.COURSE_PACKAGE)
    pip("install", "-q", "--root-user-action=ignore", "-c", str(CONSTRAINTS), *REPLICA_PACKAGES)
    site = _site_packages()
    target = site / "google" / "colab"
    target.mkdir(parents=True, exist_ok=True)
    for module in STUB.glob("*.py"):
        shutil.copyfile(module, target / module.name)
    (site / "course_colab_stub.pth").write_text("import google.colab\n")
    versions = {name: importlib.metadata.version(name) for name in
                ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "ipykernel",
                 "ipython", "matplotlib", "nbclient")}
    print(f"colab leg: replica of Colab's GPU runtime (2026-08-19 list) on Python "
          f"{sys.version.split()[0]}: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"colab leg: replica made in {time.monotonic() - start:.0f} s")


def snapshot(into: Path) -> Path:
    """A copy of this checkout's files (tracked, and untracked but not ignored): what pip
    installs as the course, so the repository itself gets no build folders."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    return into


_DOWNLOAD = re.compile(r"Downloading (\S+) \(([\d.]+) (bytes|kB|MB|GB)\)")
_UNIT = {"bytes": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}


def downloads(pip_log: str) -> tuple[int, int, float]:
    """``(metadata files, whole files, megabytes)`` that a pip log says it downloaded."""
    found = _DOWNLOAD.findall(pip_log)
    metadata = sum(name.endswith(".metadata") for name, _, _ in found)
    size = sum(float(value) * _UNIT[unit] for _, value, unit in found) / 1e6
    return metadata, len(found) - metadata, size


#: The dry run uses a newer pip than Colab's: PyPI serves no separate metadata files for the
#: CUDA wheels, and Colab's pip 24.1.2 downloads every wheel (about 3.3 GB) in a dry run even
#: with fast-deps, while this one reads their metadata with HTTP range requests. It runs
#: against the replica's interpreter and installed packages all the same.
DRY_RUN_PIP = "pip==26.3"


def dry_run_gpu_install(source: str) -> list[str]:
    """Resolve what the first cell would install on a GPU runtime of this replica; problems."""
    chosen = colab.plan(colab.installed_versions(), source, gpu=True,
                        course_requirements=_pyproject_requirements())
    if chosen.action != "upgrade":
        return [f"the replica's JAX {chosen.colab_jax} would be kept: expected Colab's 0.7.2"]
    # Colab's GPU runtime has its CUDA libraries installed (the replica does not): pin them
    # at Colab's versions, so the resolution is the one a GPU runtime would get.
    cuda = [line for line in CONSTRAINTS.read_text().splitlines() if line.startswith("nvidia-")]
    with tempfile.TemporaryDirectory() as tmp:
        report, log = Path(tmp) / "report.json", Path(tmp) / "pip.log"
        pins = Path(tmp) / "colab-cuda.txt"
        pins.write_text("\n".join(cuda) + "\n")
        newer = Path(tmp) / "pip"
        pip("install", "-q", "--root-user-action=ignore", "--target", str(newer), DRY_RUN_PIP)
        start = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "-q", "--no-cache-dir",
             "--root-user-action=ignore", "--use-feature=fast-deps", "--report", str(report),
             "--log", str(log), "-c", str(pins), *chosen.pip_arguments()],
            env={**os.environ, "PYTHONPATH": str(newer)}, check=False)
        seconds = time.monotonic() - start
        if done.returncode != 0:
            return [f"pip could not resolve the GPU install: {' '.join(chosen.requirements)}"]
        installs = {colab.normal_name(item["metadata"]["name"]): item["metadata"]["version"]
                    for item in json.loads(report.read_text())["install"]}
        metadata, whole, megabytes = downloads(log.read_text(errors="replace"))
    wanted = {"jax": colab.TESTED_STACK["jax"], "jaxlib": colab.TESTED_STACK["jaxlib"],
              "jax-cuda12-plugin": colab.TESTED_STACK["jax"],
              "jax-cuda12-pjrt": colab.TESTED_STACK["jax"], "flax": colab.TESTED_STACK["flax"]}
    problems = [f"the GPU install would give {name} {installs.get(name)}, expected {version}"
                for name, version in wanted.items() if installs.get(name) != version]
    nvidia = sorted(n for n in installs if n.startswith("nvidia-"))
    colab_has = {colab.normal_name(line.split("==")[0]) for line in cuda}
    new_cuda = [n for n in nvidia if n not in colab_has]
    print(f"colab leg: GPU install resolved in {seconds:.0f} s without installing: "
          f"{len(installs)} packages, jax {installs.get('jax')}, jax-cuda12-plugin "
          f"{installs.get('jax-cuda12-plugin')}; {len(nvidia) - len(new_cuda)} CUDA libraries "
          f"at Colab's versions, {len(new_cuda)} new {new_cuda}; pip downloaded {metadata} "
          f"metadata files and {whole} whole files, {megabytes:.1f} MB")
    return problems


def _pyproject_requirements() -> list[str]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def _jax_files() -> tuple[str, int]:
    dist = importlib.metadata.distribution("jax")
    record = Path(dist._path) / "RECORD"  # noqa: SLF001 - the installed files' list
    return dist.version, record.stat().st_mtime_ns


def _site_packages() -> Path:
    return Path(next(p for p in sys.path if p.endswith("site-packages")))


def _installed(name: str) -> bool:
    """Installed in the venv (not merely visible: the checkout on sys.path may hold the
    editable install's ``*.egg-info`` of another venv)."""
    wanted = colab.normal_name(name)
    return any(colab.normal_name(d.metadata["Name"]) == wanted
               for d in importlib.metadata.distributions(path=[str(_site_packages())]))


def _is_colab_jax() -> bool:
    pinned = [line for line in CONSTRAINTS.read_text().splitlines() if line.startswith("jax==")]
    return _installed("jax") and f"jax=={importlib.metadata.version('jax')}" in pinned


def _entries(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def run() -> int:
    import importlib

    spec = importlib.util.spec_from_file_location("run_notebooks",
                                                  ROOT / "tools" / "run_notebooks.py")
    run_notebooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_notebooks)

    if _installed(colab.COURSE_PACKAGE) or not _is_colab_jax():
        make_replica()  # an earlier run upgraded it: back to Colab's state
    notebooks = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="colab-leg-") as tmp:
        source = str(snapshot(Path(tmp) / "course"))
        log = Path(tmp) / "colab-setup.jsonl"
        # pip as on Colab: none of this machine's pip configuration files (extra indexes of
        # local folders, say, which warn on stderr where they do not exist).
        os.environ.update(PIP_CONFIG_FILE=os.devnull, COURSE_INSTALL_SOURCE=source,
                          COURSE_WORK="smoke", PYDEVD_DISABLE_FILE_VALIDATION="1")
        os.environ[colab.LOG_VARIABLE] = str(log)
        problems += dry_run_gpu_install(source)
        before = importlib.metadata.version("jax")
        status = run_notebooks.main([str(notebooks[0])])
        upgraded = _entries(log)
        after_first = _jax_files()
        if status == 0:
            status = run_notebooks.main([str(p) for p in notebooks[1:]])
        kept = _entries(log)[len(upgraded):]

    # The first cell of the first lesson upgraded Colab's JAX, the CPU build (no GPU here).
    stack = [f"jax=={colab.TESTED_STACK['jax']}", f"flax=={colab.TESTED_STACK['flax']}"]
    if not (upgraded and upgraded[0]["action"] == "upgrade"
            and all(r in upgraded[0]["command"] for r in stack)):
        problems.append(f"lesson 00's first cell did not upgrade JAX {before}: {upgraded}")
    # Every later first cell kept it: pinned as a constraint, its files untouched.
    for entry in kept:
        asked = entry["command"][entry["command"].index("install") + 1:]
        if entry["action"] != "keep" or "-c" not in asked or any(
                a.startswith(("jax==", "jax[", "jaxlib==")) for a in asked):
            problems.append(f"a later first cell did not keep JAX: {entry}")
    if len(kept) != len(notebooks) - 1 and status == 0:
        problems.append(f"{len(kept)} keep-branch set-ups for {len(notebooks) - 1} notebooks")
    if _jax_files() != after_first:
        problems.append(f"JAX changed after the upgrade: {after_first} -> {_jax_files()}")
    seconds = [f"{e['action']} {e.get('seconds', 0):.0f} s" for e in upgraded + kept]
    print(f"colab leg: JAX {before} -> {after_first[0]}; first-cell installs: "
          + ", ".join(seconds))
    for problem in problems:
        print(f"colab leg: FAILED: {problem}")
    return 1 if problems or status else 0


def main(argv: list[str]) -> int:
    if argv == ["replica"]:
        make_replica()
        return 0
    if argv == ["run"]:
        return run()
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
