"""The project's errors: one base class, one way to say an error in a line.

Every exception class the package defines descends from :class:`M2AError`. Raise one for
anything a user can cause or mend (a bad input file, option, weights file, output folder,
cluster address); its message is one line that starts with what it is about, then the
reason: ``"drive.mp4: no video stream"``. Everything else (a bug) is left to surface as a
traceback. The command line turns an :class:`M2AError` or an OSError into
``m2a-pipe: error: <message>`` and its :attr:`~M2AError.exit_code` (:mod:`m2a_pipe.cli`).
"""

from __future__ import annotations

EXIT_FAILED = 1
"""Exit code of a run that failed (a bad input, a failed video, a damaged file)."""
EXIT_USAGE = 2
"""Exit code of a command that was not run: a bad option, setting or combination."""
EXIT_INTERRUPTED = 130
"""Exit code after Ctrl-C (128 + SIGINT)."""


class M2AError(Exception):
    """Base of every error the package raises on purpose (see the module docstring)."""

    exit_code = EXIT_FAILED

    def user_message(self) -> str:
        """What the command line prints after ``m2a-pipe: error:`` (one line by default)."""
        return first_line(self)


class UsageError(M2AError):
    """A bad option, setting or combination of them: nothing was run."""

    exit_code = EXIT_USAGE


def first_line(err: BaseException | str) -> str:
    """The first non-empty line of an error's message (the class name when it has none)."""
    text = str(err).strip()
    if not text:
        return type(err).__name__ if isinstance(err, BaseException) else ""
    return text.splitlines()[0].strip()


def os_error_line(err: OSError, subject: object = None) -> str:
    """``"<file>: <reason>"`` for an OSError (``subject`` when the error names no file)."""
    where = err.filename if err.filename is not None else subject
    reason = err.strerror or first_line(err)
    if err.filename2 is not None:
        where = f"{where} -> {err.filename2}"
    return f"{where}: {reason}" if where is not None else reason
