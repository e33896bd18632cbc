import logging
import socket
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detectron2.engine import launch as d2_launch

from .compat import _create_local_process_group

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
        launcher = _launch_on_cpu
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


def _launch_on_cpu(main_func, num_per_machine, num_machines, machine_rank, dist_url, args, timeout):
    """Detectron2's ``launch`` for gloo processes on the CPU: v0.6's asserts CUDA in every
    process (main's runs gloo); this one serves both, so CPU runs take one path."""
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto works on one machine only; give tcp://HOST:PORT.")
        with socket.socket() as s:  # a free port for the processes to meet at
            s.bind(("127.0.0.1", 0))
            dist_url = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    mp.start_processes(
        _cpu_worker,
        nprocs=num_per_machine,
        args=(main_func, num_machines * num_per_machine, num_per_machine, machine_rank,
              dist_url, args, timeout),
        daemon=False,
        start_method="spawn",
    )  # fmt: skip


def _cpu_worker(
    local_rank, main_func, world_size, num_per_machine, machine_rank, dist_url, args, timeout
):
    dist.init_process_group(
        backend="gloo",
        init_method=dist_url,
        world_size=world_size,
        rank=machine_rank * num_per_machine + local_rank,
        timeout=timeout,
    )
    _create_local_process_group(num_per_machine)
    # Each process takes its share of the cores instead of oversubscribing them.
    torch.set_num_threads(max(1, torch.get_num_threads() // num_per_machine))
    dist.barrier()
    main_func(*args)
    # Together: destroying the groups while another process is in a collective aborts it.
    dist.barrier()
    dist.destroy_process_group()
