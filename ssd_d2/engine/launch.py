import logging
from datetime import timedelta
from typing import Optional

import torch
import torch.multiprocessing as mp

from detectron2.engine import launch as d2_launch

from .compat import launch_on_cpu

__all__ = ["default_timeout", "launch"]

logger = logging.getLogger(__name__)


def default_timeout() -> timedelta:
    """How long a collective waits for the other processes before it fails instead of hanging:
    Detectron2's 30 minutes on GPUs; 10 on the CPU (small configs), to notice a hang sooner."""
    return timedelta(minutes=30 if torch.cuda.is_available() else 10)


def launch(
    main_func,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    args=(),
    timeout: Optional[timedelta] = None,
):
    """Detectron2's ``launch``, or without GPUs that many gloo processes sharing the CPU's cores.
    A process of this machine that dies stops the others, with a RuntimeError naming it and the
    cause; a hung process, or a remote one that dies, fails the others' next collective."""
    timeout = timeout or default_timeout()
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        main_func(*args)
        return
    launcher = d2_launch
    if not torch.cuda.is_available():
        logger.info(
            f"No GPU: {num_gpus_per_machine} gloo processes on the CPU (timeout {timeout})."
        )
        launcher = launch_on_cpu
    try:
        launcher(
            main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args, timeout
        )
    except mp.ProcessExitedException as e:
        rank = machine_rank * num_gpus_per_machine + e.error_index
        cause = f"signal {e.signal_name}" if e.signal_name else f"exit code {e.exit_code}"
        hint = " (SIGKILL: often the out-of-memory killer)" if e.signal_name == "SIGKILL" else ""
        raise RuntimeError(
            f"Training process {rank} of {world_size} (pid {e.error_pid}) died with {cause}"
            f"{hint}; the other processes were stopped. Continue from the last checkpoint "
            "with --resume."
        ) from e
    except mp.ProcessRaisedException as e:
        rank = machine_rank * num_gpus_per_machine + e.error_index
        raise RuntimeError(
            f"Training process {rank} of {world_size} failed; the other processes were "
            f"stopped. Its error:\n{e.msg}"
        ) from e
