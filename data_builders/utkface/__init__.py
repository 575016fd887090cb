"""UTKFace (aligned and cropped); importing it registers `utkface` with TFDS."""

from data_builders.utkface.utkface_dataset_builder import Builder
from data_builders.utkface.utkface_dataset_builder import UtkFaceConfig

__all__ = ["Builder", "UtkFaceConfig"]
