"""Clear errors for the two ways loading most often goes wrong: a local path that is not there, and a weights file
that cannot be read.

This is the bottom layer's copy of the rules, for `from_pretrained` of the model and (through `loaders/`) of the
pipeline; front ends may wrap these errors in their own one-line messages.
"""

from __future__ import annotations

import os

from ..paths import looks_like_local_path
from .official_layout import UnreadableCheckpointError, describe_read_error, unreadable_checkpoint


def check_local_folder(pretrained_model_name_or_path: str | os.PathLike) -> str:
    """Returns the folder or repo id to load, with `~` expanded.

    Args:
        pretrained_model_name_or_path (`str` or `os.PathLike`): A local folder or a Hub repo id such as `org/name`.

    Raises:
        FileNotFoundError: for a name that reads as a local path (see [`looks_like_local_path`]) and is not an
            existing folder; the message names the path.
    """
    name = os.fspath(pretrained_model_name_or_path)
    path = os.path.expanduser(name)
    if os.path.isdir(path) or not looks_like_local_path(name):
        return path
    shown = repr(name) if path == name else f"{name!r} ({path})"
    problem = (
        f"{shown} is a file, not a folder" if os.path.exists(path) else f"The local folder {shown} does not exist"
    )
    raise FileNotFoundError(f"{problem}: give a saved model or pipeline folder, or a Hub repo id like `org/name`.")


def unreadable_weights_file(error: BaseException) -> str | None:
    """The file diffusers' `load_state_dict` (`diffusers.models.model_loading_utils`) was reading when `error` was
    raised, or None if `error` did not come from there.

    diffusers reports such a file with an OSError whose text does not say what is wrong; its traceback holds the
    frame, and the frame the file, so nothing depends on that text.

    Args:
        error (`BaseException`): An exception from diffusers' `from_pretrained`.
    """
    from diffusers.models import model_loading_utils

    code = model_loading_utils.load_state_dict.__code__
    traceback = error.__traceback__
    while traceback is not None:
        frame = traceback.tb_frame
        if frame.f_code is code:
            checkpoint_file = frame.f_locals.get(code.co_varnames[0])
            return os.fspath(checkpoint_file) if isinstance(checkpoint_file, (str, os.PathLike)) else None
        traceback = traceback.tb_next
    return None


def raise_if_unreadable_weights(error: BaseException) -> None:
    """Raises an [`UnreadableCheckpointError`] naming the file, from `error`, if `error` is diffusers failing to read
    a weights file; otherwise returns, for the caller to re-raise `error` as it is.

    Args:
        error (`BaseException`): An exception from diffusers' `from_pretrained`.
    """
    if isinstance(error, UnreadableCheckpointError):
        return
    path = unreadable_weights_file(error)
    if path is None:
        return
    # diffusers re-raises from inside its own fallback handlers: the last exception of the chain is the reader's.
    cause = error
    for _ in range(16):
        inner = cause.__cause__ or cause.__context__
        if inner is None:
            break
        cause = inner
    hint = "save it again, or download it again with `force_download=True`"
    raise unreadable_checkpoint(path, describe_read_error(cause), hint) from error
