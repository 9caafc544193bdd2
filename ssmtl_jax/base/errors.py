"""The errors caused by user input, reported by every binary as one line.

Every module derives its own errors from these three, so that the command
line catches :class:`UserError` alone (``ssmtl_jax.base.cli``) and a user sees
``error: <message>`` and exit status 2 instead of a traceback. Programming
errors stay ordinary exceptions and keep their traceback.

This module imports nothing, so every floor may use it.
"""


class UserError(Exception):
  """A mistake in what the user gave us; the message names the file or key."""


class ConfigError(UserError, ValueError):
  """An invalid config value; the message names the key (config.a.b)."""


class DataError(UserError, ValueError):
  """Missing, malformed or inconsistent input data (videos, frames, ground
  truth, detections, weights, records); the message names the file."""


class CheckpointError(UserError, FileNotFoundError):
  """No usable checkpoint where one was required; names the directory/step."""
