"""The one exception type for user mistakes, and the helper that suggests names."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DlkitError(ValueError):
    """A mistake the user can fix: bad names, out-of-range values, missing files.

    The CLI prints its message as one paragraph and exits non-zero, without a
    traceback. Anything else that escapes is a bug in dlkit.
    """


def closest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Returns a "Did you mean ...?" hint for `name` among `choices`, or ""."""
    matches = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(repr(m) for m in matches) + "?"
