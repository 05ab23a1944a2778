"""The base of every error that is the user's to fix (bad input, a state to change).

The command line prints such an error as one line naming the input and exits with 2;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input or a state the user must change; the message says which and why."""
