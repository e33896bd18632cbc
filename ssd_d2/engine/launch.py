import logging
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# (Not `import detectron2.engine.launch as ...`: detectron2.engine's `launch` function hides
# the module of that name.)
from detectron2.engine.launch import _find_free_port
from detectron2.engine.launch import launch as d2_launch
from detectron2.utils import comm

__all__ = ["DEFAULT_TIMEOUT", "launch"]

logger = logging.getLogger(__name__)

# How long a collective (a gradient all-reduce, the barrier after an evaluation) waits for the
# other processes before it fails with an error instead of hanging forever. It must exceed
# the longest time one process works alone: the main process's checkpoint save and COCO
# evaluation take seconds to a few minutes on the configs here. train_net.py --dist-timeout
# sets it. (On one machine, a process that dies is noticed at once, see ``launch``.)
DEFAULT_TIMEOUT = timedelta(minutes=10)


def launch(
    main_func,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    args=(),
    timeout: timedelta = DEFAULT_TIMEOUT,
):
    """
    Detectron2's ``launch`` on machines with GPUs (one NCCL process per GPU). Without GPUs,
    ``num_gpus_per_machine`` gloo processes on the CPU instead, so that multi-process
    data-parallel training runs (and is tested) anywhere.

    Without GPUs, when one process dies (an exception, a signal, the out-of-memory killer),
    the others are stopped at once and a RuntimeError names the process and the cause. A
    process that hangs, or one on another machine that dies, makes the others' next
    collective fail after ``timeout``.
    """
    if torch.cuda.is_available():
        d2_launch(
            main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args, timeout
        )
        return
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        main_func(*args)
        return
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto works on one machine only; give tcp://HOST:PORT.")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    logger.info(
        f"No GPU: launching {num_gpus_per_machine} gloo processes on the CPU (collective "
        f"timeout {timeout})."
    )
    try:
        mp.start_processes(
            _cpu_worker,
            nprocs=num_gpus_per_machine,
            args=(
                main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout
            ),
            daemon=False,
            start_method="spawn",
        )  # fmt: skip
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


def _cpu_worker(
    local_rank, main_func, world_size, num_per_machine, machine_rank, dist_url, args, timeout
):
    global_rank = machine_rank * num_per_machine + local_rank
    # Share the cores between the processes instead of oversubscribing them.
    torch.set_num_threads(max(1, torch.get_num_threads() // num_per_machine))
    dist.init_process_group(
        backend="gloo",
        init_method=dist_url,
        world_size=world_size,
        rank=global_rank,
        timeout=timeout,
    )
    # Detectron2's comm.get_local_rank() needs the group of the processes on this machine.
    if hasattr(comm, "create_local_process_group"):
        comm.create_local_process_group(num_per_machine)
    else:  # detectron2 v0.6
        for machine in range(world_size // num_per_machine):
            ranks = list(range(machine * num_per_machine, (machine + 1) * num_per_machine))
            group = dist.new_group(ranks)
            if machine == machine_rank:
                comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()
