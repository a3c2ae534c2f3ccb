"""Outputs appear complete or not at all: written under a temporary name in the target folder, then renamed."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


def give_normal_permissions(path: str | os.PathLike, directory: bool = False) -> None:
    """What `open`/`mkdir` would have given under the current umask (mkstemp creates 0600, mkdtemp 0700, and
    safetensors writes its files 0600); a directory gets it for everything inside, too."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)
    if directory:
        for root, dirs, files in os.walk(path):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o777 & ~umask)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~umask)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary file name beside `path`; once the block succeeds, the file is renamed to `path`.

    Args:
        path (`str` or `os.PathLike`): The final file; its suffix is kept, so writers that infer a format from it work.
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=os.path.splitext(name)[1])
    os.close(fd)
    try:
        yield tmp
        give_normal_permissions(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
