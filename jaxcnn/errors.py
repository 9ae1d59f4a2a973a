"""The one exception type meant for users.

Raise `JaxcnnError` for anything the user can fix (a bad file, an unknown name, a bad config value).
The CLI prints its message as one line and exits with status 2; any other exception is a bug.
"""

import os
import re


class JaxcnnError(Exception):
    """A user-facing error: its message names the file or key, what was expected and what to do."""


def os_error_text(error: BaseException) -> str:
    """The OS error inside `error` as its message and number: an `OSError` in its chain (Orbax wraps
    them) or the code in a tensorstore message; else the error's text, on one line."""
    seen, current = set(), error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return f"{current.strerror} (errno {current.errno})"
        code = re.search(r"os_error_code='?(\d+)|OS error (\d+)", str(current))
        if code:
            number = int(code.group(1) or code.group(2))
            return f"{os.strerror(number)} (errno {number})"
        current = current.__cause__ or current.__context__
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:200]
