"""The one rule for names that become paths: a member's folder (members/<name>), a stacker's
(ensemble/<name>), a run's (runs/<name>). Checked where the names are read (the config), so no
file is ever written outside the run directory on the strength of a name."""
from __future__ import annotations

import re

MAX_NAME_CHARS = 100
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def name_problem(name) -> str:
    """'' when `name` can be one folder name on any file system and nothing else; otherwise what
    is wrong with it (for a message that names the config key)."""
    if not isinstance(name, str) or not name:
        return "is empty" if name in ("", None) else f"is not a string ({type(name).__name__})"
    if len(name) > MAX_NAME_CHARS:
        return f"is longer than {MAX_NAME_CHARS} characters"
    if not _SAFE.fullmatch(name) or ".." in name:
        return ("may hold only letters, digits, '_', '-' and '.', starting with a letter or digit (it names a "
                "folder: no '/', '..', spaces or other characters)")
    return ""


def check_name(name, where: str) -> str:
    """`name` itself, or ValueError naming `where` (e.g. "members[0].name") and the rule."""
    problem = name_problem(name)
    if problem:
        raise ValueError(f"{where} {name!r} {problem}")
    return name
