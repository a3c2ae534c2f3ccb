#!/usr/bin/env python
"""Sample a class-balanced set of images for FID, over any number of processes, resumable, in ADM's `.npz` format.

    accelerate launch examples/sample_fid.py --model org/mpdit-xl-256 --num_samples 50000 --output_dir samples/
    torchrun --nproc_per_node 2 examples/sample_fid.py ...                 # CPU processes (gloo)
    mpdit evaluate samples/samples_50000x256x256x3.npz VIRTUAL_imagenet256_labeled.npz

Image i has class `i % num_classes` (50 per class for 50,000 ImageNet samples) and its own noise, from a CPU
generator seeded with `seed + i` (as `mpdit generate` seeds its images; torch seeds its CPU generator with 32 bits, so
independent runs should use seeds at least `num_samples` apart). The indices are cut into fixed batches of `--batch_size`, dealt to the processes in turn, so every image
is computed in the same batch whatever the world size: the output does not depend on it. Each image is written as
`images/{i:06d}.png` (under a temporary name, then renamed); a rerun with the same settings skips finished batches.
When all are done, the main process stacks them into `samples_{N}x{H}x{W}x3.npz` (`arr_0` uint8 images, `arr_1`
labels), the file ADM's evaluator and `mpdit evaluate` read.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from PIL import Image
from tqdm.auto import tqdm

from diffusers_mpdit import MPDiTPipeline
from diffusers_mpdit.atomic import atomic_path
from diffusers_mpdit.evaluation.adm import write_images_npz
from diffusers_mpdit.pipelines.schedulers import SCHEDULERS, make_scheduler

# The settings that decide the images; a resumed run must match them.
IDENTITY = (
    "model",
    "num_samples",
    "num_classes",
    "scheduler",
    "num_inference_steps",
    "guidance_scale",
    "guidance_interval",
    "seed",
    "batch_size",
    "dtype",
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="MPDiT pipeline folder or Hub id")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--num_samples", type=int, default=50000, help="total images (default 50,000: ADM's count)")
    p.add_argument("--num_classes", type=int, help="classes to cycle through (default: all of the model's)")
    p.add_argument("--scheduler", choices=list(SCHEDULERS), default="euler")
    p.add_argument("--num_inference_steps", type=int, default=50)
    p.add_argument("--guidance_scale", type=float, default=1.5)
    p.add_argument("--guidance_interval", type=float, nargs=2, metavar=("LOW", "HIGH"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=32, help="images per forward pass, per process")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    args = p.parse_args(argv)
    for name in ("num_samples", "batch_size", "num_inference_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.num_classes is not None and args.num_classes < 1:
        p.error(f"--num_classes must be >= 1, got {args.num_classes}")
    if not 0 <= args.seed <= 2**32 - args.num_samples:
        p.error(f"--seed must be in [0, 2**32 - num_samples], got {args.seed}")
    if args.guidance_scale < 0:
        p.error(f"--guidance_scale must be >= 0, got {args.guidance_scale}")
    if args.guidance_interval and not 0 <= args.guidance_interval[0] <= args.guidance_interval[1] <= 1:
        p.error(f"--guidance_interval must be LOW <= HIGH within [0, 1], got {args.guidance_interval}")
    return args


def image_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator, so that the noise is the same on every device."""
    return torch.Generator("cpu").manual_seed(seed + index)


def image_path(output_dir: str, index: int) -> str:
    return os.path.join(output_dir, "images", f"{index:06d}.png")


def check_settings(output_dir: str, settings: dict) -> None:
    """Records the settings on the first run; refuses to mix in images made with other ones."""
    path = os.path.join(output_dir, "sampling_settings.json")
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        changed = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
        if changed:
            details = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise SystemExit(f"{output_dir} holds samples made with other settings ({details}); use another folder")
    else:
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            json.dump(settings, f, indent=2)


@torch.no_grad()
def main(argv=None) -> None:
    args = parse_args(argv)
    # Without an accelerator, accelerate joins the torchrun process group (MULTI_CPU, gloo) only when cpu=True.
    state = PartialState(cpu=not torch.accelerator.is_available())
    pipe = MPDiTPipeline.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).to(state.device)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(args.scheduler, pipe.scheduler.config)
    model_classes = pipe.transformer.config.num_classes
    num_classes = args.num_classes or model_classes
    if num_classes > model_classes:
        raise SystemExit(f"--num_classes {num_classes}: the model has {model_classes} classes")

    settings = {k: getattr(args, k) for k in IDENTITY} | {"num_classes": num_classes}
    if state.is_main_process:
        os.makedirs(os.path.join(args.output_dir, "images"), exist_ok=True)
        check_settings(args.output_dir, settings)
    state.wait_for_everyone()

    labels = np.arange(args.num_samples) % num_classes
    batches = [
        range(s, min(s + args.batch_size, args.num_samples)) for s in range(0, args.num_samples, args.batch_size)
    ]
    mine = batches[state.process_index :: state.num_processes]
    todo = [b for b in mine if not all(os.path.exists(image_path(args.output_dir, i)) for i in b)]
    if state.is_main_process:
        print(f"{args.num_samples} samples, {len(batches)} batches over {state.num_processes} processes; "
              f"{len(mine) - len(todo)} of this process's {len(mine)} batches already done")  # fmt: skip

    start, made = time.perf_counter(), 0
    for batch in tqdm(todo, desc="sampling", disable=not state.is_local_main_process):
        images = pipe(
            class_labels=labels[batch.start : batch.stop].tolist(),
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
            guidance_interval=tuple(args.guidance_interval) if args.guidance_interval else None,
            generator=[image_generator(args.seed, i) for i in batch],
            output_type="np",
        ).images
        images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)  # diffusers' numpy_to_pil rounding
        for index, image in zip(batch, images):
            with atomic_path(image_path(args.output_dir, index)) as tmp:
                Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(tmp, format="PNG")
        made += len(batch)
    elapsed = time.perf_counter() - start
    rates = gather_object([(made, elapsed)])

    if state.is_main_process:
        total = sum(m for m, _ in rates)
        wall = max(e for _, e in rates)
        if total:
            print(f"sampled {total} images in {wall:.1f} s: {total / wall:.2f} images/s over {state.num_processes} "
                  f"processes ({args.num_inference_steps} steps, {args.scheduler}, guidance {args.guidance_scale})")  # fmt: skip
        files = [image_path(args.output_dir, i) for i in range(args.num_samples)]
        with Image.open(files[0]) as first:
            width, height = first.size
        npz = os.path.join(args.output_dir, f"samples_{args.num_samples}x{height}x{width}x3.npz")
        write_images_npz(npz, files, labels)
        print(f"wrote {npz}")
    state.wait_for_everyone()


if __name__ == "__main__":
    main()
