"""Training checkpoints: Accelerate's full state, written under a temporary name and renamed, checked before resuming,
pruned to a limit."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from diffusers_mpdit.atomic import replace_path

_RUN_STATE = ("scheduler.bin", "random_states_0.pkl", "training_state.json")
_STATE_FILES = ("optimizer.bin", *_RUN_STATE)
_EMA_FILES = ("transformer_ema/config.json", "transformer_ema/diffusion_pytorch_model.safetensors")
_LORA_FILES = ("transformer_lora/trainable.safetensors", "transformer_lora/ema.pt")
CHECKPOINT_FILES = (
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors",
    *_EMA_FILES,
    *_STATE_FILES,
)
# A LoRA run saves only what trains (the adapter and the new class rows) and their EMA.
LORA_CHECKPOINT_FILES = (*_LORA_FILES, *_STATE_FILES)
# Under FSDP (sharded state dict) Accelerate writes the model and the optimizer with torch.distributed.checkpoint, one
# `__<rank>_0.distcp` per process beside `.metadata`; the EMA is gathered and written whole.
_FSDP_SHARDED = ("pytorch_model_fsdp_0", "optimizer_0")
FSDP_CHECKPOINT_FILES = tuple(f"{d}/.metadata" for d in _FSDP_SHARDED) + (*_EMA_FILES, *_RUN_STATE)
# Under DeepSpeed, Accelerate has DeepSpeed write the model and its optimizer partitions into `pytorch_model/`.
_DEEPSPEED_FILES = ("pytorch_model/mp_rank_00_model_states.pt",)


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-<step>` folders of a run, by step number.

    Args:
        output_dir (`str` or `os.PathLike`): The run's folder.
    """
    found = [
        p for p in Path(output_dir).glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name) and p.is_dir()
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def checkpoint_layout(path: str | os.PathLike) -> tuple[str, ...]:
    """The files a complete checkpoint holds: the weights (a full run's model and EMA, or a LoRA run's adapter and
    EMA) and what saved the model and optimizer (Accelerate itself, FSDP's sharded writers, or DeepSpeed), for every
    process that saved its random states.

    Args:
        path (`str` or `os.PathLike`): A `checkpoint-<step>` folder.
    """
    path = Path(path)
    processes = max(1, len(list(path.glob("random_states_*.pkl"))))
    states = tuple(f"random_states_{r}.pkl" for r in range(1, processes))
    lora = _LORA_FILES if (path / "transformer_lora").is_dir() else None
    if (path / "pytorch_model_fsdp_0").is_dir():
        shards = tuple(f"{d}/__{r}_0.distcp" for d in _FSDP_SHARDED for r in range(processes))
        return FSDP_CHECKPOINT_FILES + shards + states
    if (path / "pytorch_model").is_dir():
        return (*_DEEPSPEED_FILES, *(lora or _EMA_FILES), *_RUN_STATE, *states)
    return (LORA_CHECKPOINT_FILES if lora else CHECKPOINT_FILES) + states


def check_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint's `training_state.json` (`global_step`, `train_seconds`), or an error naming what is missing.

    Args:
        path (`str` or `os.PathLike`): A `checkpoint-<step>` folder.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {str(path)!r} is not a folder.")
    expected = checkpoint_layout(path)
    missing = [f for f in expected if not (path / f).is_file()]
    if missing:
        raise RuntimeError(f"Checkpoint {str(path)!r} is damaged or incomplete: missing {missing}.")
    state = json.loads((path / "training_state.json").read_text())
    return {"global_step": int(state["global_step"]), "train_seconds": float(state.get("train_seconds", 0.0))}


def save_checkpoint(
    accelerator, output_dir: str | os.PathLike, step: int, total_limit: int | None, train_seconds: float
):
    """Saves the full accelerator state as `checkpoint-<step>` under a temporary name and renames it, so that a crash
    never leaves a broken checkpoint behind; then prunes the oldest beyond `total_limit`. Call on every process.

    Args:
        accelerator (`accelerate.Accelerator`): The run's accelerator (its save hooks write the model and the EMA).
        output_dir (`str` or `os.PathLike`): The run's folder.
        step (`int`): The optimisation step.
        total_limit (`int`, *optional*): Checkpoints to keep.
        train_seconds (`float`): Training time so far, recorded for resuming time limits.
    """
    output_dir = Path(output_dir)
    final, tmp = output_dir / f"checkpoint-{step}", output_dir / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "training_state.json").write_text(json.dumps({"global_step": step, "train_seconds": train_seconds}))
        replace_path(tmp, final)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final
