"""Errors a user can act on.

Every error raised for bad input derives from :class:`CascadeError`; its message is one
line that names the problem and says what to do. The CLI prints it without a traceback
and exits with status 2.
"""


class CascadeError(Exception):
    """Base class for user-facing errors (one-line message, no traceback in the CLI)."""


class ImageError(CascadeError, ValueError):
    """An image file is missing, empty, truncated or not an image."""


class ConfigError(CascadeError, ValueError):
    """A config key or value is wrong."""


class CheckpointError(CascadeError, ValueError):
    """A checkpoint is missing, corrupt, or of the wrong kind."""


class ScaleError(CascadeError, ValueError):
    """A scale or output size is impossible."""


def os_error_message(e: OSError) -> str:
    """One line for an OSError a command did not foresee (disk full, permission denied ...)."""
    where = f" {e.filename}" if getattr(e, "filename", None) else ""
    return (f"cannot access{where}: {e.strerror or e}; check the path, its permissions "
            "and the free disk space")
