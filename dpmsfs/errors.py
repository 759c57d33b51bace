"""User-facing errors and the exit codes the CLI documents.

Every failure that an operator can cause or fix is raised as a `DpmsError` subclass
carrying one clear line of text; the CLI prints that line and exits with the class's
code, never a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # the command ran and found a problem (e.g. verify found damage)
EXIT_USAGE = 2  # bad arguments or configuration
EXIT_NOT_FOUND = 3  # a named work directory, snapshot or path does not exist
EXIT_UNAVAILABLE = 4  # FUSE, the store or the server is not available
EXIT_BUSY = 5  # already mounted / locked by another process
EXIT_INTERRUPTED = 130


class DpmsError(Exception):
    """An error with a one-line message meant for the operator."""

    exit_code = EXIT_FAILURE


class UsageError(DpmsError):
    exit_code = EXIT_USAGE


class NotFoundError(DpmsError):
    exit_code = EXIT_NOT_FOUND


class UnavailableError(DpmsError):
    exit_code = EXIT_UNAVAILABLE


class BusyError(DpmsError):
    exit_code = EXIT_BUSY
