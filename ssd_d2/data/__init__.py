# Importing the datasets module registers the embedded ssd_shapes data set.
from .build import SeededTrainingStream, SeededTrainLoader, build_ssd_train_loader
from .dataset_mapper import SSDDatasetMapper, UnreadableImageError, read_image
from .datasets import check_dataset_files, register_shapes_dataset
from .transforms import build_ssd_train_augmentations
from .validation import DatasetError, check_dataset_dicts, load_dataset_dicts
