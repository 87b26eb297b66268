"""User errors as a type: what a caller can fix (a bad argument, file, name or option).

Every user error rrm-plugin raises is an `RRMUserError`. It subclasses `ValueError`, so code that
catches `ValueError` keeps working; the members that also name a builtin kind (`KeyError` for an
unknown name, `FileNotFoundError` for a missing file, ...) subclass that builtin too, so
`except FileNotFoundError` keeps working as well. The `rrm` command prints a user error as one
line and exits with status 2; any other exception is a bug in rrm-plugin (traceback, status 1).
"""

from __future__ import annotations


class RRMUserError(ValueError):
    """A mistake in what the caller asked for; the message says what was wrong and expected."""


class UnknownNameError(RRMUserError, KeyError):
    """An unknown model, SAE release, sae_id, hook or method name."""

    def __str__(self) -> str:  # KeyError's str() would quote the sentence
        return str(self.args[0]) if self.args else ""


class OutOfRangeError(RRMUserError, IndexError):
    """An index outside what exists (an image index, a unit index)."""


class MissingFileError(RRMUserError, FileNotFoundError):
    """A file or folder that does not exist."""


class OutputExistsError(RRMUserError, FileExistsError):
    """An output that would replace something that is not an earlier output of the same kind."""


class NotAFolderError(RRMUserError, NotADirectoryError):
    """A file where a folder was expected."""


class NotAFileError(RRMUserError, IsADirectoryError):
    """A folder where a file was expected."""


class NotWritableError(RRMUserError, PermissionError):
    """A place that cannot (or must not) be written."""


class CorruptFileError(RRMUserError):
    """A weights or config file that cannot be read or does not have the expected content."""
