"""tools/distributed_train.py across processes: 2 processes x 4 CPU devices on 127.0.0.1 give
the losses of 1 process x 8 devices; a process that fails, or a run that hangs, is stopped
cleanly with every process killed (lesson 06_multi_device)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils import parallel

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(ROOT / "tools" / "distributed_train.py")
STEPS = "6"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "zombie" in status.read_text())


def _reports(results):
    found = []
    for r in results:
        lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
        assert len(lines) == 1, r.stdout
        found.append(json.loads(lines[0].removeprefix("RESULT ")))
    return found


def _pair(port: int, *extra: str, ids=(0, 1)) -> list[list[str]]:
    return [[sys.executable, SCRIPT, "--coordinator", f"127.0.0.1:{port}", "--num-processes",
             "2", "--process-id", str(i), "--cpu-devices", "4", "--steps", STEPS, *extra]
            for i in ids]


def test_two_processes_report_the_losses_of_one():
    started: list[int] = []
    commands = _pair(parallel.free_port())
    commands.append([sys.executable, SCRIPT, "--num-processes", "1", "--cpu-devices", "8",
                     "--steps", STEPS])
    results = parallel.run_processes(commands, timeout=240, cwd=str(ROOT),
                                     on_start=started.extend)
    two_a, two_b, alone = _reports(results)
    assert [r["process"] for r in (two_a, two_b)] == [0, 1]
    assert two_a["processes"] == 2 and two_a["devices"] == 8 and two_a["local_devices"] == 4
    assert alone["processes"] == 1 and alone["devices"] == 8
    assert len(alone["losses"]) == int(STEPS)
    assert two_a["losses"] == pytest.approx(two_b["losses"], rel=1e-6)
    assert two_a["losses"] == pytest.approx(alone["losses"], rel=1e-5)
    assert alone["losses"][-1] < alone["losses"][0]  # it trains
    for r in results:
        assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    assert not any(_alive(pid) for pid in started)


def test_a_failing_process_stops_all_of_them():
    started: list[int] = []
    port = parallel.free_port()
    commands = _pair(port, ids=(0,))  # process 0 waits for process 1 at initialize ...
    commands.append([sys.executable, SCRIPT, "--coordinator", f"127.0.0.1:{port}",
                     "--num-processes", "2", "--process-id", "7"])  # ... which fails
    with pytest.raises(parallel.ProcessesFailed, match="process 1 exited with code 2") as info:
        parallel.run_processes(commands, timeout=120, cwd=str(ROOT), on_start=started.extend)
    assert "--process-id must be 0 to 1" in info.value.results[1].stderr
    assert len(started) == 2 and not any(_alive(pid) for pid in started)


def test_a_hung_run_is_killed_at_the_timeout():
    started: list[int] = []
    commands = _pair(parallel.free_port(), ids=(0,))  # process 1 never comes
    with pytest.raises(parallel.ProcessesFailed, match="did not finish within 5 s"):
        parallel.run_processes(commands, timeout=5, cwd=str(ROOT), on_start=started.extend)
    assert len(started) == 1 and not any(_alive(pid) for pid in started)


def test_bad_arguments_get_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        parallel.parse_distributed_args(["--sync-every", "50"])
    assert "--sync-every 1 to 10" in capsys.readouterr().err


def test_local_device_ids_are_parsed_and_checked(capsys):
    args = parallel.parse_distributed_args(["--local-device-ids", "0,1, 2,3"])
    assert args.local_device_ids == [0, 1, 2, 3]
    assert parallel.parse_distributed_args([]).local_device_ids is None  # JAX decides
    with pytest.raises(SystemExit):
        parallel.parse_distributed_args(["--local-device-ids", "0;1"])
    assert "device numbers separated by commas, such as 0,1,2,3" in capsys.readouterr().err


def test_the_documented_slurm_command_starts_one_task_per_gpu():
    """JAX's Slurm detection gives each process the one GPU of its SLURM_LOCALID: the script's
    documentation must not show one task per node without --local-device-ids."""
    doc = Path(SCRIPT).read_text()
    assert "srun --nodes=2 --ntasks-per-node=8 --gpus-per-node=8" in doc
    for line in doc.splitlines():
        if "--ntasks-per-node=1" in line and line.strip().startswith("srun"):
            assert line.rstrip().endswith("\\"), line  # continued with --local-device-ids
    assert "--local-device-ids 0,1,2,3,4,5,6,7" in doc


def test_jax_slurm_detection_gives_each_process_one_gpu(monkeypatch):
    """The fact the Slurm advice rests on, in the installed JAX (a private API: if this test
    breaks, re-read jax/_src/clusters and update the lesson, the script and the README)."""
    from jax._src import clusters

    slurm = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "node[001-002]",
             "SLURM_NTASKS": "16", "SLURM_PROCID": "11", "SLURM_LOCALID": "3"}
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    _, n, me, local = clusters.ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, None, None, None)
    assert (n, me, list(local)) == (16, 11, [3])  # one GPU: the one numbered SLURM_LOCALID
    *_, given = clusters.ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, [0, 1, 2, 3, 4, 5, 6, 7], None, None)
    assert list(given) == [0, 1, 2, 3, 4, 5, 6, 7]  # --local-device-ids is kept


def test_the_command_runs_the_script_of_the_checkout():
    command = parallel.distributed_command("--steps", "3")
    assert command == [sys.executable, SCRIPT, "--steps", "3"]


def test_the_script_prints_its_help():
    result = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0 and "--coordinator" in result.stdout, result.stderr


def test_without_a_checkout_the_installed_program_runs(monkeypatch):
    monkeypatch.setattr(parallel, "_SCRIPT", Path("/nonexistent/distributed_train.py"))
    command = parallel.distributed_command("--help")
    assert command[1] == "-c"
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0 and "--coordinator" in result.stdout, result.stderr
