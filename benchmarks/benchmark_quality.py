"""Quality of the bundled Fashion-MNIST model (or any pixel-space model of that data), measured offline.

    python benchmarks/benchmark_quality.py [--model PATH] [--data data/fashion-mnist] [--num_samples 1000]

1. A classifier (`diffusers_mpdit.evaluation.SmallImageClassifier`) is trained on the real training split;
   A_real is its accuracy on the real test split.
2. `--num_samples` images, balanced over the classes, are generated with the model's own (default) scheduler;
   A_gen is the fraction the classifier assigns to the requested class.
3. Frechet distances in the classifier's feature space: generated vs real test, and, as the yardstick, the same number
   of class-balanced real training images vs real test.

Targets (issue 5): A_gen >= 0.95 x A_real, and FD(generated, test) <= 3 x FD(train, test).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from diffusers_mpdit import BUNDLED_MODEL, MPDiTPipeline
from diffusers_mpdit.atomic import atomic_path
from diffusers_mpdit.evaluation import ClassifierScorer, load_split

ROOT = Path(__file__).resolve().parents[1]
# Pixel noise (std, fraction of the range) added to real images for a second yardstick: 1, 2 and 5 grey levels of 255.
NOISE_LEVELS = (1 / 255, 2 / 255, 5 / 255)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=BUNDLED_MODEL, help="pipeline folder (default: the bundled model)")
    p.add_argument("--data", default=str(ROOT / "data" / "fashion-mnist"), help="examples/prepare_fashion_mnist.py")
    p.add_argument("--num_samples", type=int, default=1000)
    p.add_argument("--steps", type=int, default=50, help="sampling steps (the pipeline's default)")
    p.add_argument("--guidance_scale", type=float, help="default: the model's saved default_guidance_scale")
    p.add_argument(
        "--guidance_interval",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="guide only for flow times in [LOW, HIGH] (1 = noise); 0 1 = every step; default: the model's saved "
        "default_guidance_interval",
    )
    p.add_argument("--classifier_epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_json", help="also write the figures here")
    p.add_argument("--write_card", action="store_true", help="render the model's README.md (hub_cards/mpdit-demo)")
    p.add_argument("--repo_id", default="diffusers-mpdit/mpdit-fashion-mnist", help="the card's Hub id")
    p.add_argument("--card_from_json", help="only render the card, from the --output_json of an earlier run")
    args = p.parse_args(argv)
    if args.card_from_json:
        saved = json.loads(Path(args.card_from_json).read_text())
        for key in ("num_samples", "steps", "guidance_scale", "guidance_interval"):
            setattr(args, key, saved["args"].get(key))
        pipe = MPDiTPipeline.from_pretrained(args.model)
        write_card(pipe, args, saved["reference"], saved["generated"], saved["A_gen/A_real"], saved["FD_ratio"])
        return saved

    torch.manual_seed(args.seed)
    pipe = MPDiTPipeline.from_pretrained(args.model)
    train, test = load_split(args.data, "train"), load_split(args.data, "test")
    if pipe.id2label and [pipe.id2label[i] for i in range(len(train.names))] != train.names:
        raise SystemExit(f"error: the model's classes {pipe.id2label} are not the data's {train.names}")
    start = time.perf_counter()
    scorer = ClassifierScorer.fit(train, test, epochs=args.classifier_epochs, seed=args.seed)
    reference = scorer.reference(args.num_samples, seed=args.seed, noise_levels=NOISE_LEVELS, half_mirrored=True)
    classifier_minutes = (time.perf_counter() - start) / 60
    start = time.perf_counter()
    generated = scorer.score_pipeline(
        pipe,
        args.num_samples,
        args.steps,
        args.guidance_scale,
        seed=args.seed,
        guidance_interval=args.guidance_interval,
    )
    # Record what the pipeline used, its saved defaults where the flags gave none.
    args.guidance_scale, args.guidance_interval = pipe.guidance_scale, pipe.guidance_interval
    sampling_minutes = (time.perf_counter() - start) / 60

    accuracy_ratio = generated["A_gen"] / reference["A_real"]
    distance_ratio = generated["FD"] / reference["FD_train_test"]
    print(
        f"model: {args.model}; scheduler {type(pipe.scheduler).__name__}, {args.steps} steps, "
        f"guidance {args.guidance_scale}{describe_interval(args)}; {args.num_samples} samples "
        f"({sampling_minutes:.1f} min)"
    )
    print(
        f"classifier ({args.classifier_epochs} epochs, {classifier_minutes:.1f} min): A_real {reference['A_real']:.4f}"
    )
    print(
        f"A_gen {generated['A_gen']:.4f} = {accuracy_ratio:.3f} x A_real (target >= 0.95): "
        f"{'met' if accuracy_ratio >= 0.95 else 'MISSED'}"
    )
    print(
        f"FD generated vs test {generated['FD']:.3f}; real train vs test ({args.num_samples} images) "
        f"{reference['FD_train_test']:.3f}; ratio {distance_ratio:.2f} (target <= 3): "
        f"{'met' if distance_ratio <= 3 else 'MISSED'}"
    )
    print("A_gen per class: " + ", ".join(f"{k} {v:.2f}" for k, v in generated["per_class"].items()))
    print(
        "yardstick: real train vs test after Gaussian pixel noise of std "
        + ", ".join(f"{float(k) * 255:.0f}/255: FD {v:.3f}" for k, v in reference["FD_train_test_noisy"].items())
    )
    print(
        "yardstick: real train vs test with a random half mirrored left to right (what --random_flip teaches): "
        f"FD {reference['FD_train_test_half_mirrored']:.3f}"
    )
    result = {
        "reference": reference,
        "generated": generated,
        "A_gen/A_real": accuracy_ratio,
        "FD_ratio": distance_ratio,
        "args": vars(args),
    }
    if args.write_card:
        write_card(pipe, args, reference, generated, accuracy_ratio, distance_ratio)
    if args.output_json:
        with atomic_path(args.output_json) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=2))
    return result


def describe_interval(args) -> str:
    if not args.guidance_interval:
        return ""
    low, high = args.guidance_interval
    return f" for flow times in [{low:g}, {high:g}]"


def benchmark_flags(args, pipe) -> str:
    """The benchmark's command-line flags that differ from its defaults (the model's, for guidance), for the card."""
    flags = [f"--num_samples {args.num_samples}"]
    if args.steps != 50:
        flags.append(f"--steps {args.steps}")
    if args.guidance_scale != pipe.config.default_guidance_scale:
        flags.append(f"--guidance_scale {args.guidance_scale:g}")
    interval = list(args.guidance_interval or [0, 1])
    if interval != list(pipe.config.default_guidance_interval or [0, 1]):
        flags.append("--guidance_interval {:g} {:g}".format(*interval))
    return " ".join(flags)


def write_card(pipe, args, reference, generated, accuracy_ratio, distance_ratio) -> None:
    """Renders `hub_cards/mpdit-demo.md` with these figures into the model folder, as README.md."""
    from diffusers_mpdit.hub_cards import default_card_values, render_model_card

    folder = Path(args.model)
    command = (folder / "train_command.sh").read_text()
    training = command.splitlines()[1].lstrip("# ")
    noisy = reference.get("FD_train_test_noisy", {})
    results = "\n".join(
        [
            f"Measured with `python benchmarks/benchmark_quality.py {benchmark_flags(args, pipe)}` (a CNN trained on the real",
            "training split judges the samples; the Frechet distance is taken in its feature space):",
            "",
            "| | value |",
            "| --- | --- |",
            f"| classifier accuracy on the real test split, A_real | {reference['A_real']:.4f} |",
            f"| accuracy on {args.num_samples} generated images ({args.steps} Euler steps, guidance "
            f"{args.guidance_scale}{describe_interval(args)}), A_gen | {generated['A_gen']:.4f} ({accuracy_ratio:.3f} x A_real) |",
            f"| Frechet distance, generated vs real test | {generated['FD']:.2f} |",
            f"| Frechet distance, {args.num_samples} real training images vs real test | "
            f"{reference['FD_train_test']:.2f} (ratio {distance_ratio:.2f}) |",
            "",
            "A_gen per class: " + ", ".join(f"{k} {v:.2f}" for k, v in generated["per_class"].items()) + ".",
            "",
            *(
                [
                    "How sensitive the distance is: the same real training images with Gaussian pixel noise of std "
                    + ", ".join(f"{float(k) * 255:.0f}" for k in noisy)
                    + " grey levels (of 255) are at "
                    + ", ".join(f"{v:.2f}" for v in noisy.values())
                    + " from the real test split.",
                    "",
                ]
                if noisy
                else []
            ),
            *(
                [
                    "Mirroring a random half of those images left to right, which is what training with `--random_flip`"
                    f" teaches (the data's shoes point left), puts them at {reference['FD_train_test_half_mirrored']:.2f}.",
                    "",
                ]
                if "FD_train_test_half_mirrored" in reference
                else []
            ),
            f"The project's quality bar is A_gen >= 0.95 x A_real ({'met' if accuracy_ratio >= 0.95 else 'not met'})"
            f" and a Frechet distance at most 3x the real one ({'met' if distance_ratio <= 3 else 'not met'}).",
        ]
    )
    values = default_card_values(pipe, args.repo_id) | {
        "title": "MPDiT Fashion-MNIST demo",
        "dataset": "zalando-datasets/fashion_mnist",
        "data_description": "60,000 28x28 greyscale training images, padded to 32x32; MIT",
        "class_names": [pipe.id2label[i] for i in sorted(pipe.id2label)],
        "training": training,
        "train_command": command.split("\n", 1)[1].strip(),
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "guidance_interval": list(args.guidance_interval) if args.guidance_interval else None,
        "example_classes": ["sandal", "ankle boot"],
        "results": results,
    }
    card = render_model_card("mpdit-demo", **values)
    with atomic_path(folder / "README.md") as tmp:
        card.save(tmp)
    print(f"wrote {folder / 'README.md'}")


if __name__ == "__main__":
    main()
