"""The one exception type meant for users.

Raise `JaxcnnError` for anything the user can fix (a bad file, an unknown name, a bad config value).
The CLI prints its message as one line and exits with status 2; any other exception is a bug.
"""


class JaxcnnError(Exception):
    """A user-facing error: its message names the file or key, what was expected and what to do."""
