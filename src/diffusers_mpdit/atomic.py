"""Outputs appear complete or not at all: written under a temporary name in the target folder, then renamed."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


def give_normal_permissions(path: str | os.PathLike, directory: bool = False) -> None:
    """What `open`/`mkdir` would have given under the current umask (mkstemp creates 0600, mkdtemp 0700, and
    safetensors writes its files 0600); a directory gets it for everything inside, too.

    Args:
        path (`str` or `os.PathLike`): A file or folder.
        directory (`bool`, defaults to `False`): Whether `path` is a folder.
    """
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


def save_pretrained_atomically(obj, output_dir: str | os.PathLike, merge: bool = False) -> None:
    """`obj.save_pretrained` into a temporary folder beside `output_dir`, then moved into place by renames.

    Args:
        obj: A diffusers model or pipeline (anything with `save_pretrained(folder, safe_serialization=True)`).
        output_dir (`str` or `os.PathLike`): The folder.
        merge (`bool`, defaults to `False`): False replaces `output_dir` as a whole. True keeps its other entries
            (a training run's checkpoints and logs) and replaces only those saved: the old index file
            (`model_index.json` or `config.json`) is removed first and the new one moved in last, so that a folder
            that has one is complete.
    """
    output_dir = os.path.abspath(output_dir)
    parent, name = os.path.split(output_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.", dir=parent)
    try:
        obj.save_pretrained(tmp, safe_serialization=True)
        give_normal_permissions(tmp, directory=True)
        if merge:
            os.makedirs(output_dir, exist_ok=True)
            last = ("model_index.json", "config.json")
            # The old index goes first: a crash between two components then leaves a folder without one.
            for index in last:
                if os.path.exists(os.path.join(tmp, index)) and os.path.exists(os.path.join(output_dir, index)):
                    os.unlink(os.path.join(output_dir, index))
            for entry in sorted(sorted(os.listdir(tmp)), key=lambda e: e in last):
                replace_path(os.path.join(tmp, entry), os.path.join(output_dir, entry))
        else:
            replace_path(tmp, output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_path(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Renames `source` to `target`; an existing folder `target` is renamed aside first and removed after, so that
    `target` is never a mix of the two.

    Args:
        source (`str` or `os.PathLike`): A complete file or folder.
        target (`str` or `os.PathLike`): Where it goes, on the same file system.
    """
    source, target = os.fspath(source), os.fspath(target)
    if os.path.isdir(target) and not os.path.islink(target):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old.", dir=os.path.dirname(target))
        os.rmdir(old)
        os.rename(target, old)
        os.rename(source, target)
        shutil.rmtree(old)
    else:
        os.replace(source, target)
