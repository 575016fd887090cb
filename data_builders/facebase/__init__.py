"""The face age benchmark's databases; importing it registers `facebase` with TFDS."""

from data_builders.facebase.facebase_dataset_builder import Builder
from data_builders.facebase.facebase_dataset_builder import FacebaseConfig

__all__ = ["Builder", "FacebaseConfig"]
