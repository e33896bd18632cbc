from detectron2.engine import DefaultPredictor

from .checkpoint import load_weights

__all__ = ["SSDPredictor"]


class SSDPredictor(DefaultPredictor):
    """DefaultPredictor whose MODEL.WEIGHTS come through ssd_d2's checkpointer (safe reading)."""

    def __init__(self, cfg):
        cfg = cfg.clone()
        cfg.defrost()
        weights, cfg.MODEL.WEIGHTS = cfg.MODEL.WEIGHTS, ""
        super().__init__(cfg)  # self.cfg: the config the model was built from
        self.cfg.defrost()
        self.cfg.MODEL.WEIGHTS = weights
        self.cfg.freeze()
        load_weights(self.model, self.cfg)
