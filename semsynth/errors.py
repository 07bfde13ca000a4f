"""The expected failures of semsynth, one family: `SemsynthError`.

Everything a user can cause (a bad input file, a damaged checkpoint, a config typo, an output
folder that cannot be written, a device that is not there) raises a subclass of `SemsynthError`
whose message names the file, key or value. The CLI prints such an error as one line and exits 2;
anything else is a bug and keeps its traceback (`--debug` shows tracebacks for both).

Each class also derives from the built-in exception a Python caller would expect (ValueError,
FileNotFoundError, ...), so `except ValueError` around library calls keeps working.
"""

from __future__ import annotations


class SemsynthError(Exception):
    """Base of every expected failure; `str(e)` is the one line the CLI prints."""


class InputError(SemsynthError, ValueError):
    """A value or file given by the user that semsynth cannot use (sizes, counts, layouts...)."""


class ConfigError(SemsynthError, ValueError):
    """A training config entry that is unknown, of the wrong type or out of range."""


class CheckpointError(SemsynthError, ValueError):
    """A checkpoint that is missing, damaged (content hash mismatch, truncated) or not semsynth's."""


class OutputError(SemsynthError, OSError):
    """An output path that cannot be written (read-only, under a file, ...)."""


class OutputExistsError(SemsynthError, FileExistsError):
    """Outputs that already exist and would be replaced without --overwrite."""


class MissingFileError(SemsynthError, FileNotFoundError):
    """A file or folder that the user named but that does not exist."""


class DeviceError(SemsynthError, ValueError):
    """A --device that is unknown or not available on this machine."""


class TrainingError(SemsynthError, RuntimeError):
    """Training cannot go on (a non-finite loss); nothing of the failed steps was saved."""


class UnknownNameError(SemsynthError, KeyError):
    """An unknown preset, architecture, label space or plug-in name. Unlike KeyError, str() is the
    plain message (KeyError would quote it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
