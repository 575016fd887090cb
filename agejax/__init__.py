"""agejax: facial age estimation with JAX, Flax, optax and orbax.

The commands are the top-level modules (``python -m agejax.main``,
``evaluate``, ``predict``, ``export``, ``convert``, ``tune``, ``lr_find``,
``report``, ``protocol``) and the ``benchmark`` package; the library lives in
the subpackages: ``config``, ``data``, ``models``, ``train``, ``workdir``,
``evaluation``, ``analysis`` (the run report), ``serving``, ``pretrained`` and
``tools``.
"""

__version__ = "0.1.0"

# Public shortcuts to library modules: ``from agejax import inference``.
_SHORTCUTS = {"inference": "agejax.serving.inference"}


def __getattr__(name: str):
  if name in _SHORTCUTS:
    import importlib  # pylint: disable=import-outside-toplevel

    return importlib.import_module(_SHORTCUTS[name])
  raise AttributeError(f"module 'agejax' has no attribute {name!r}")
