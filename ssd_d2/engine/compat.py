"""What the supported Detectron2 releases lack, detected by feature (v0.6 and main both call
themselves "0.6"); each entry names the releases that need it."""

import torch.distributed as dist

from detectron2.engine import DefaultTrainer
from detectron2.utils import comm

__all__ = ["TrainerWithState", "has_compiled_coco_eval"]


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


def has_compiled_coco_eval() -> bool:
    """PyPI's v0.6 source has no C++ sources (dev/install.sh installs a stand-in ``_C``);
    without it, pycocotools' own COCOeval gives the same numbers."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return hasattr(_C, "COCOevalEvaluateImages")
