#!/usr/bin/env python
"""Train MPDiT with the official flow-matching recipe, on one CPU or many GPUs, through Accelerate.

    accelerate launch examples/train_mpdit.py --train_data_dir DIR --output_dir OUT [--preset MPDiT-B/4x] ...
    torchrun --nproc_per_node 2 examples/train_mpdit.py ...        # CPU data parallel (gloo)

Data: an imagefolder (`--train_data_dir`, class subfolders become labels), a `datasets` dataset (`--dataset_name`), or
a latent cache from `examples/extract_latents.py` (`--latents_dir`). With `--lora_rank`, a LoRA of a pretrained pipeline
(`--pretrained_model_name_or_path`) trains instead of the full model; classes of the data that the pretrained model
lacks (by name) become new classes either way, after the model's own. With `--pretrained_vae` images are encoded on the
fly; without a VAE the model trains in pixel space. Every step's noise, flow times, label dropout, flips and posterior
samples come from a generator keyed by (seed, step, micro-step) and drawn for the global batch, so a run does not
depend on the number of processes (beyond batch arithmetic) nor on where it was interrupted and resumed.
"""

from __future__ import annotations

# Before anything imports diffusers: torchao, installed with the quant extra, logs at import about kernels it lacks,
# which would bury this script's one-line errors.
from diffusers_mpdit.sampling import quiet_backend_warnings

quiet_backend_warnings()

import argparse
import copy
import inspect
import json
import logging
import math
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, LoggerType, ProjectConfiguration, broadcast, set_seed
from diffusers import AutoencoderKL
from diffusers.optimization import SchedulerType, get_scheduler
from diffusers.training_utils import EMAModel
from diffusers.utils.torch_utils import is_compiled_module
from safetensors.torch import save_file
from tqdm.auto import tqdm

from diffusers_mpdit import MPDiTPipeline, MPDiTTransformer2DModel, default_scheduler
from diffusers_mpdit.arguments import OneLineParser, integer, non_negative_int, number, positive_int, positive_number
from diffusers_mpdit.atomic import atomic_path, save_pretrained_atomically
from diffusers_mpdit.loaders.hub import push_lora_to_hub
from diffusers_mpdit.models.new_classes import add_classes
from diffusers_mpdit.models.presets import PRESETS, get_preset
from diffusers_mpdit.paths import looks_like_local_path
from diffusers_mpdit.pipelines import ClassNames
from diffusers_mpdit.sampling import SamplingConfig, default_device, labelled_grid, one_line
from diffusers_mpdit.training import (
    LORA_TARGET_MODULES,
    WEIGHTING_SCHEMES,
    EpochSampler,
    ImageTransform,
    LatentCacheDataset,
    UnreadableImageError,
    add_lora,
    check_checkpoint,
    class_label_map,
    collate,
    drop_class_labels,
    drop_unreadable_images,
    ema_warning,
    flow_matching_loss,
    gathered_ema,
    image_folder_classes,
    list_checkpoints,
    load_ema,
    load_ema_state,
    load_image_dataset,
    load_trainable_state_dict,
    normalize_latents,
    optimizer_groups,
    parameter_names,
    parameters_by_name,
    sample_flow_times,
    save_checkpoint,
    save_ema,
    save_lora,
    step_generator,
    trainable_state_dict,
)
from diffusers_mpdit.training.latent_cache import INDEX_NAME
from diffusers_mpdit.training.lora import EMA_FILE, TRAINABLE_FILE

logger = get_logger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--train_data_dir", help="imagefolder: one subfolder of images per class")
    data.add_argument("--dataset_name", help="a `datasets` dataset (name or local path)")
    data.add_argument("--dataset_config_name", help="the dataset's configuration, if it has several")
    data.add_argument("--dataset_split", default="train", help="split to train on (default train)")
    data.add_argument("--image_column", default="image", help="the dataset's image column (default image)")
    data.add_argument(
        "--label_column",
        default="label",
        help="the dataset's label column; a ClassLabel gives the names (default label)",
    )
    data.add_argument("--latents_dir", help="latent cache written by examples/extract_latents.py")
    data.add_argument("--max_train_samples", type=positive_int, help="train on the first N samples only")
    data.add_argument(
        "--resolution",
        type=positive_int,
        help="image side for image data, a multiple of the VAE factor x the coarsest patch (default 256; a latent "
        "cache has its own)",
    )
    data.add_argument(
        "--image_preprocessing",
        choices=["center_crop", "pad"],
        default="center_crop",
        help="ADM centre crop, or pad smaller images with black borders (28 -> 32)",
    )
    data.add_argument("--image_channels", type=int, choices=[1, 3], default=3, help="pixel-space channels")
    data.add_argument(
        "--random_flip",
        action="store_true",
        help="horizontal flips (of the latents, for a cache); only for data whose classes look the same mirrored",
    )
    data.add_argument("--pretrained_vae", help="AutoencoderKL folder or Hub id; without it, pixel space")
    data.add_argument(
        "--skip_unreadable_images",
        action="store_true",
        help="decode every image once before training and skip (and log) those that cannot be read; by default the "
        "run stops at the first one, naming it",
    )
    data.add_argument(
        "--dataloader_num_workers",
        type=non_negative_int,
        default=0,
        help="data loading processes (default 0: the main one)",
    )

    model = p.add_argument_group("model")
    model.add_argument(
        "--preset", choices=list(PRESETS), default="MPDiT-B/4x", help="an MPDiTTransformer2DModel preset"
    )
    model.add_argument("--model_config", default="{}", help="JSON config overrides, e.g. '{\"depths\": [2, 2]}'")
    model.add_argument("--pretrained_model_name_or_path", help="start from a pipeline or transformer folder")
    model.add_argument(
        "--class_matching",
        choices=["name", "id"],
        default="name",
        help="how the data's classes meet a pretrained pipeline's: name (the default: by name, the others become new "
        "classes after the model's) or id (data id i is model id i; the counts must match)",
    )

    lora = p.add_argument_group("LoRA (with --pretrained_model_name_or_path)")
    lora.add_argument(
        "--lora_rank",
        type=positive_int,
        help="train a LoRA of this rank (and the rows of new classes) instead of the full model; saves "
        "pytorch_lora_weights.safetensors for MPDiTPipeline.load_lora_weights",
    )
    lora.add_argument("--lora_alpha", type=positive_number, help="LoRA alpha (default: the rank, a scale of 1)")
    lora.add_argument(
        "--lora_target_modules",
        default=",".join(LORA_TARGET_MODULES),
        help=f"comma-separated module names the LoRA wraps (default {','.join(LORA_TARGET_MODULES)}: every "
        "attention projection; e.g. add ff.net.0.proj,ff.net.2 for the MLPs)",
    )

    recipe = p.add_argument_group("recipe (defaults: the official one)")
    recipe.add_argument(
        "--weighting_scheme",
        choices=WEIGHTING_SCHEMES,
        default="logit_normal",
        help="how flow times are drawn: logit_normal (the official), uniform, or SD3's mode (default logit_normal)",
    )
    recipe.add_argument("--logit_mean", type=number(), default=0.0, help="logit-normal mean (default 0)")
    recipe.add_argument(
        "--logit_std", type=positive_number, default=1.0, help="logit-normal standard deviation (default 1)"
    )
    recipe.add_argument("--mode_scale", type=number(), default=1.29, help="scale of the mode scheme (default 1.29)")
    recipe.add_argument(
        "--class_dropout_prob",
        type=number(0, 1, include_maximum=False),
        default=0.1,
        help="labels replaced by the null class, for CFG (default 0.1)",
    )
    recipe.add_argument(
        "--learning_rate", type=positive_number, default=2e-4, help="AdamW learning rate (default 2e-4)"
    )
    recipe.add_argument(
        "--scale_lr", action="store_true", help="multiply the rate by batch size x processes x accumulation steps"
    )
    recipe.add_argument(
        "--lr_scheduler",
        choices=[s.value for s in SchedulerType],
        default="constant",
        help="diffusers.optimization.get_scheduler name (default constant)",
    )
    recipe.add_argument("--lr_warmup_steps", type=non_negative_int, default=0, help="linear warm-up steps (default 0)")
    recipe.add_argument(
        "--lr_schedule_steps",
        type=positive_int,
        help="length of the learning-rate schedule, to stop before its end (default: the run's steps)",
    )
    beta = number(0, 1, include_maximum=False)
    recipe.add_argument("--adam_beta1", type=beta, default=0.9, help="AdamW beta1 (default 0.9)")
    recipe.add_argument("--adam_beta2", type=beta, default=0.999, help="AdamW beta2 (default 0.999)")
    recipe.add_argument("--adam_weight_decay", type=number(0), default=0.0, help="AdamW weight decay (default 0)")
    recipe.add_argument("--adam_epsilon", type=positive_number, default=1e-8, help="AdamW epsilon (default 1e-8)")
    recipe.add_argument(
        "--max_grad_norm", type=positive_number, default=None, help="off by default, as in the official recipe"
    )
    recipe.add_argument(
        "--ema_decay",
        type=number(0, 1, include_maximum=False),
        default=0.9999,
        help="constant EMA decay of the saved weights (default 0.9999); it averages over about 1 / (1 - decay) steps",
    )
    recipe.add_argument("--train_batch_size", type=positive_int, default=32, help="per process")
    recipe.add_argument(
        "--gradient_accumulation_steps",
        type=positive_int,
        default=1,
        help="micro-batches per optimiser step (default 1)",
    )
    recipe.add_argument(
        "--num_train_epochs", type=positive_int, default=400, help="passes over the data (default 400)"
    )
    recipe.add_argument("--max_train_steps", type=positive_int, help="overrides --num_train_epochs")
    recipe.add_argument(
        "--max_train_minutes",
        type=positive_number,
        help="also stop after this much training time (steps only; checkpoints and grids not counted; resumes add up)",
    )
    recipe.add_argument(
        "--seed",
        type=integer(0, 2**32 - 1),
        default=0,
        help="seeds the initialisation, the data order and every step's draws (default 0)",
    )

    infra = p.add_argument_group("infrastructure")
    infra.add_argument(
        "--output_dir", required=True, help="checkpoints, logs, sample grids and the final pipeline (EMA weights)"
    )
    infra.add_argument(
        "--mixed_precision",
        choices=["no", "fp16", "bf16"],
        default=None,
        help="autocast precision (default: accelerate's configuration)",
    )
    infra.add_argument(
        "--gradient_checkpointing", action="store_true", help="recompute block activations in the backward pass"
    )
    infra.add_argument("--compile", action="store_true", help="torch.compile the transformer")
    infra.add_argument("--allow_tf32", action="store_true", help="TF32 matrix products on Ampere and newer GPUs")
    infra.add_argument(
        "--checkpointing_steps",
        type=positive_int,
        default=5000,
        help="save a resumable checkpoint every N steps (default 5000)",
    )
    infra.add_argument("--checkpoints_total_limit", type=positive_int, help="keep only the newest N checkpoints")
    infra.add_argument("--resume_from_checkpoint", help='"latest" or a checkpoint folder')
    infra.add_argument(
        "--report_to",
        choices=[t.value for t in LoggerType] + ["none"],
        default="tensorboard",
        help="an Accelerate tracker (tensorboard, wandb, ...), all or none (default tensorboard)",
    )
    infra.add_argument("--logging_dir", default="logs", help="tracker logs, inside --output_dir (default logs)")
    infra.add_argument(
        "--tracker_project_name", default="train_mpdit", help="the trackers' project name (default train_mpdit)"
    )
    infra.add_argument(
        "--validation_steps", type=non_negative_int, default=5000, help="sample grid every N steps (0: never)"
    )
    infra.add_argument(
        "--validation_classes", help="comma-separated class ids or names, one grid row each (default: up to 8)"
    )
    infra.add_argument(
        "--validation_images_per_class",
        type=positive_int,
        default=4,
        help="images in each row of the validation grids (default 4)",
    )
    infra.add_argument(
        "--validation_inference_steps",
        type=positive_int,
        default=SamplingConfig.steps,
        help=f"sampling steps of the validation grids (default {SamplingConfig.steps})",
    )
    infra.add_argument(
        "--validation_guidance_scale",
        type=number(0),
        help="guidance of the validation grids (default: the pipeline's default_guidance_scale)",
    )
    infra.add_argument(
        "--push_to_hub", action="store_true", help="upload the final pipeline with a model card and its sample grid"
    )
    infra.add_argument("--hub_model_id", help="the Hub repo to push to, namespace/name")
    infra.add_argument("--hub_token", help="a Hub write token (default: the logged-in one)")
    infra.add_argument("--hub_private_repo", action="store_true", help="create the Hub repo as private")
    args = p.parse_args(argv)

    sources = [x for x in (args.train_data_dir, args.dataset_name, args.latents_dir) if x]
    if len(sources) != 1:
        p.error("give exactly one of --train_data_dir, --dataset_name, --latents_dir")
    if args.report_to == "wandb" and args.hub_token:
        p.error("--report_to wandb with --hub_token would expose the token in the logs; use `hf auth login`")
    if args.lora_rank is None and (
        args.lora_alpha is not None or args.lora_target_modules != ",".join(LORA_TARGET_MODULES)
    ):
        p.error("--lora_alpha and --lora_target_modules need --lora_rank")
    if args.lora_rank is not None and not args.pretrained_model_name_or_path:
        p.error("--lora_rank needs --pretrained_model_name_or_path: a LoRA adapts a trained model")
    args.lora_target_modules = [m.strip() for m in args.lora_target_modules.split(",") if m.strip()]
    if not args.lora_target_modules:
        p.error("--lora_target_modules is empty")
    if args.push_to_hub and not args.hub_model_id:
        p.error("--push_to_hub needs --hub_model_id")
    if args.hub_model_id is not None and args.hub_model_id.count("/") != 1:
        p.error(f"--hub_model_id must be namespace/name, got {args.hub_model_id!r}")
    try:
        args.model_config = json.loads(args.model_config)
    except json.JSONDecodeError as error:
        p.error(f"--model_config is not JSON: {error}")
    if not isinstance(args.model_config, dict):
        p.error(f"--model_config must be a JSON object of config overrides, got {args.model_config!r}")
    try:  # now, not at the first validation grid hours into the run
        validation_sampling(args).validate(VALIDATION_FLAGS)
    except ValueError as error:
        p.error(str(error))
    check_inputs(args, p)
    return args


def check_inputs(args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    """Every check that loads no data and no weights, so that a bad value stops the run before it creates anything:
    the paths, the model's config, the resolution against the patches, and the classes wherever the data names them
    without loading (an imagefolder's subfolders, a latent cache's index)."""
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        p.error(f"--output_dir {args.output_dir!r} is a file, not a folder")
    if args.resume_from_checkpoint and args.resume_from_checkpoint != "latest":
        try:
            check_checkpoint(args.resume_from_checkpoint)
        except (FileNotFoundError, RuntimeError) as error:
            p.error(f"--resume_from_checkpoint: {one_line(error)}")

    # The data, and its classes where known without loading it.
    id2label, latent_size, classes = None, None, None
    if args.train_data_dir:
        try:
            id2label = dict(enumerate(image_folder_classes(args.train_data_dir)))
        except ValueError as error:
            p.error(f"--train_data_dir {one_line(error)}")
    elif args.latents_dir:
        index_path = Path(args.latents_dir) / INDEX_NAME
        if not index_path.is_file():
            p.error(
                f"--latents_dir {args.latents_dir!r} has no {INDEX_NAME}: not a latent cache, or an unfinished one"
            )
        index = json.loads(index_path.read_text())
        id2label = {int(k): v for k, v in index["id2label"].items()}
        latent_size = index["latent_shape"][1]
    elif looks_like_local_path(args.dataset_name) and not os.path.exists(os.path.expanduser(args.dataset_name)):
        p.error(f"--dataset_name {args.dataset_name!r}: no such file or folder (give a local dataset or a Hub id)")

    # The model's config: the pretrained one, or the preset with the overrides.
    if args.pretrained_model_name_or_path:
        source = Path(args.pretrained_model_name_or_path)
        try:
            config = MPDiTTransformer2DModel.load_config(str(source), subfolder=transformer_subfolder(source))
        except (OSError, ValueError) as error:
            p.error(f"--pretrained_model_name_or_path {str(source)!r}: cannot read its config: {one_line(error)}")
        if id2label is not None:
            try:
                classes = run_classes(base_class_names(args, source), config["num_classes"], id2label)
            except ValueError as error:
                p.error(f"--pretrained_model_name_or_path: {error}")
    else:
        known = set(inspect.signature(MPDiTTransformer2DModel.__init__).parameters) - {"self"}
        unknown = sorted(set(args.model_config) - known)
        if unknown:
            p.error(f"--model_config: {unknown} are not MPDiTTransformer2DModel config keys; it has {sorted(known)}")
        config = {**get_preset(args.preset), **args.model_config}
    patch = config.get("patch_sizes", (4, 2))[0]

    # The resolution: the coarsest level's patches must tile the model's input.
    if latent_size is not None:
        if latent_size % patch:
            p.error(
                f"--latents_dir: latents of side {latent_size} do not tile into the model's {patch}x{patch} patches"
            )
    else:
        factor = 1
        if args.pretrained_vae:
            try:
                vae_config = AutoencoderKL.load_config(args.pretrained_vae)
            except (OSError, ValueError) as error:
                p.error(f"--pretrained_vae {args.pretrained_vae!r}: cannot read its config: {one_line(error)}")
            factor = 2 ** (len(vae_config["block_out_channels"]) - 1)
        resolution, multiple = args.resolution or 256, factor * patch
        if resolution % multiple:
            why = f"the VAE's factor {factor} x the coarsest patch {patch}" if factor > 1 else "the coarsest patch"
            near = sorted({max(multiple, resolution // multiple * multiple), (resolution // multiple + 1) * multiple})
            p.error(
                f"--resolution must be a multiple of {multiple} ({why}), got {resolution}; e.g. "
                f"{' or '.join(map(str, near))}"
            )

    if id2label is not None:
        label_map, new_names, model_id2label = classes or run_classes(None, len(id2label), id2label)
        num_classes = (config["num_classes"] if classes else len(id2label)) + len(new_names)
        try:
            args.validation_class_ids = parse_validation_classes(
                args.validation_classes, model_id2label, label_map, num_classes
            )
        except ValueError as error:
            p.error(f"--validation_classes: {error}")


VALIDATION_FLAGS = {
    "steps": "--validation_inference_steps",
    "guidance_scale": "--validation_guidance_scale",
    "seed": "--seed",
}


def validation_sampling(args: argparse.Namespace) -> SamplingConfig:
    """The sampling settings of the validation grids: the flags, and the pipeline's saved defaults for the rest."""
    return SamplingConfig(
        steps=args.validation_inference_steps, guidance_scale=args.validation_guidance_scale, seed=args.seed
    )


# --- main ------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        train(args)
    except UnreadableImageError as error:
        raise SystemExit(f"error: {error.summary()} (--skip_unreadable_images skips such files)") from None


def train(args: argparse.Namespace) -> None:
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        # Without an accelerator, accelerate joins the torchrun process group (MULTI_CPU, gloo) only when cpu=True.
        cpu=default_device() == "cpu",
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)
        ),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    if args.lora_rank is not None and accelerator.distributed_type == DistributedType.FSDP:
        # The LoRA's EMA and validation copies deep-copy the model, which needs whole parameters.
        raise SystemExit(
            "error: --lora_rank: a LoRA run does not support FSDP; use data parallel or DeepSpeed ZeRO-2 "
            "(examples/accelerate_deepspeed_zero2.yaml), which keep whole parameters on every process"
        )
    if args.compile and accelerator.distributed_type == DistributedType.FSDP:
        raise SystemExit(
            "error: --compile: under FSDP the model must be compiled after sharding; let Accelerate do it "
            "(`accelerate launch --dynamo_backend inductor ...`)"
        )
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        if accelerator.mixed_precision != "no":
            # DeepSpeed's bf16 and fp16 modes cast every weight, the FNO time embedding included, and run no autocast.
            raise SystemExit(
                f"error: --mixed_precision {accelerator.mixed_precision}: under DeepSpeed it casts the whole model, whose "
                "FNO time embedding must stay float32; train in float32 (--allow_tf32 on GPUs) or with FSDP's bf16 "
                "(examples/accelerate_fsdp.yaml)"
            )
        # DeepSpeed clips and accumulates by its own config, and Accelerate then ignores the script's values.
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        for key, flag, value in (
            ("gradient_clipping", "--max_grad_norm", args.max_grad_norm or 0.0),
            ("gradient_accumulation_steps", "--gradient_accumulation_steps", args.gradient_accumulation_steps),
        ):
            if ds_config.get(key, "auto") not in ("auto", value):
                raise SystemExit(
                    f"error: {flag} {value} differs from the DeepSpeed config's {key} {ds_config[key]}; "
                    "DeepSpeed applies its own, so make them equal"
                )
    if not accelerator.is_local_main_process:
        logging.getLogger().setLevel(logging.ERROR)
    set_seed(args.seed)
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # Data, and with it the latent space (VAE or cache statistics) and the classes.
    vae, latent_config = None, None
    if args.latents_dir:
        dataset = LatentCacheDataset(args.latents_dir)
        id2label = dataset.id2label
        channels, sample_size = dataset.index["latent_shape"][0], dataset.index["latent_shape"][1]
        latent_config = argparse.Namespace(
            latents_mean=dataset.index["latents_mean"], latents_std=dataset.index["latents_std"], scaling_factor=1.0
        )
        vae_source = args.pretrained_vae or dataset.index["vae"]
    else:
        try:
            image_dataset, id2label = load_image_dataset(
                args.train_data_dir, args.dataset_name, args.dataset_config_name, args.dataset_split,
                args.image_column, args.label_column, args.max_train_samples,
            )  # fmt: skip
        except ValueError as error:
            raise SystemExit(f"error: {error}") from None
        if args.skip_unreadable_images:
            image_dataset = drop_unreadable_images(image_dataset, log=logger.warning)
        resolution = args.resolution or 256
        if args.pretrained_vae:
            vae = AutoencoderKL.from_pretrained(args.pretrained_vae).eval().requires_grad_(False)
            factor = 2 ** (len(vae.config.block_out_channels) - 1)
            channels, sample_size, latent_config = vae.config.latent_channels, resolution // factor, vae.config
            transform = ImageTransform(resolution, 3, args.image_preprocessing)
        else:
            channels, sample_size = args.image_channels, resolution
            transform = ImageTransform(resolution, args.image_channels, args.image_preprocessing)
        with accelerator.main_process_first():
            dataset = image_dataset.with_transform(transform)
        vae_source = args.pretrained_vae

    # Model: a preset (or a pretrained folder) fitted to the data; the data's classes it lacks are added.
    base_names = None
    if args.pretrained_model_name_or_path:
        source = Path(args.pretrained_model_name_or_path)
        model = MPDiTTransformer2DModel.from_pretrained(source, subfolder=transformer_subfolder(source))
        base_names = base_class_names(args, source)
    else:
        config = {"num_classes": len(id2label), "in_channels": channels, "sample_size": sample_size}
        model = MPDiTTransformer2DModel.from_preset(args.preset, **{**config, **args.model_config})
    try:
        label_map, new_names, model_id2label = run_classes(base_names, model.config.num_classes, id2label)
    except ValueError as error:
        flag = "--pretrained_model_name_or_path" if args.pretrained_model_name_or_path else "--model_config"
        raise SystemExit(f"error: {flag}: {error}") from None
    if model.config.in_channels != channels:
        raise SystemExit(
            f"error: the model has {model.config.in_channels} input channels, the data {channels} channels"
        )
    if getattr(args, "validation_class_ids", None) is None:  # a `datasets` dataset names its classes once loaded
        try:
            args.validation_class_ids = parse_validation_classes(
                args.validation_classes, model_id2label, label_map, model.config.num_classes + len(new_names)
            )
        except ValueError as error:
            raise SystemExit(f"error: --validation_classes: {error}") from None
    base_num_classes = model.config.num_classes
    new_class_ids = add_classes(model, len(new_names)) if new_names else []
    if new_names:
        logger.info(f"New classes {dict(zip(new_class_ids, new_names))} after the model's {base_num_classes}")
    global_batch = args.train_batch_size * accelerator.num_processes
    steps_per_epoch = len(dataset) // global_batch // args.gradient_accumulation_steps
    if steps_per_epoch == 0:
        raise SystemExit(
            f"error: {len(dataset)} samples do not fill one step of {global_batch * args.gradient_accumulation_steps} "
            "(--train_batch_size x processes x --gradient_accumulation_steps)"
        )
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    warning = ema_warning(args.ema_decay, max_train_steps)
    if warning:
        logger.warning(warning)
    # Only now, with every input checked: a run refused above leaves nothing behind.
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    model.train()
    lora = args.lora_rank is not None
    if lora:
        trainable = add_lora(model, args.lora_rank, args.lora_alpha, args.lora_target_modules, new_class_ids)
    else:
        trainable = list(model.parameters())
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    # Under FSDP, `prepare` replaces every parameter with a sharded one: the EMA is built after it, on these names.
    trainable_names = parameter_names(model, trainable)
    ema = None

    def unwrap(m):
        m = accelerator.unwrap_model(m)
        return m._orig_mod if is_compiled_module(m) else m

    def save_hook(models, weights, directory):
        # Under FSDP and DeepSpeed, Accelerate has already written the model (sharded) and passes no `weights`.
        if accelerator.is_main_process:
            for m in models:
                if lora:
                    lora_dir = Path(directory) / "transformer_lora"
                    lora_dir.mkdir(exist_ok=True)
                    save_file(trainable_state_dict(unwrap(m)), str(lora_dir / TRAINABLE_FILE))
                    torch.save(ema.state_dict(), lora_dir / EMA_FILE)
                elif weights:
                    unwrap(m).save_pretrained(os.path.join(directory, "transformer"))
                if weights:
                    weights.pop()
        if not lora:  # every process: a sharded EMA is gathered first
            save_ema(ema, os.path.join(directory, "transformer_ema"), accelerator.is_main_process)

    def load_hook(models, directory):
        if lora:
            saved = torch.load(Path(directory) / "transformer_lora" / EMA_FILE, weights_only=True)
        else:
            saved = load_ema(os.path.join(directory, "transformer_ema"), MPDiTTransformer2DModel).state_dict()
        load_ema_state(ema, saved, trainable)
        for _ in range(len(models)):
            target = unwrap(models.pop())
            if lora:
                load_trainable_state_dict(target, Path(directory) / "transformer_lora" / TRAINABLE_FILE)
            else:
                loaded = MPDiTTransformer2DModel.from_pretrained(directory, subfolder="transformer")
                target.load_state_dict(loaded.state_dict())

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

    if args.scale_lr:
        args.learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
    optimizer = torch.optim.AdamW(
        optimizer_groups(model, args.adam_weight_decay) if lora else model.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    sampler = EpochSampler(len(dataset), args.seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        sampler=sampler,
        collate_fn=collate,
        drop_last=True,
        num_workers=args.dataloader_num_workers,
    )
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=(args.lr_schedule_steps or max_train_steps) * accelerator.num_processes,
    )
    if args.compile:
        model = torch.compile(model)
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    trainable = parameters_by_name(unwrap(model), trainable_names)
    ema = EMAModel(
        trainable,
        decay=args.ema_decay,
        min_decay=args.ema_decay,  # a constant decay, as the official recipe (diffusers would otherwise ramp it up)
        # A LoRA's EMA covers the adapter and new rows only: it is saved as a state dict, not as a model.
        **({} if lora else {"model_cls": MPDiTTransformer2DModel, "model_config": unwrap(model).config}),
    )
    if vae is not None:
        vae.to(accelerator.device)

    if accelerator.is_main_process and args.report_to != "none":
        config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(args.tracker_project_name, config=config)

    global_step, train_seconds = 0, 0.0
    if args.resume_from_checkpoint:
        if args.resume_from_checkpoint == "latest":
            found = list_checkpoints(output_dir)
            path = found[-1] if found else None
        else:
            path = Path(args.resume_from_checkpoint)
        if path is None:
            logger.info("No checkpoint to resume from; starting a new run.")
        else:
            try:
                state = check_checkpoint(path)
            except FileNotFoundError as error:
                raise SystemExit(f"error: --resume_from_checkpoint: {error}") from None
            global_step, train_seconds = state["global_step"], state["train_seconds"]
            if (path / "transformer_lora").is_dir() != lora:
                kind = "a LoRA run's (give its --lora_rank)" if not lora else "a full run's (drop --lora_rank)"
                raise SystemExit(f"error: --resume_from_checkpoint: {str(path)!r} is {kind} checkpoint")
            try:
                accelerator.load_state(str(path))
            except Exception as error:
                raise RuntimeError(f"Checkpoint {str(path)!r} could not be loaded: {error}") from error
            logger.info(f"Resumed from {path} at step {global_step}")

    total = global_batch * args.gradient_accumulation_steps
    logger.info(
        f"{len(dataset)} samples, {total} per step, {steps_per_epoch} steps per epoch, {max_train_steps} steps"
    )
    null_class = unwrap(model).config.num_classes
    rank_slice = slice(
        accelerator.process_index * args.train_batch_size, (accelerator.process_index + 1) * args.train_batch_size
    )
    data_shape = (global_batch, channels, sample_size, sample_size)
    validation_classes = args.validation_class_ids
    label_ids = torch.tensor(label_map)  # data id -> model id

    def ema_pipeline() -> MPDiTPipeline | None:
        """The EMA weights as a pipeline, on the main process (None elsewhere). Call it on every process: a sharded
        EMA is gathered first."""
        with gathered_ema(ema):
            if not accelerator.is_main_process:
                return None
            if lora:
                return lora_pipeline(
                    unwrap(model), ema, vae_source, latent_config, model_id2label, args.pretrained_model_name_or_path
                )
            return final_pipeline(
                unwrap(model), ema, vae_source, latent_config, model_id2label, args.pretrained_model_name_or_path
            )

    def grid(step: int, pipeline: MPDiTPipeline | None = None, name: str | None = None):
        pipeline = pipeline or ema_pipeline()
        if not accelerator.is_main_process:
            return None
        return sample_grid(args, accelerator, pipeline, validation_classes, step, name)

    progress = tqdm(
        total=max_train_steps, initial=global_step, desc="steps", disable=not accelerator.is_local_main_process
    )
    start_epoch = global_step // steps_per_epoch
    last_log = time.perf_counter()
    done = global_step >= max_train_steps or out_of_time(args, accelerator, train_seconds)
    if done and global_step < max_train_steps:
        logger.info(
            f"--max_train_minutes {args.max_train_minutes} was already spent ({train_seconds:.0f} s): no steps"
        )
    for epoch in range(start_epoch, num_epochs):
        if done:
            break
        skip = (global_step - epoch * steps_per_epoch) * args.gradient_accumulation_steps
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        # Accelerate's loaders set their sampler's epoch from their own iteration count when iterated; a loader made by
        # skip_first_batches starts at 0, so the epoch is set explicitly on the one in use.
        epoch_loader.set_epoch(epoch)
        for micro, batch in enumerate(epoch_loader, start=skip):
            g = step_generator(args.seed, global_step, micro % args.gradient_accumulation_steps)
            # Draws for the global batch, in a fixed order; each process keeps its own rows.
            noise = torch.randn(data_shape, generator=g)[rank_slice]
            flow_times = sample_flow_times(
                global_batch, args.weighting_scheme, args.logit_mean, args.logit_std, args.mode_scale, generator=g
            )[rank_slice]
            drop_draws = torch.rand(global_batch, generator=g)[rank_slice]
            flips = (torch.rand(global_batch, generator=g) < 0.5)[rank_slice]
            with accelerator.accumulate(model):
                data = prepare_data(batch, vae, latent_config, g, data_shape, rank_slice, accelerator)
                if args.random_flip:
                    data = torch.where(flips.view(-1, 1, 1, 1).to(data.device), data.flip(-1), data)
                labels = drop_class_labels(
                    label_ids[batch["label"]], null_class, args.class_dropout_prob, uniform=drop_draws
                )
                loss = flow_matching_loss(
                    model, data, noise.to(data), flow_times.to(data.device), labels.to(data.device)
                )
                losses = accelerator.gather(loss.detach().reshape(1))
                if not torch.isfinite(losses).all():
                    found = list_checkpoints(output_dir)
                    last = str(found[-1]) if found else "none (no checkpoint was saved)"
                    raise RuntimeError(
                        f"Non-finite loss {losses.tolist()} at step {global_step + 1}: stopping before the update. "
                        f"The last good checkpoint is {last}."
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)

            if not accelerator.sync_gradients:
                continue
            ema.step(trainable)
            global_step += 1
            progress.update(1)
            # .item() waits for the device to finish the step, so that its time is counted as training time.
            loss_value = losses.mean().item()
            now = time.perf_counter()
            train_seconds += now - last_log
            logs = {
                "loss": loss_value,
                "lr": lr_scheduler.get_last_lr()[0],
                "steps_per_sec": 1.0 / max(now - last_log, 1e-9),
                "images_per_sec": total / max(now - last_log, 1e-9),
            }
            progress.set_postfix(loss=f"{logs['loss']:.4f}", lr=logs["lr"])
            accelerator.log(logs, step=global_step)
            out_of_steps, timed_out = global_step >= max_train_steps, out_of_time(args, accelerator, train_seconds)
            if global_step % args.checkpointing_steps == 0 or (timed_out and not out_of_steps):
                saved = save_checkpoint(
                    accelerator, output_dir, global_step, args.checkpoints_total_limit, train_seconds
                )
                logger.info(f"Saved {saved}")
            if args.validation_steps and global_step % args.validation_steps == 0:
                grid(global_step)
            # Checkpoints and grids are not training time.
            last_log = time.perf_counter()
            if out_of_steps or timed_out:
                if timed_out:
                    logger.info(
                        f"Stopping at step {global_step}: --max_train_minutes {args.max_train_minutes} reached"
                    )
                done = True
                break
    progress.close()

    accelerator.wait_for_everyone()
    if lora and accelerator.is_main_process:
        save_lora(ema_transformer(unwrap(model), ema), output_dir, new_class_ids, model_id2label)
        # The grid comes from the saved file through load_lora_weights, as a user would load it.
        pipeline = pretrained_pipeline(args.pretrained_model_name_or_path, vae_source, latent_config, base_names)
        pipeline.load_lora_weights(output_dir)
        final_grid = grid(global_step, pipeline, name="final")
        logger.info(f"Saved the LoRA (EMA weights) to {output_dir / 'pytorch_lora_weights.safetensors'}")
        if args.push_to_hub:
            push_lora(args, unwrap(model), final_grid, len(dataset), len(id2label), global_step, total, new_names)
    elif not lora:
        pipeline = ema_pipeline()  # on every process: a sharded EMA is gathered
        if accelerator.is_main_process:
            save_pretrained_atomically(pipeline, output_dir, merge=True)
            final_grid = grid(global_step, pipeline, name="final")
            logger.info(f"Saved the pipeline (EMA weights) to {output_dir}")
            if args.push_to_hub:
                push(args, pipeline, final_grid, len(dataset), global_step, total)
    accelerator.wait_for_everyone()
    accelerator.end_training()


def out_of_time(args, accelerator: Accelerator, train_seconds: float) -> bool:
    """Whether `--max_train_minutes` is spent; the main process decides, so every process stops at the same step."""
    if args.max_train_minutes is None:
        return False
    flag = torch.tensor([float(train_seconds >= 60 * args.max_train_minutes)], device=accelerator.device)
    return bool(broadcast(flag, from_process=0).item())


def prepare_data(batch, vae, latent_config, generator, data_shape, rank_slice, accelerator) -> torch.Tensor:
    """The batch as the model's clean input: pixels, or normalised posterior samples."""
    device = accelerator.device
    if "mean" in batch:  # latent cache: a fresh posterior sample per step
        eps = torch.randn(data_shape, generator=generator)[rank_slice]
        latents = batch["mean"] + batch["std"] * eps
        return normalize_latents(latents, latent_config).to(device)
    pixels = batch["pixels"].to(device)
    if vae is None:
        return pixels
    with torch.no_grad():
        posterior = vae.encode(pixels.to(vae.dtype)).latent_dist
        eps = torch.randn(data_shape, generator=generator)[rank_slice].to(device, posterior.mean.dtype)
        latents = posterior.mean + posterior.std * eps
    return normalize_latents(latents.float(), latent_config)


def run_classes(base_names, base_num_classes: int, data_id2label: dict[int, str]):
    """The run's classes: `(label_map, new_names, model_id2label)`; `label_map[data id]` is the model's id, and the
    model's names are the pretrained pipeline's (or the data's), then the new ones."""
    label_map, new_names = class_label_map(base_names, base_num_classes, data_id2label)
    return label_map, new_names, {**(base_names or {}), **{label_map[i]: n for i, n in data_id2label.items()}}


def parse_validation_classes(
    spec: str | None, id2label: dict[int, str], label_map: list[int], num_classes: int
) -> list[int]:
    """The grids' model class ids: `spec`'s comma-separated ids or names of any of the model's `num_classes`
    classes, or the data's first 8 classes."""
    if not spec:
        return label_map[:8]
    return ClassNames(id2label, num_classes).ids(spec.split(","), allow_null=False, parse_digits=True)


def final_pipeline(model, ema, vae_source, latent_config, id2label, source=None) -> MPDiTPipeline:
    """A pipeline on a copy of the model carrying the EMA weights, with the data's latent statistics and a pretrained
    pipeline's saved guidance."""
    transformer = MPDiTTransformer2DModel.from_config(model.config)
    ema.copy_to(transformer.parameters())
    return run_pipeline(transformer.eval(), vae_source, latent_config, id2label, source)


def ema_transformer(model, ema) -> MPDiTTransformer2DModel:
    """A copy of a LoRA run's model (adapter and grown class table) whose trainable weights are the EMA's."""
    copied = copy.deepcopy(model).eval()
    ema.copy_to([p for p in copied.parameters() if p.requires_grad])
    return copied


def lora_pipeline(model, ema, vae_source, latent_config, id2label, source) -> MPDiTPipeline:
    """A pipeline on a LoRA run's model with the EMA weights, for the validation grids: the run's VAE, and the
    pretrained pipeline's saved guidance."""
    return run_pipeline(ema_transformer(model, ema), vae_source, latent_config, id2label, source)


def pretrained_pipeline(source, vae_source, latent_config, base_names) -> MPDiTPipeline:
    """The pretrained model as a pipeline with the run's VAE and the saved guidance, for loading the LoRA into."""
    transformer = MPDiTTransformer2DModel.from_pretrained(source, subfolder=transformer_subfolder(source)).eval()
    return run_pipeline(transformer, vae_source, latent_config, base_names, source)


def run_pipeline(transformer, vae_source, latent_config, id2label, source=None) -> MPDiTPipeline:
    """A pipeline around `transformer` with the run's VAE; the guidance a pretrained pipeline (`source`) saved."""
    index = pipeline_index(source) if source else {}
    guidance = {k: index[k] for k in ("default_guidance_scale", "default_guidance_interval") if k in index}
    vae = load_vae(vae_source, latent_config)
    return MPDiTPipeline(transformer, vae, default_scheduler(), id2label=id2label, **guidance)


def pipeline_index(source: str | os.PathLike) -> dict:
    """A pretrained pipeline folder's `model_index.json` (empty for a transformer folder)."""
    index = Path(source) / "model_index.json"
    return json.loads(index.read_text()) if index.is_file() else {}


def base_class_names(args, source: str | os.PathLike) -> dict[int, str] | None:
    """The pretrained pipeline's class names, to match the data's against; None for a transformer folder and for
    `--class_matching id` (data ids are the model's)."""
    id2label = pipeline_index(source).get("id2label")
    if args.class_matching == "id" or not id2label:
        return None
    return {int(k): v for k, v in id2label.items()}


def transformer_subfolder(source: str | os.PathLike) -> str | None:
    """Where a pretrained folder keeps the transformer: `transformer/` in a pipeline, the folder itself otherwise."""
    return "transformer" if (Path(source) / "transformer").is_dir() else None


def load_vae(vae_source, latent_config) -> AutoencoderKL | None:
    """The run's VAE, with the data's latent statistics where a latent cache measured them; None in pixel space."""
    if not vae_source:
        return None
    vae = AutoencoderKL.from_pretrained(vae_source).eval()
    if latent_config is not None and getattr(latent_config, "latents_mean", None) is not None:
        vae.register_to_config(
            latents_mean=list(latent_config.latents_mean),
            latents_std=list(latent_config.latents_std),
            scaling_factor=latent_config.scaling_factor,
        )
    return vae


@torch.no_grad()
def sample_grid(args, accelerator, pipeline: MPDiTPipeline, classes, step, name=None) -> Path:
    """A PNG grid of `pipeline`'s samples (the EMA model) for fixed classes and a fixed seed."""
    pipeline = pipeline.to(accelerator.device)
    pipeline.set_progress_bar_config(disable=True)
    sampling = validation_sampling(args)
    per_class = args.validation_images_per_class
    labels = [c for c in classes for _ in range(per_class)]
    images = pipeline(
        class_labels=labels, generator=sampling.generators(range(len(labels))), **sampling.call_kwargs(pipeline)
    ).images
    images = [im.convert("RGB") for im in images]
    names = [pipeline.class_names.name(c) for c in classes]
    grid = labelled_grid(images, names, per_class)
    path = Path(args.output_dir) / "samples" / f"{name or f'step-{step:07d}'}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        grid.save(tmp)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            import numpy as np

            tracker.writer.add_images("samples", np.stack([np.asarray(im) for im in images]), step, dataformats="NHWC")
    return path


def push(args, pipeline, grid, num_samples, steps, batch) -> None:
    data = args.dataset_name or Path(args.train_data_dir or args.latents_dir).name
    values = {
        "title": args.hub_model_id.split("/")[-1],
        "dataset": data,
        "num_samples": num_samples,
        "steps": steps,
        "recipe": (
            f"AdamW lr {args.learning_rate}, batch {batch}, EMA {args.ema_decay}, {args.weighting_scheme} flow times "
            f"(mean {args.logit_mean}, std {args.logit_std}), class dropout {args.class_dropout_prob}"
        ),
        "sample_grid": "samples/final.png",
    }
    pipeline.push_to_hub(
        args.hub_model_id,
        token=args.hub_token,
        private=args.hub_private_repo,
        card_template="mpdit-trained",
        card_values=values,
        extra_files={"samples/final.png": str(grid)},
    )


def trainable_count(model, num_new_classes: int) -> int:
    """What a LoRA run trains: the adapter, and the new classes' rows (the class table's other rows are masked)."""
    adapter = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    rows = num_new_classes * model.class_embed.embedding_table.weight.shape[1] if num_new_classes else 0
    return adapter + rows


def push_lora(args, model, grid, num_samples, num_data_classes, steps, batch, new_names) -> None:
    data = args.dataset_name or Path(args.train_data_dir or args.latents_dir).name
    values = {
        "title": args.hub_model_id.split("/")[-1],
        "license": "apache-2.0",
        "base_model": args.pretrained_model_name_or_path,
        "dataset": data,
        "num_samples": num_samples,
        "num_classes": num_data_classes,
        "new_classes": new_names,
        "rank": args.lora_rank,
        "alpha": args.lora_alpha or args.lora_rank,
        "target_modules": args.lora_target_modules,
        "trainable_parameters": f"{trainable_count(model, len(new_names)):,}",
        "steps": steps,
        "recipe": f"AdamW lr {args.learning_rate}, batch {batch}, EMA {args.ema_decay}",
        "sample_grid": "samples/final.png",
        "example_classes": json.dumps((new_names or [model.config.num_classes - 1])[:2]),
    }
    push_lora_to_hub(
        args.output_dir,
        args.hub_model_id,
        values,
        token=args.hub_token,
        private=args.hub_private_repo,
        extra_files={"samples/final.png": str(grid)},
    )


if __name__ == "__main__":
    main()
