# Importing the datasets module registers the embedded ssd_shapes data set.
from .dataset_mapper import SSDDatasetMapper
from .datasets import check_dataset_files, register_shapes_dataset
from .transforms import build_ssd_train_augmentations
