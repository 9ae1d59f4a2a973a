"""The README's examples as a newcomer runs them: its code blocks, read from README.md itself (so a
README change cannot drift from what tests/test_readme_examples.py runs), turned into steps.

A step is a file to write (a Python block that the README names: "this `mynets.py`", or
`python make_shapes.py  # the script above` in the block after it), a Python script to run (any
other Python block) or a bash script (a bash block, as written, with the data directory the README
tells the user to pass replaced by the one of the test). Commands that install packages are not
run: the test's environment is the installed one.
"""

from __future__ import annotations

import dataclasses
import re

README_DATA_DIR = "../shared/data"  # what the README tells the user to pass as --data-dir
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
_NAMED_ABOVE = re.compile(r"this `(\w+\.py)`")
_SCRIPT_ABOVE = re.compile(r"^python (\S+\.py)\s+# the script above", re.M)


@dataclasses.dataclass(frozen=True)
class Step:
    """One thing to do: `kind` "file" (write `text` to `name`), "python" or "bash" (run `text`)."""

    section: str
    kind: str
    text: str
    name: str = ""


def sections(readme: str) -> dict[str, str]:
    """{"## heading" title: its text up to the next "## " heading}."""
    parts = re.split(r"^## (.+)$", readme, flags=re.M)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2])}


def steps_of(title: str, body: str, data_dir: str) -> list[Step]:
    """The steps of one README section, in order (see the module doc)."""
    blocks = [(m.group(1), m.group(2), body[:m.start()]) for m in _BLOCK.finditer(body)]
    steps = []
    for i, (language, code, before) in enumerate(blocks):
        if language == "python":
            name = _file_name(before, blocks[i + 1][1] if i + 1 < len(blocks) else "")
            steps.append(Step(title, "file", code, name) if name else Step(title, "python", code))
        elif language == "bash":
            commands = [line for line in code.splitlines() if not line.lstrip().startswith("pip install")]
            steps.append(Step(title, "bash", "\n".join(commands).replace(README_DATA_DIR, data_dir)))
    return steps


def _file_name(text_before: str, next_block: str) -> str:
    """The file a Python block is meant to be saved as, "" when it is a script to run as it is."""
    named = _NAMED_ABOVE.search(text_before.rstrip().rsplit("\n\n", 1)[-1])
    if named:
        return named.group(1)
    script = _SCRIPT_ABOVE.search(next_block)
    return script.group(1) if script else ""


def needs_data_dir(step: Step) -> bool:
    """Whether a step reads MNIST or Fashion-MNIST (then the test needs the real data)."""
    return bool(re.search(r"mnist|--data-dir|JAXCNN_DATA_DIR", step.text))
