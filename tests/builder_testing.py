"""A tfds builder test whose manual files a function writes into a temp dir."""

import shutil
import tempfile

import tensorflow_datasets as tfds


class ReleaseTestCase(tfds.testing.DatasetBuilderTestCase):
  """Subclasses set DATASET_CLASS, SPLITS and ``write_release(root)``.

  Imported as a module attribute (``builder_testing.ReleaseTestCase``) so
  pytest does not collect this base class itself.
  """

  @staticmethod
  def write_release(root: str) -> None:
    del root  # a dataset generated on the spot reads no files

  @classmethod
  def setUpClass(cls):
    cls.EXAMPLE_DIR = tempfile.mkdtemp()
    cls.write_release(cls.EXAMPLE_DIR)
    super().setUpClass()

  @classmethod
  def tearDownClass(cls):
    super().tearDownClass()
    shutil.rmtree(cls.EXAMPLE_DIR, ignore_errors=True)
