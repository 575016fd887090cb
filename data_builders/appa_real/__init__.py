"""APPA-REAL (apparent and real age); importing it registers `appa_real` with TFDS."""

from data_builders.appa_real.appa_real_dataset_builder import AppaRealConfig
from data_builders.appa_real.appa_real_dataset_builder import Builder

__all__ = ["Builder", "AppaRealConfig"]
