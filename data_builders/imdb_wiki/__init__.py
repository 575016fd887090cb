"""IMDB-WIKI (Rothe et al., DEX): importing this registers `imdb_wiki` with TFDS."""

from .imdb_wiki_dataset_builder import Builder
from .imdb_wiki_dataset_builder import ImdbWikiConfig
from .imdb_wiki_dataset_builder import REPORT_FILE

__all__ = ["Builder", "ImdbWikiConfig", "REPORT_FILE"]
