"""Distributed training under Hydra: one run directory for all processes, in runs and sweeps.

Lightning's DDP starts the extra processes of a machine by running the command line again.
Under Hydra its own command repeats ``sys.argv``, which in a multirun starts the whole sweep
again in every child process. :func:`child_command` rebuilds the command from the *job's*
overrides instead and pins the child to the job's run directory; :func:`use_hydra_child_command`
makes Lightning use it. Writes outside Lightning (manifest, status, results) are made by rank
zero only (:func:`is_rank_zero`). Where the processes are started by SLURM instead (``srun``,
e.g. through Hydra's submitit launcher), each runs Hydra's job setup in the same run directory;
:func:`log_to_rank_file` keeps their logs apart.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd, to_absolute_path
from pytorch_lightning.strategies.launchers import subprocess_script
from pytorch_lightning.utilities.rank_zero import rank_zero_only


def is_rank_zero() -> bool:
    """True in the one process of a distributed run that writes files (global rank 0)."""
    return rank_zero_only.rank == 0


def _quote(value: str) -> str:
    # Run directories may hold '=' and ',' (override names); a quoted Hydra string takes them.
    return '"' + value.replace('"', '\\"') + '"'


def child_command(local_rank: int) -> tuple[Sequence[str], str]:
    """The command and working directory of DDP child process ``local_rank`` of this Hydra job:
    this job's overrides, run mode, the job's output directory, no second ``.hydra`` folder."""
    import __main__  # here, not at the top: Lightning's note on its issue 15218

    hydra_cfg = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += list(hydra_cfg.overrides.task)
    command += [
        # one run, even when the job's overrides choose a search (hparams_search=optuna sets
        # hydra.mode=MULTIRUN): else each child started a study of its own
        "hydra.mode=RUN",
        f"hydra.run.dir={_quote(hydra_cfg.runtime.output_dir)}",
        f"hydra.job.name={hydra_cfg.job.name}_rank{local_rank}",  # its own log file
        "hydra.output_subdir=null",
    ]
    return command, get_original_cwd()


def use_hydra_child_command() -> None:
    """Make Lightning's subprocess launcher start DDP children with :func:`child_command`."""
    if not hasattr(subprocess_script, "_hydra_subprocess_cmd"):
        raise RuntimeError(
            "this pytorch-lightning no longer has _hydra_subprocess_cmd; iqs.distributed needs "
            "updating before DDP runs can keep one run directory"
        )
    subprocess_script._hydra_subprocess_cmd = child_command


def log_to_rank_file() -> None:
    """In a process other than rank zero, log to ``<job name>_rank<N>.log`` instead of the run's
    ``<job name>.log``, as the DDP children iqs starts do (their job name carries the rank)."""
    rank = rank_zero_only.rank
    if rank == 0 or not HydraConfig.initialized():
        return
    name = HydraConfig.get().job.name
    if name.endswith(f"_rank{rank}"):
        return
    shared = os.path.abspath(os.path.join(HydraConfig.get().runtime.output_dir, f"{name}.log"))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and handler.baseFilename == shared:
            # The same handler, pointed elsewhere: its class, format, level and encoding stay.
            # FileHandler opens its file again at the next record.
            with handler.lock:
                stream, handler.stream = handler.stream, None
                handler.baseFilename = shared.removesuffix(".log") + f"_rank{rank}.log"
            if stream is not None:
                stream.close()


# What Lightning's launcher writes into this process's environment when it starts children.
_LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def distributed_job() -> Iterator[None]:
    """One training job's distributed state, undone at its end: the process group is closed
    and the launcher's environment variables restored. Otherwise the next job of a multirun
    would find LOCAL_RANK set, take its processes for externally started ones and wait for
    children that never come."""
    saved = {key: os.environ.get(key) for key in _LAUNCHER_ENV}
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
