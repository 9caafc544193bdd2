"""Errors caused by user input (config, data, checkpoints), reported as one line."""


class ConfigError(ValueError):
  """An invalid config value; the message names the key (config.a.b)."""
