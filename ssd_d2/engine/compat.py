"""
What the supported Detectron2 releases lack, detected by feature (v0.6 and main both call
themselves "0.6"). Each entry names the releases that need it; where a release has the
feature, Detectron2's own code runs.
"""

import torch.distributed as dist

from detectron2.engine import DefaultTrainer
from detectron2.engine import create_ddp_model as d2_create_ddp_model
from detectron2.utils import comm

__all__ = [
    "TrainerWithState",
    "create_ddp_model",
    "create_local_process_group",
    "has_compiled_coco_eval",
]


def create_ddp_model(model, **kwargs):
    """
    v0.6 and main (02b5c4e): ``create_ddp_model`` passes ``device_ids=[local_rank]`` even for
    a model on the CPU, which DistributedDataParallel rejects; CPU models get none.
    """
    if comm.get_world_size() > 1 and not next(model.parameters()).is_cuda:
        kwargs.setdefault("device_ids", None)
    return d2_create_ddp_model(model, **kwargs)


# v0.6: DefaultTrainer's checkpoints hold no optimizer state (main saves the inner trainer's
# state, the optimizer and AMP's grad scaler, under "_trainer"); --resume needs it.
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


def create_local_process_group(num_processes_per_machine: int) -> None:
    """
    The process group of this machine's processes, which ``comm.get_local_rank()`` reads.
    v0.6 has no ``comm.create_local_process_group`` and makes the group inside its launch only.
    """
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
    """
    PyPI's v0.6 source has no C++ sources (dev/install.sh installs a stand-in ``_C``):
    COCOEvaluator then uses pycocotools' own COCOeval, which gives the same numbers.
    """
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return hasattr(_C, "COCOevalEvaluateImages")
