"""The one exception type for mistakes a user can fix (bad file, bad flag, wrong model).

The CLI prints these as a single line and exits with code 1; anything else is a bug (exit 2).
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""
