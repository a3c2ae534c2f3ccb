"""Which names mean a local path: shared by the loaders and the front ends, importable without torch."""

from __future__ import annotations

import os


def looks_like_local_path(name: str | os.PathLike) -> bool:
    """Whether `name` can only mean a local path: absolute, starting with `.` or `~`, or with more than one `/`.

    None of these is a valid Hub repo id, so a caller can refuse such a name that is not a folder instead of sending
    it to the Hub, whose answer would be about repo id syntax.

    Args:
        name (`str` or `os.PathLike`): A folder or a Hub repo id.
    """
    name = os.fspath(name)
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1
