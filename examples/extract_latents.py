#!/usr/bin/env python
"""Encode a labelled image set once with a VAE into a latent cache for `train_mpdit.py --latents_dir`.

    accelerate launch examples/extract_latents.py --train_data_dir DIR --pretrained_vae stabilityai/sd-vae-ft-ema \\
        --resolution 256 --output_dir latents/
    torchrun --nproc_per_node 2 examples/extract_latents.py ...

Each process encodes its share of the images and writes its own shards (posterior mean and std, labels, indices);
the per-channel statistics of the posterior samples are reduced across processes, and the main process writes the
index last, so a cache with an index is complete.
"""

from __future__ import annotations

# Before anything imports diffusers: torchao, installed with the quant extra, logs at import about kernels it lacks,
# which would bury this script's one-line errors.
from diffusers_mpdit.sampling import quiet_backend_warnings

quiet_backend_warnings()

import argparse
import os
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from diffusers_mpdit.arguments import OneLineParser, non_negative_int, positive_int
from diffusers_mpdit.atomic import replace_path
from diffusers_mpdit.paths import looks_like_local_path
from diffusers_mpdit.sampling import default_device, one_line
from diffusers_mpdit.training import (
    ImageTransform,
    UnreadableImageError,
    collate,
    drop_unreadable_images,
    image_folder_classes,
    load_image_dataset,
)
from diffusers_mpdit.training.latent_cache import ChannelStatistics, write_index, write_shard


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_data_dir", help="imagefolder: one subfolder of images per class")
    p.add_argument("--dataset_name", help="a `datasets` dataset (name or local path)")
    p.add_argument("--dataset_config_name", help="the dataset's configuration, if it has several")
    p.add_argument("--dataset_split", default="train", help="split to encode (default train)")
    p.add_argument("--image_column", default="image", help="the dataset's image column (default image)")
    p.add_argument("--label_column", default="label", help="the dataset's label column (default label)")
    p.add_argument("--max_train_samples", type=positive_int, help="encode the first N samples only")
    p.add_argument("--pretrained_vae", required=True, help="AutoencoderKL folder or Hub id")
    p.add_argument(
        "--resolution",
        type=positive_int,
        default=256,
        help="image side before encoding, a multiple of the VAE's factor (default 256)",
    )
    p.add_argument(
        "--image_preprocessing",
        choices=["center_crop", "pad"],
        default="center_crop",
        help="ADM centre crop, or pad smaller images with black borders (default center_crop)",
    )
    p.add_argument("--output_dir", required=True, help="the cache folder (replaced if it exists)")
    p.add_argument(
        "--batch_size", type=positive_int, default=32, help="images per VAE forward pass, per process (default 32)"
    )
    p.add_argument("--shard_size", type=positive_int, default=4096, help="images per shard (default 4096)")
    p.add_argument(
        "--skip_unreadable_images",
        action="store_true",
        help="decode every image once first and skip (and log) those that cannot be read; by default the run stops "
        "at the first one, naming it",
    )
    p.add_argument(
        "--mixed_precision",
        choices=["no", "fp16", "bf16"],
        default=None,
        help="the VAE's precision (default: accelerate's configuration)",
    )
    p.add_argument(
        "--dataloader_num_workers", type=non_negative_int, default=0, help="data loading processes (default 0)"
    )
    args = p.parse_args(argv)
    if bool(args.train_data_dir) == bool(args.dataset_name):
        p.error("give exactly one of --train_data_dir, --dataset_name")
    # Every check that loads no data, before the old cache is replaced.
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        p.error(f"--output_dir {args.output_dir!r} is a file, not a folder")
    if args.train_data_dir:
        try:
            image_folder_classes(args.train_data_dir)
        except ValueError as error:
            p.error(f"--train_data_dir {one_line(error)}")
    elif looks_like_local_path(args.dataset_name) and not os.path.exists(os.path.expanduser(args.dataset_name)):
        p.error(f"--dataset_name {args.dataset_name!r}: no such file or folder (give a local dataset or a Hub id)")
    try:
        vae_config = AutoencoderKL.load_config(args.pretrained_vae)
    except (OSError, ValueError) as error:
        p.error(f"--pretrained_vae {args.pretrained_vae!r}: cannot read its config: {one_line(error)}")
    factor = 2 ** (len(vae_config["block_out_channels"]) - 1)
    if args.resolution % factor:
        p.error(f"--resolution must be a multiple of the VAE's factor {factor}, got {args.resolution}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    final_dir = Path(args.output_dir).absolute()
    try:
        encode(args, final_dir, final_dir.parent / f".tmp-{final_dir.name}")
    except BaseException as error:
        # Every process gets here on its own; removing a folder another already removed is harmless.
        shutil.rmtree(final_dir.parent / f".tmp-{final_dir.name}", ignore_errors=True)
        if isinstance(error, UnreadableImageError):
            raise SystemExit(f"error: {error.summary()} (--skip_unreadable_images skips such files)") from None
        raise


@torch.no_grad()
def encode(args: argparse.Namespace, final_dir: Path, output_dir: Path) -> None:
    # Without an accelerator, accelerate joins the torchrun process group (MULTI_CPU, gloo) only when cpu=True.
    accelerator = Accelerator(cpu=default_device() == "cpu", mixed_precision=args.mixed_precision)
    # Written to `output_dir`, a temporary name, and renamed to `final_dir` when complete: a run that fails (an
    # unreadable image, a crash) leaves any earlier cache as it was.
    try:
        dataset, id2label = load_image_dataset(
            args.train_data_dir, args.dataset_name, args.dataset_config_name, args.dataset_split,
            args.image_column, args.label_column, args.max_train_samples,
        )  # fmt: skip
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    if args.skip_unreadable_images:
        dataset = drop_unreadable_images(dataset, log=print if accelerator.is_main_process else lambda _: None)
    if accelerator.is_main_process:
        shutil.rmtree(output_dir, ignore_errors=True)  # a half-written cache is never reused
        output_dir.mkdir(parents=True)
    accelerator.wait_for_everyone()
    dataset = dataset.with_transform(ImageTransform(args.resolution, 3, args.image_preprocessing))
    with accelerator.split_between_processes(list(range(len(dataset)))) as indices:
        mine = torch.tensor(indices, dtype=torch.long)
    vae = AutoencoderKL.from_pretrained(args.pretrained_vae).eval().to(accelerator.device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    if dtype != torch.float32:
        vae.to(dtype)

    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, mine.tolist()),
        batch_size=args.batch_size,
        collate_fn=collate,
        num_workers=args.dataloader_num_workers,
    )
    stats = ChannelStatistics(vae.config.latent_channels)
    pending = {"indices": [], "mean": [], "std": [], "labels": []}
    shards, start = [], 0

    def flush():
        if not pending["indices"]:
            return
        name = f"latents-rank{accelerator.process_index:03d}-{len(shards):05d}.safetensors"
        write_shard(output_dir / name, *(torch.cat(pending[k]) for k in ("indices", "mean", "std", "labels")))
        shards.append(name)
        for values in pending.values():
            values.clear()

    latent_shape = None
    for batch in tqdm(loader, desc="encoding", disable=not accelerator.is_local_main_process):
        posterior = vae.encode(batch["pixels"].to(accelerator.device, dtype)).latent_dist
        mean, std = posterior.mean.float().cpu(), posterior.std.float().cpu()
        latent_shape = list(mean.shape[1:])
        stats.update(mean, std)
        count = mean.shape[0]
        pending["indices"].append(mine[start : start + count])
        pending["mean"].append(mean)
        pending["std"].append(std)
        pending["labels"].append(batch["label"])
        start += count
        if sum(len(i) for i in pending["indices"]) >= args.shard_size:
            flush()
    flush()

    # Reduce the statistics and the shard names over processes; the main process writes the index last.
    sums = accelerator.reduce(stats.sums.to(accelerator.device), reduction="sum").cpu()
    count = accelerator.reduce(stats.count.to(accelerator.device), reduction="sum").cpu()
    stats.sums, stats.count = sums, count
    all_shards = gather_object(shards)
    shapes = [s for s in gather_object([latent_shape]) if s is not None]
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        latents_mean, latents_std = stats.result()
        write_index(
            output_dir, all_shards, len(dataset), shapes[0], id2label, latents_mean, latents_std,
            args.pretrained_vae, args.resolution,
        )  # fmt: skip
        replace_path(output_dir, final_dir)
        print(f"Cached {len(dataset)} latents of shape {shapes[0]} in {len(all_shards)} shards at {final_dir}")
        print(f"latents_mean {[round(v, 4) for v in latents_mean]}, latents_std {[round(v, 4) for v in latents_std]}")
    accelerator.end_training()


if __name__ == "__main__":
    main()
