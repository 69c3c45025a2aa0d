"""Exceptions that carry a message meant for the user.

Every error raised on bad input derives from :class:`HistoGedlError` and names
the value that was wrong and what to do about it. The command line prints
these as one line; other exceptions are bugs and keep their traceback.
"""


class HistoGedlError(Exception):
    """Base class for errors caused by input, files or settings."""


class SlideReadError(HistoGedlError):
    """A slide could not be opened or read."""


class MissingMppError(HistoGedlError):
    """A slide has no resolution in its metadata and none was given."""


class InvalidParameterError(HistoGedlError, ValueError):
    """A parameter is outside its valid range."""


class ModelFileError(HistoGedlError):
    """A model file is missing, corrupt, or not a histo-gedl model."""


class DatasetError(HistoGedlError):
    """Training or evaluation data is missing or inconsistent."""
