"""A stand-in for SLURM's ``sbatch``, ``srun`` and ``sacct`` on one machine, for tests.

``sbatch`` runs a batch script in the background as a job; ``srun`` inside it starts the job's
tasks as local processes, each with the environment SLURM gives a task (job id, task count,
global and local rank, node id, node list), so submitit's ``JobEnvironment`` and Lightning's
``SLURMEnvironment`` see a multi-node job whose "nodes" are processes of this machine. ``sacct``
reports the jobs' states; ``scontrol requeue`` stops a job's tasks and runs its script again, as
SLURM does with a job requeued at its time limit or on preemption. :func:`signal_job` sends a
signal to a job's tasks (what ``#SBATCH --signal`` does before the time limit). :func:`install`
writes the commands into a folder for ``PATH``. The tasks of a job array (a sweep of several
jobs) run one after another.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

STATE_DIR = "FAKE_SLURM_DIR"


def install(folder: Path) -> Path:
    """Write ``sbatch``, ``srun``, ``sacct`` and ``scontrol`` into ``folder/bin``; return it."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for command in ("sbatch", "srun", "sacct", "scontrol"):
        script = bin_dir / command
        script.write_text(
            "#!/bin/sh\n"
            f"{STATE_DIR}={shlex.quote(str(folder))} exec {shlex.quote(sys.executable)} "
            f'{shlex.quote(__file__)} {command} "$@"\n'
        )
        script.chmod(0o755)
    return bin_dir


def _state_dir() -> Path:
    return Path(os.environ[STATE_DIR])


def _free_job_id() -> str:
    """A job id whose port under Lightning's rule (15000 + its last four digits) is free."""
    start = random.randrange(1000, 10000)  # test sessions running side by side start apart
    for offset in [*range(start, 10000), *range(1000, start)]:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", 15000 + offset))
            except OSError:
                continue
        job_id = f"7{offset:04d}"
        if not (_state_dir() / f"{job_id}.state").exists():
            return job_id
    raise RuntimeError("no free port for a fake SLURM job")


def _directives(script: Path) -> dict[str, str]:
    flags = {}
    for line in script.read_text().splitlines():
        match = re.match(r"#SBATCH\s+--([\w-]+)(?:=(.*))?$", line.strip())
        if match:
            flags[match.group(1)] = match.group(2) or ""
    return flags


def _array_indices(spec: str) -> list[int]:
    """``0-3%2`` (submitit's form) -> [0, 1, 2, 3]; the parallelism limit is moot here."""
    first, last = spec.split("%")[0].split("-")
    return list(range(int(first), int(last) + 1))


def sbatch(args: list[str]) -> int:
    script = Path(args[-1]).resolve()
    flags = _directives(script)
    nodes = int(flags.get("nodes", 1))
    per_node = int(flags.get("ntasks-per-node", 1))
    job_id = _free_job_id()
    indices = _array_indices(flags["array"]) if "array" in flags else []
    outside = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}  # e.g. CI's
    env = dict(
        outside, SLURM_JOB_NAME=flags.get("job-name", "job"),
        SLURM_JOB_NUM_NODES=str(nodes), SLURM_NNODES=str(nodes),
        SLURM_NTASKS=str(nodes * per_node), SLURM_NTASKS_PER_NODE=str(per_node),
        SLURM_JOB_NODELIST="localhost", SLURM_NODELIST="localhost",
    )  # fmt: skip
    for key in [f"{job_id}_{i}" for i in indices] or [job_id]:
        (_state_dir() / f"{key}.state").write_text("PENDING")
    subprocess.Popen(
        [sys.executable, __file__, "_run", job_id, str(script), *map(str, indices)], env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    print(f"Submitted batch job {job_id}")
    return 0


def run_batch_script(args: list[str]) -> int:
    """The job itself, or the tasks of an array one after another (a cluster with one free
    slot): the batch script, again after each requeue, then the state for sacct."""
    job_id, script, *indices = args
    codes = []
    for index in indices or [None]:
        if index is None:
            key, env = job_id, {"SLURM_JOB_ID": job_id}
        else:
            key = f"{job_id}_{index}"
            env = {"SLURM_JOB_ID": _free_job_id(), "SLURM_ARRAY_JOB_ID": job_id,
                   "SLURM_ARRAY_TASK_ID": index}  # fmt: skip
        env["SLURM_JOBID"] = env["SLURM_JOB_ID"]
        requeue = _state_dir() / f"{key}.requeue"
        restarts = 0
        while True:
            (_state_dir() / f"{key}.state").write_text("RUNNING")
            env["SLURM_RESTART_COUNT"] = str(restarts)
            code = subprocess.call(["/bin/bash", script], env={**os.environ, **env})
            if not requeue.exists():
                break
            requeue.unlink()
            restarts += 1
        (_state_dir() / f"{key}.state").write_text("COMPLETED" if code == 0 else "FAILED")
        codes.append(code)
    return max(codes)


def _job_key() -> str:
    """The job's name in sacct and scontrol: ``<array job>_<index>`` for a task of an array."""
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def scontrol(args: list[str]) -> int:
    """``scontrol requeue <job>``: the job's tasks are stopped and its script runs again."""
    if args[:1] != ["requeue"]:
        sys.exit(f"fake scontrol: only 'requeue' is supported, got {args}")
    (_state_dir() / f"{args[1]}.requeue").touch()
    return 0


def signal_job(folder: Path, job_id: str, signum: int) -> None:
    """Send ``signum`` to every task of the job's current step."""
    for pid in (folder / f"{job_id}.pids").read_text().split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signum)


def srun(args: list[str]) -> int:
    streams = {"--output": None, "--error": None}
    while args and args[0].startswith("--"):
        flag = args.pop(0)
        if flag in streams:
            streams[flag] = args.pop(0)
    key = _job_key()
    patterns = {"%j": os.environ["SLURM_JOB_ID"], "%A": os.environ.get("SLURM_ARRAY_JOB_ID", ""),
                "%a": os.environ.get("SLURM_ARRAY_TASK_ID", "")}  # fmt: skip
    ntasks, per_node = int(os.environ["SLURM_NTASKS"]), int(os.environ["SLURM_NTASKS_PER_NODE"])
    tasks = []
    for rank in range(ntasks):
        env = dict(
            os.environ, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank % per_node),
            SLURM_NODEID=str(rank // per_node), SLURM_STEP_ID="0", SLURM_STEPID="0",
        )  # fmt: skip
        files = {}
        for flag, pattern in streams.items():
            if pattern:
                path = pattern.replace("%t", str(rank))
                for placeholder, value in patterns.items():
                    path = path.replace(placeholder, value)
                files[flag] = open(path, "a")  # noqa: SIM115 (closed below)
        out = files.get("--output")
        err = files.get("--error", out)
        tasks.append((subprocess.Popen(args, env=env, stdout=out, stderr=err), files))
    (_state_dir() / f"{key}.pids").write_text(" ".join(str(p.pid) for p, _ in tasks))
    requeue = _state_dir() / f"{key}.requeue"
    while any(p.poll() is None for p, _ in tasks):
        if requeue.exists():  # SLURM ends a requeued job's tasks: SIGTERM, then SIGKILL
            _stop([p for p, _ in tasks])
        time.sleep(0.2)
    for _, files in tasks:
        for handle in files.values():
            handle.close()
    return max(p.returncode for p, _ in tasks)


def _stop(processes: list[subprocess.Popen], grace_s: float = 5.0) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    for process in processes:
        if process.poll() is None:
            process.kill()


def sacct(args: list[str]) -> int:
    print("JobID|State|NodeList")
    for state in sorted(_state_dir().glob("*.state")):
        print(f"{state.stem}|{state.read_text()}|localhost")
    return 0


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    handlers = {
        "sbatch": sbatch,
        "srun": srun,
        "sacct": sacct,
        "scontrol": scontrol,
        "_run": run_batch_script,
    }
    sys.exit(handlers[command](rest))
