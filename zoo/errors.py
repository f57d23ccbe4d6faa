"""The zoo's error types. Every command catches these (and only these) and prints their one-line message with
exit code 2; any other exception is a bug and keeps its traceback.

`ConfigError` and `CheckpointError` are also `ValueError`s, so code written against plain Python conventions
still catches them; the commands never catch a bare `ValueError`, so a bug is never reported as bad input."""

from __future__ import annotations


class ZooError(Exception):
    """Bad input the user can fix: the message is one line that says what is wrong and how to fix it."""


class ConfigError(ZooError, ValueError):
    """A configuration that cannot be built. The message is one line naming the valid choices."""


class CheckpointError(ZooError, ValueError):
    """A checkpoint that is missing, corrupt, or does not match the model it is loaded into."""


class CheckpointConfigError(CheckpointError, ConfigError):
    """A checkpoint whose config cannot (or must not) be built. It is both kinds of error, so callers that
    catch `ConfigError` for bad model configs catch it too; the message names the file."""


class PublishError(ZooError, RuntimeError):
    """A run folder that cannot be published as it is (no checkpoint, an existing output folder, ...)."""


class ChartError(ZooError):
    """Run folders that cannot be charted (none found, nothing to plot)."""
