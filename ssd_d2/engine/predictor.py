from detectron2.engine import DefaultPredictor

from .checkpoint import load_weights

__all__ = ["SSDPredictor"]


class SSDPredictor(DefaultPredictor):
    """
    DefaultPredictor whose MODEL.WEIGHTS come through ssd_d2's weights entrance
    (:func:`~ssd_d2.engine.checkpoint.load_weights`): files are read without running code
    from them unless MODEL.ALLOW_UNSAFE_CHECKPOINTS, for ".pkl" files too.

    Detectron2's DefaultPredictor loads a peer's published file as well (the SSD model
    converts it in ``load_state_dict``), but reads it with Detectron2's own checkpointer.
    """

    def __init__(self, cfg):
        without_weights = cfg.clone()
        without_weights.defrost()
        without_weights.MODEL.WEIGHTS = ""
        super().__init__(without_weights)
        # Keep the config the model was built from (its MODEL.DEVICE settled: Detectron2's
        # predictor reads it for every image), naming the weights again.
        self.cfg.defrost()
        self.cfg.MODEL.WEIGHTS = cfg.MODEL.WEIGHTS
        self.cfg.freeze()
        load_weights(self.model, self.cfg)
