"""The supervisor's exit statuses, and the error that carries one."""

from __future__ import annotations

#: Exit statuses: success; failure (a job did not complete, the parent could not be started or
#: stopped, ...); usage error or bad input (an invalid job folder); ``status``: the parent does not serve.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3


class SupervisorError(Exception):
    """A failure to report on stderr; ``exit_code`` is the command's exit status."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code
