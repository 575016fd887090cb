"""Errors a user can act on."""


class ConfigError(ValueError):
  """A configuration value is unknown, mistyped or impossible.

  The message always starts with the offending key (e.g. ``optim.lr``) so a
  one-line report tells the user what to change.
  """

  def __init__(self, key: str, message: str):
    self.key = key
    super().__init__(f"{key}: {message}")
