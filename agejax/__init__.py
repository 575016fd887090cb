"""agejax: facial age estimation with JAX, Flax, optax and orbax."""

__version__ = "0.1.0"
