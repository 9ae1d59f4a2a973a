"""The shared checks of the config schema, `Registry` (name -> behaviour) and the machinery of its
sections (`key`, `section`, `Section`); `jaxcnn.spec` declares the sections and re-exports these.

Each check takes the dotted config key and the value, returns the value (normalised where said) and
otherwise raises one `JaxcnnError` line naming the key and what was expected:
`KEY must be EXPECTED, got VALUE`. Imports nothing of jaxcnn but `jaxcnn.errors`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import math
import numbers
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

from jaxcnn.errors import JaxcnnError


@contextlib.contextmanager
def without_bytecode() -> Iterator[None]:
    """Loading the user's code (config files, models named by import path) leaves their folders as
    they were: Python writes no `__pycache__` beside them meanwhile."""
    before = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = before

Check = Callable[[str, Any], Any]  # (dotted key, value) -> the value (normalised), or raise JaxcnnError


def fail(key: str, expected: str, value: Any, hint: str = "") -> None:
    """Raise the one-line error for config key `key`: `KEY must be EXPECTED, got VALUE[; HINT]`."""
    raise JaxcnnError(f"{key} must be {expected}, got {value!r}" + (f"; {hint}" if hint else ""))


def is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_seed_count(value: Any, flag: str = "--seeds") -> None:
    """`--seeds N` of every command: a whole number >= 1 (0 and negatives are refused alike, never
    read as "the default"), in one message wherever it is given."""
    if not is_int(value) or value < 1:
        raise JaxcnnError(f"{flag} must be a whole number of seeds >= 1, got {value!r}")


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def integer(low: int = 0, expected: str = "") -> Check:
    """An integer >= `low` (bools refused)."""
    expected = expected or {0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer >= {low}")

    def check(key: str, value: Any) -> Any:
        if not is_int(value) or value < low:
            fail(key, expected, value)
        return value

    return check


positive_int = integer(1)
non_negative_int = integer(0)


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False,
           expected: str = "", note: str = "", hint: str = "") -> Check:
    """A finite real number (bools refused) in the range given; `note` is appended to what is expected,
    `hint` to the error."""
    if not expected:
        if low is not None and high is not None:
            expected = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None:
            expected = f"{'>' if low_open else '>='} {low}"
        elif high is not None:
            expected = f"{'<' if high_open else '<='} {high}"
        else:
            expected = "a number"
    expected += note

    def check(key: str, value: Any) -> Any:
        if not is_number(value) or not math.isfinite(value):
            fail(key, "a finite number" if is_number(value) else "a number", value)
        above = low is None or (value > low if low_open else value >= low)
        below = high is None or (value < high if high_open else value <= high)
        if not (above and below):
            fail(key, expected, value, hint)
        return value

    return check


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        fail(key, "true or false", value)
    return value


def string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        fail(key, "a string", value)
    return value


def one_of(key: str, value: Any, names: Iterable[str], what: str = "value", also: str = "", hint: str = "") -> Any:
    """`value` if it is one of `names`; else `unknown WHAT 'VALUE' (KEY); expected one of: ...ALSO; did you
    mean 'NAME'?[; HINT]`."""
    names = sorted(names)
    if isinstance(value, str) and value in names:
        return value
    close = difflib.get_close_matches(str(value), names, n=1)
    guess = f"; did you mean {close[0]!r}?" if close else ""
    raise JaxcnnError(f"unknown {what} {value!r} ({key}); expected one of: {', '.join(names) or 'none'}{also}"
                      f"{guess}" + (f"; {hint}" if hint else ""))


def choice(names: Iterable[str], what: str = "value", hint: str = "") -> Check:
    """A check for `one_of(names)`; `names` may be a `Registry` (read when checking)."""
    return lambda key, value: one_of(key, value, names, what, hint=hint)


def sizes(key: str, value: Any) -> tuple[int, ...]:
    """A tuple of integers >= 1, e.g. layer widths."""
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(is_int(v) and v >= 1 for v in value):
        fail(key, "a tuple of integers >= 1, e.g. (64, 128)", value)
    return tuple(value)


def area_shares(key: str, value: Any) -> tuple[float, ...]:
    """() (off) or (min, max) area shares with 0 < min <= max <= 1 (a random-resized crop's scale)."""
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 0:
        return ()
    ok = (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
          and all(is_number(v) for v in value) and 0 < value[0] <= value[1] <= 1)
    if not ok:
        fail(key, "(min, max) area shares with 0 < min <= max <= 1, e.g. (0.08, 1.0), or () for off", value)
    return tuple(float(v) for v in value)


def increasing_epochs(key: str, value: Any) -> tuple[float, ...]:
    """Positive numbers in increasing order, e.g. the epochs of a piecewise schedule."""
    ok = (isinstance(value, Sequence) and not isinstance(value, str)
          and all(is_number(v) and math.isfinite(v) and v > 0 for v in value)
          and all(a < b for a, b in zip(value, value[1:])))
    if not ok:
        fail(key, "positive epochs in increasing order, e.g. (30, 60)", value)
    return tuple(value)


def stat(key: str, value: Any, positive: bool = False, channels: int | None = None) -> float | tuple[float, ...]:
    """A normalisation statistic: one number for all channels, or one per channel (`channels` of them
    when known); `positive` for a std. Returned as a float or a tuple of floats."""
    def ok(v: Any) -> bool:
        return is_number(v) and math.isfinite(v) and (v > 0 or not positive)

    if ok(value):
        return float(value)
    if (isinstance(value, Sequence) and not isinstance(value, str) and value and all(ok(v) for v in value)
            and channels in (None, len(value))):
        return tuple(float(v) for v in value)
    what, count = ("positive " if positive else ""), (f"{channels} " if channels else "")
    fail(key, f"a {what}number or a tuple of {count}{what}numbers (one per channel)", value,
         f"set e.g. {key}={1.0 if positive else 0.0}")


def finite(tree: Any, key: str = "") -> None:
    """Refuses NaN and infinite numbers anywhere in a plain config tree (`1e999` parses as infinity)."""
    if isinstance(tree, Mapping):
        for name, item in tree.items():
            finite(item, f"{key}.{name}" if key else name)
    elif isinstance(tree, (tuple, list)):
        for item in tree:
            finite(item, key)
    elif is_number(tree) and not math.isfinite(tree):
        raise JaxcnnError(f"config key '{key}' is {tree}; every number in a config must be finite")


# ---------------------------------------------------------------------------- registries


class Registry(Mapping):
    """Name -> entry (the behaviour), sorted by name. The module `home` implements and registers the
    entries; it is imported on the first read (not when this module loads: it stays the ground floor).
    `lookup` (and, as a field check, `registry(key, value)`) refuses an unknown name with one line
    listing the known ones and the closest. Users may register their own entries."""

    def __init__(self, what: str, key: str, home: str):
        self.what, self.key, self.home = what, key, home
        self._entries: dict[str, Any] = {}
        self._loaded = False

    def register(self, name: str, entry: Any = None, *, replace: bool = False) -> Any:
        """Add `entry` as `name`; without `entry`, a decorator that adds the function it decorates."""
        if entry is None:
            return lambda fn: self.register(name, fn, replace=replace)
        if name in self._entries and not replace:
            raise JaxcnnError(f"{self.what} {name!r} ({self.key}) is already registered; pass replace=True")
        self._entries[name] = entry
        return entry

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            importlib.import_module(self.home)

    def __getitem__(self, name: str) -> Any:
        self._load()
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def lookup(self, name: Any, key: str = "") -> Any:
        """The entry of `name` (`key`: the config key that named it, by default the registry's)."""
        return self[one_of(key or self.key, name, self, self.what)]

    def __call__(self, key: str, value: Any) -> Any:
        return one_of(key, value, self, self.what)


# ---------------------------------------------------------------------------- sections (jaxcnn.spec declares them)


def key(default: Any, check: Check | None = None) -> Any:
    """A config key of a section: its default and its check."""
    return dataclasses.field(default=default, metadata={"check": check})


def section(cls: type[Section]) -> Any:
    """A section of `RunSpec`: parsed from a mapping, default all defaults."""
    return dataclasses.field(default_factory=cls, metadata={"check": lambda _, value: cls.parse(value)})


class Section:
    """A frozen dataclass of config keys: each field's check runs on construction, then `check()`
    (checks across keys). `KEY` is the section's name in the config ('' for the top level)."""

    KEY: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            check = field.metadata.get("check")
            if check is not None:
                object.__setattr__(self, field.name, check(self.dotted(field.name), getattr(self, field.name)))
        self.check()

    def check(self) -> None:
        """Checks across keys (override)."""

    @classmethod
    def dotted(cls, name: str) -> str:
        return f"{cls.KEY}.{name}" if cls.KEY else name

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The keys with a plain default (not the sections)."""
        return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}

    @classmethod
    def parse(cls, values: Any) -> Any:
        """The section from a mapping (keys it lacks take their defaults; an unknown key is refused)."""
        if isinstance(values, cls):
            return values
        values = plain(values, cls.KEY)
        names = [f.name for f in dataclasses.fields(cls)]
        for name in values:
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                hint = f"; did you mean '{cls.dotted(close[0])}'?" if close else f"; keys here: {', '.join(names)}"
                raise JaxcnnError(f"unknown config key '{cls.dotted(name)}'{hint}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: unparse(getattr(self, f.name)) for f in dataclasses.fields(self)}


def plain(values: Any, name: str) -> dict[str, Any]:
    """A section's values as a plain dict (from a mapping or a `ConfigDict`), or one line if it is not one."""
    if hasattr(values, "to_dict"):  # an ml_collections.ConfigDict
        values = values.to_dict()
    if not isinstance(values, Mapping):
        raise JaxcnnError(f"config key '{name}' must be a section (a mapping of keys), got {values!r}")
    return dict(values)


def unparse(value: Any) -> Any:
    return value.to_dict() if isinstance(value, Section) else value
