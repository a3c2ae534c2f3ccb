#!/usr/bin/env python
"""Sample images for FID, over any number of processes, resumable, in ADM's `.npz` format.

    # The paper's setting: the official ODE sampler with 250 time points, guidance 1.5 at every step.
    accelerate launch examples/sample_fid.py --model org/mpdit-xl-256 --num_samples 50000 --output_dir samples/ \\
        --scheduler ode --num_inference_steps 250 --guidance_scale 1.5 --guidance_interval 0 1
    torchrun --nproc_per_node 2 examples/sample_fid.py ...                 # CPU processes (gloo)
    python examples/sample_fid.py --model bundled --num_samples 1000 --output_dir samples/   # the bundled model
    mpdit evaluate samples/samples_50000x256x256x3.npz VIRTUAL_imagenet256_labeled.npz

Sampling flags are those of `mpdit generate` (`diffusers_mpdit.sampling`); guidance left unset is the model's
saved default. `--scheduler ode` and `--scheduler sde` with `--num_inference_steps N` run the official
`sample.py --sample_type ode|sde --num-sampling-steps N`.

Labels: `--label_sampling balanced` gives image i class `i % num_classes` (50 per class for 50,000 ImageNet samples);
`random` draws each image's class uniformly, as the official script does, from a hash of the seed and the image index
(`diffusers_mpdit.sampling.random_class_label`). Image i draws its noise from a CPU generator seeded with `seed + i`.
The indices are cut into fixed batches of `--batch_size`, dealt to the processes in turn, so every image is computed
in the same batch whatever the world size: the output does not depend on it. Each image is written as
`images/{i:06d}.png` (under a temporary name, then renamed); a rerun with the same settings skips finished batches,
and a rerun with other settings is refused. `sampling_settings.json` records the settings, resolved against the
model's saved defaults. When all are done, the main process stacks the images into `samples_{N}x{H}x{W}x3.npz`
(`arr_0` uint8 images, `arr_1` labels), the file ADM's evaluator and `mpdit evaluate` read.
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

from diffusers_mpdit.arguments import OneLineParser, positive_int
from diffusers_mpdit.atomic import atomic_path
from diffusers_mpdit.data import BUNDLED_MODEL_NAME
from diffusers_mpdit.sampling import (
    LABEL_SAMPLING,
    SamplingConfig,
    add_sampling_arguments,
    check_model_path,
    default_device,
    fid_class_labels,
    load_pipeline,
    model_identity,
    quiet_backend_warnings,
)


def parse_args(argv=None) -> tuple[argparse.Namespace, SamplingConfig]:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        default=BUNDLED_MODEL_NAME,
        help=f"MPDiT pipeline folder or Hub id; {BUNDLED_MODEL_NAME} (the default): the bundled Fashion-MNIST model",
    )
    p.add_argument("--output_dir", required=True, help="folder for images/, sampling_settings.json and the .npz")
    p.add_argument(
        "--num_samples", type=positive_int, default=50000, help="total images (default 50,000: ADM's count)"
    )
    p.add_argument("--num_classes", type=positive_int, help="classes to draw from (default: all of the model's)")
    p.add_argument(
        "--label_sampling",
        choices=LABEL_SAMPLING,
        default="balanced",
        help="balanced: image i has class i %% num_classes; random: uniform per image, as the official sample.py "
        "(default balanced)",
    )
    p.add_argument(
        "--batch_size", type=positive_int, default=32, help="images per forward pass, per process (default 32)"
    )
    add_sampling_arguments(p, "underscore", exclude=("device",))
    args = p.parse_args(argv)
    config = SamplingConfig.from_args(args, p)
    try:
        config.check_image_count(args.num_samples, p.sampling_flags)
    except ValueError as error:
        p.error(str(error))
    try:
        check_model_path(args.model)
    except ValueError as error:
        p.error(f"--{error}")  # "--model '...': no such folder ..."
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        p.error(f"--output_dir {args.output_dir!r} is a file, not a folder")
    return args, config


def image_path(output_dir: str, index: int) -> str:
    return os.path.join(output_dir, "images", f"{index:06d}.png")


def check_settings(output_dir: str, settings: dict) -> None:
    """Records the settings on the first run; refuses to mix in images made with other ones."""
    path = os.path.join(output_dir, "sampling_settings.json")
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        # Keys on either side: a setting recorded only when used (a LoRA) counts when it is dropped, too.
        keys = list(settings) + [k for k in previous if k not in settings]
        changed = {k: (previous.get(k), settings.get(k)) for k in keys if previous.get(k) != settings.get(k)}
        if changed:
            details = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise SystemExit(f"{output_dir} holds samples made with other settings ({details}); use another folder")
    else:
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            json.dump(settings, f, indent=2)


@torch.no_grad()
def main(argv=None) -> None:
    quiet_backend_warnings()
    # Imported here, after the line above: it imports diffusers, whose optional backends log at import.
    from diffusers_mpdit.evaluation.batches import write_images_npz

    args, config = parse_args(argv)
    # Without an accelerator, accelerate joins the torchrun process group (MULTI_CPU, gloo) only when cpu=True.
    state = PartialState(cpu=default_device() == "cpu")
    try:
        pipe = load_pipeline(args.model, str(state.device), config.dtype, config.lora, config.lora_scale, config.cache)
    except ValueError as error:
        raise SystemExit(f"error: --{error}") from None
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = config.make_scheduler(pipe.scheduler.config)
    model_classes = pipe.transformer.config.num_classes
    num_classes = args.num_classes or model_classes
    if num_classes > model_classes:
        raise SystemExit(f"--num_classes {num_classes}: the model has {model_classes} classes")

    # The settings that decide the images, with guidance resolved against the model's defaults: a resumed run must
    # match them.
    settings = {
        "model": model_identity(args.model),
        "num_samples": args.num_samples,
        "num_classes": num_classes,
        "label_sampling": args.label_sampling,
        "batch_size": args.batch_size,
        **config.settings(pipe),
    }
    if state.is_main_process:
        os.makedirs(os.path.join(args.output_dir, "images"), exist_ok=True)
        check_settings(args.output_dir, settings)
    state.wait_for_everyone()

    labels = fid_class_labels(args.num_samples, num_classes, args.label_sampling, config.seed)
    call = config.call_kwargs(pipe)
    batches = [
        range(s, min(s + args.batch_size, args.num_samples)) for s in range(0, args.num_samples, args.batch_size)
    ]
    mine = batches[state.process_index :: state.num_processes]
    todo = [b for b in mine if not all(os.path.exists(image_path(args.output_dir, i)) for i in b)]
    if state.is_main_process:
        print(f"{args.num_samples} samples ({config.describe(pipe)}, {args.label_sampling} labels), {len(batches)} "
              f"batches over {state.num_processes} processes; {len(mine) - len(todo)} of this process's {len(mine)} "
              "batches already done")  # fmt: skip

    start, made = time.perf_counter(), 0
    for batch in tqdm(todo, desc="sampling", disable=not state.is_local_main_process):
        images = pipe(
            class_labels=labels[batch.start : batch.stop].tolist(),
            generator=config.generators(batch),
            output_type="np",
            **call,
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
                  "processes")  # fmt: skip
        files = [image_path(args.output_dir, i) for i in range(args.num_samples)]
        with Image.open(files[0]) as first:
            width, height = first.size
        npz = os.path.join(args.output_dir, f"samples_{args.num_samples}x{height}x{width}x3.npz")
        write_images_npz(npz, files, labels)
        print(f"wrote {npz}")
    state.wait_for_everyone()


if __name__ == "__main__":
    main()
