"""Exception types shared by the package: every error names the file, field and expectation."""

from __future__ import annotations


class CtdlError(Exception):
    """Base class for user-facing errors (the CLI prints these without a traceback)."""


class InputError(CtdlError):
    """A file or folder given by the user is missing, unreadable or inconsistent."""


class ConfigError(CtdlError):
    """A config file is invalid: message names the file, key path and what was expected."""
