"""diffusers' remote-code convention for the folders we save: beside a config, a one-line Python file that imports the
class from the installed package. `AutoModel` (through `auto_map`) and `DiffusionPipeline` (through the list form of a
class entry) load such a folder with `trust_remote_code=True` in a process that never imported `diffusers_mpdit`."""

from __future__ import annotations

import os
import re

# The whole file: a saved folder's entry point only ever re-exports a class of the installed package.
_ENTRY_POINT = "from {module} import {name}  # noqa: F401 (diffusers-mpdit entry point)\n"
_ENTRY_POINT_PATTERN = re.compile(
    r"from (?P<module>diffusers_mpdit(?:\.\w+)+) import (?P<name>\w+)  # noqa: F401 \(diffusers-mpdit entry point\)\n"
)


def entry_point_module(cls: type) -> str:
    """The file name (without `.py`) of `cls`'s entry point: its module's last component, as diffusers' `auto_map`
    writes it."""
    return cls.__module__.rsplit(".", 1)[-1]


def write_entry_point(folder: str | os.PathLike, cls: type) -> str:
    """Writes `<folder>/<entry_point_module(cls)>.py`, under a temporary name first.

    Args:
        folder (`str` or `os.PathLike`): A saved model, scheduler or pipeline folder.
        cls (`type`): A class of this package.

    Returns:
        `str`: the module name written.
    """
    name = entry_point_module(cls)
    path = os.path.join(folder, f"{name}.py")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as file:
        file.write(_ENTRY_POINT.format(module=cls.__module__, name=cls.__name__))
    os.replace(tmp, path)
    return name


def read_entry_point(path: str | os.PathLike) -> tuple[str, str] | None:
    """`(module, class name)` if `path` is exactly an entry point this package writes, else None (someone else's code,
    which only diffusers' own `trust_remote_code` path may run).

    Args:
        path (`str` or `os.PathLike`): A `.py` file in a saved folder.
    """
    try:
        with open(path, encoding="utf-8") as file:
            match = _ENTRY_POINT_PATTERN.fullmatch(file.read())
    except (OSError, UnicodeDecodeError):
        return None
    return (match["module"], match["name"]) if match else None
