"""Generated cartoon faces; importing it registers `synthetic_faces` with TFDS."""

from data_builders.synthetic_faces.synthetic_faces_dataset_builder import Builder
from data_builders.synthetic_faces.synthetic_faces_dataset_builder import SyntheticFacesConfig

__all__ = ["Builder", "SyntheticFacesConfig"]
