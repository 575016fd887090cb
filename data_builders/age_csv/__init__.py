"""Face images listed in a CSV of ages; importing it registers `age_csv` with TFDS."""

from data_builders.age_csv.age_csv_dataset_builder import AgeCsvConfig
from data_builders.age_csv.age_csv_dataset_builder import Builder

__all__ = ["Builder", "AgeCsvConfig"]
