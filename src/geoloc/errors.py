"""The one exception type the command line turns into a clean message and exit code."""


class GeolocError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""
