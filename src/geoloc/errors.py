"""The exceptions the command line turns into a clean message and a documented exit code."""


class GeolocError(Exception):
    """A problem with the user's input or environment, reported without a traceback (exit 2)."""


class StopRequested(BaseException):
    """A stop signal ended the command; a rerun resumes (training) or repeats it.

    Exit code 3, or 130 for Ctrl-C. A BaseException, as KeyboardInterrupt is: it may be raised
    by a signal handler in the middle of any code, and no `except Exception` there (an image
    decoder's, say) may take it for a failure of the code it interrupted.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
