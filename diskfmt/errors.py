"""Errors raised by the disk format parsers.

Standard library only and Python 3.6 compatible. The v2v layer wraps FormatError into its SourceError.
"""


class FormatError(ValueError):
    """Bytes that are not the format they claim to be; str() is one line a user can act on."""
