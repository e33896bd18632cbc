"""What the supported Detectron2 releases lack, detected by feature (v0.6 and main both call
themselves "0.6"); each entry names the releases that need it."""

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detectron2.engine import DefaultTrainer
from detectron2.utils import comm

__all__ = ["TrainerWithState", "has_compiled_coco_eval", "launch_on_cpu"]


# v0.6: checkpoints lack the optimizer and grad scaler state (main's "_trainer"); --resume needs it.
if "state_dict" in vars(DefaultTrainer):
    TrainerWithState = DefaultTrainer
else:

    class TrainerWithState(DefaultTrainer):
        def state_dict(self):
            ret = super().state_dict()
            ret["_trainer"] = self._trainer.state_dict()
            return ret

        def load_state_dict(self, state_dict):
            super().load_state_dict(state_dict)
            if "_trainer" in state_dict:
                self._trainer.load_state_dict(state_dict["_trainer"])


def _create_local_process_group(num_processes_per_machine: int) -> None:
    """The group of this machine's processes, for ``comm.get_local_rank()``; v0.6 has no
    ``comm.create_local_process_group`` (its launch makes the group)."""
    if hasattr(comm, "create_local_process_group"):
        comm.create_local_process_group(num_processes_per_machine)
        return
    machine_rank = dist.get_rank() // num_processes_per_machine
    for machine in range(dist.get_world_size() // num_processes_per_machine):
        first = machine * num_processes_per_machine
        group = dist.new_group(list(range(first, first + num_processes_per_machine)))
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group


def launch_on_cpu(main_func, num_per_machine, num_machines, machine_rank, dist_url, args, timeout):
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


def has_compiled_coco_eval() -> bool:
    """PyPI's v0.6 source has no C++ sources (dev/install.sh installs a stand-in ``_C``);
    without it, pycocotools' own COCOeval gives the same numbers."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return hasattr(_C, "COCOevalEvaluateImages")
