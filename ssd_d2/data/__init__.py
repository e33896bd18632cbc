# Importing the datasets module registers the embedded ssd_shapes data set.
from .checks import DatasetError, check_dataset_files, check_images_exist, load_dataset_dicts
from .dataset_mapper import SSDDatasetMapper, UnreadableImageError, read_image
from .datasets import register_config_datasets, register_dataset_name, register_shapes_dataset
from .seeded_loader import SeededTrainingStream, SeededTrainLoader, build_ssd_train_loader
from .transforms import build_ssd_train_augmentations
