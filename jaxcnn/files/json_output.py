"""`--json PATH`, the same in every command that has it: PATH is a file, or `-` for standard output.

A file is written as every JSON file of jaxcnn (`writers.write_json`: strict JSON, indented,
through a temporary file and a rename), and checked before the command's work (`check_json_path`),
so that a long run never loses its result to a missing or unwritable folder. With `-` the same text
goes to standard output, which then holds the JSON alone: the text the command prints otherwise
goes to standard error (`text_output`), so `jaxcnn CMD --json - > out.json` gives a valid file.

This module imports nothing heavy at import time: the command line imports it before any JAX.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator

STDOUT = "-"
OPTION = "--json"


def check_json_path(path: str | None) -> None:
    """Refuses, in one line naming `path`, a --json file that could not be written (its folder
    missing or unwritable, a folder in its place), before the command's work."""
    if path is not None and path != STDOUT:
        from jaxcnn.files.writers import check_output_file

        check_output_file(path, OPTION)


@contextlib.contextmanager
def text_output(path: str | None) -> Iterator[None]:
    """Within it, the command's text (anything printed on standard output) goes to standard error
    when the JSON goes to standard output (`--json -`), so standard output holds the JSON alone."""
    if path != STDOUT:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def write_json_output(path: str | None, payload: Any) -> None:
    """`payload` as the text `writers.write_json` writes (keys in the command's own order), to the
    file `path` (atomically) or, for `-`, the same text to standard output; nothing without --json."""
    from jaxcnn.files.writers import dumps_json, write_text_atomic

    if path is None:
        return
    text = dumps_json(payload, indent=2, sort_keys=False) + "\n"
    if path == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_text_atomic(path, text)
