"""What is at a path that should be a regular file: the one question asked before opening it.

Opening a FIFO blocks until a writer comes (a run hangs and ignores SIGTERM); `stat()` of a dangling
or looping symbolic link raises. So every file jaxcnn reads by name (images, IDX files) is first
described here, and anything but a regular file (or a link to one) is refused by name.
"""

from __future__ import annotations

import errno
import os
import stat

KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
         (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def not_a_regular_file(path: str | os.PathLike) -> str | None:
    """None for a regular file (or a symbolic link to one), else what is there, as words
    ("does not exist", "is a dangling symbolic link", "is a FIFO (named pipe)", ...)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symbolic link loop"
        if os.path.lexists(path):
            return "is a dangling symbolic link" if os.path.islink(path) else f"cannot be read ({e.strerror})"
        return "does not exist"
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in KINDS if test(mode)), "not a regular file")
    return f"is {kind}, not a regular file"
