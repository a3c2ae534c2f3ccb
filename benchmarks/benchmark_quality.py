"""Quality of the bundled Fashion-MNIST model (or any pixel-space model of that data), measured offline.

    python benchmarks/benchmark_quality.py [--model PATH] [--data data/fashion-mnist] [--num_samples 1000]

1. A classifier (`diffusers_mpdit.evaluation.SmallImageClassifier`) is trained on the real training split, seeded
   with `--judge_seed`; A_real is its accuracy on the real test split.
2. `--num_samples` images, balanced over the classes, are generated with the sampling flags of `mpdit generate`
   (`diffusers_mpdit.sampling`; guidance left unset is the model's saved default), image i from `--seed` + i;
   A_gen is the fraction the classifier assigns to the requested class.
3. Frechet distances in the classifier's feature space: generated vs real test, and, as the yardstick, the same number
   of class-balanced real training images vs real test.

The project's quality bar: A_gen >= 0.95 x A_real, and FD(generated, test) <= 3 x FD(train, test).
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
from diffusers_mpdit.sampling import SamplingConfig, add_sampling_arguments, load_pipeline

ROOT = Path(__file__).resolve().parents[1]
# Pixel noise (std, fraction of the range) added to real images for a second yardstick: 1, 2 and 5 grey levels of 255.
NOISE_LEVELS = (1 / 255, 2 / 255, 5 / 255)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=BUNDLED_MODEL, help="pipeline folder (default: the bundled model)")
    p.add_argument("--data", default=str(ROOT / "data" / "fashion-mnist"), help="examples/prepare_fashion_mnist.py")
    p.add_argument("--num_samples", type=int, default=1000, help="generated images, and real ones in the yardstick")
    add_sampling_arguments(p, "underscore")
    p.add_argument("--classifier_epochs", type=int, default=3, help="the judge's passes over the training split")
    p.add_argument("--judge_seed", type=int, default=0, help="seeds the judge's training and the yardstick's images")
    p.add_argument("--output_json", help="also write the figures here")
    p.add_argument("--save_judge", help="also save the trained classifier here (ClassifierScorer.save)")
    p.add_argument("--write_card", action="store_true", help="render the model's README.md (hub_cards/mpdit-demo)")
    p.add_argument("--repo_id", default="diffusers-mpdit/mpdit-fashion-mnist", help="the card's Hub id")
    p.add_argument("--card_from_json", help="only render the card, from the --output_json of an earlier run")
    args = p.parse_args(argv)
    if args.card_from_json:
        saved = json.loads(Path(args.card_from_json).read_text())
        pipe = MPDiTPipeline.from_pretrained(args.model)
        write_card(pipe, saved, Path(args.model))
        return saved
    sampling = SamplingConfig.from_args(args, p)

    torch.manual_seed(args.judge_seed)
    pipe = load_pipeline(
        args.model, sampling.device, sampling.dtype, sampling.lora, sampling.lora_scale, sampling.cache
    )
    pipe.scheduler = sampling.make_scheduler(pipe.scheduler.config)
    train, test = load_split(args.data, "train"), load_split(args.data, "test")
    if pipe.id2label and [pipe.id2label[i] for i in range(len(train.names))] != train.names:
        raise SystemExit(f"error: the model's classes {pipe.id2label} are not the data's {train.names}")
    start = time.perf_counter()
    scorer = ClassifierScorer.fit(train, test, epochs=args.classifier_epochs, seed=args.judge_seed)
    reference = scorer.reference(args.num_samples, seed=args.judge_seed, noise_levels=NOISE_LEVELS, half_mirrored=True)
    classifier_minutes = (time.perf_counter() - start) / 60
    if args.save_judge:
        scorer.save(args.save_judge)
    start = time.perf_counter()
    generated = scorer.score_pipeline(pipe, args.num_samples, sampling)
    sampling_minutes = (time.perf_counter() - start) / 60
    settings = sampling.settings(pipe)

    accuracy_ratio = generated["A_gen"] / reference["A_real"]
    distance_ratio = generated["FD"] / reference["FD_train_test"]
    print(f"model: {args.model}; {sampling.describe(pipe)}; {args.num_samples} samples ({sampling_minutes:.1f} min)")
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
        "sampling": settings,
        "args": {k: v for k, v in vars(args).items() if k not in settings},
        "minutes": {"classifier": classifier_minutes, "sampling": sampling_minutes},
    }
    if args.write_card:
        write_card(pipe, result, Path(args.model))
    if args.output_json:
        with atomic_path(args.output_json) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=2))
    return result


def benchmark_flags(result: dict, pipe) -> str:
    """The command-line flags of a run that differ from the benchmark's defaults (the model's, for guidance)."""
    settings, args, default = result["sampling"], result["args"], SamplingConfig()
    flags = [f"--num_samples {args['num_samples']}"]
    if settings["scheduler"] != default.scheduler:
        flags.append(f"--scheduler {settings['scheduler']}")
    if settings["steps"] != default.steps:
        flags.append(f"--num_inference_steps {settings['steps']}")
    if settings["guidance_scale"] != pipe.config.default_guidance_scale:
        flags.append(f"--guidance_scale {settings['guidance_scale']:g}")
    interval = list(settings["guidance_interval"] or [0, 1])
    if interval != list(pipe.config.default_guidance_interval or [0, 1]):
        flags.append("--guidance_interval {:g} {:g}".format(*interval))
    if settings["seed"] != default.seed:
        flags.append(f"--seed {settings['seed']}")
    if args["judge_seed"] != 0:
        flags.append(f"--judge_seed {args['judge_seed']}")
    return " ".join(flags)


def write_card(pipe, result: dict, folder: Path) -> None:
    """Renders `hub_cards/mpdit-demo.md` with a run's figures into the model folder `folder`, as README.md."""
    from diffusers_mpdit.loaders.hub import default_card_values, render_model_card

    reference, generated, args = result["reference"], result["generated"], result["args"]
    accuracy_ratio, distance_ratio = result["A_gen/A_real"], result["FD_ratio"]
    sampling = SamplingConfig.from_settings(result["sampling"])
    command = (folder / "train_command.sh").read_text()
    training = command.splitlines()[1].lstrip("# ")
    noisy = reference.get("FD_train_test_noisy", {})
    results = "\n".join(
        [
            f"Measured with `python benchmarks/benchmark_quality.py {benchmark_flags(result, pipe)} --output_json "
            "benchmarks/benchmark_quality.json` in the diffusers-mpdit repository (a CNN trained on the real training "
            "split judges the samples; the Frechet distance is taken in its feature space):",
            "",
            "| | value |",
            "| --- | --- |",
            f"| classifier accuracy on the real test split, A_real | {reference['A_real']:.4f} |",
            f"| accuracy on {args['num_samples']} generated images ({sampling.describe(pipe)}), A_gen | "
            f"{generated['A_gen']:.4f} ({accuracy_ratio:.3f} x A_real) |",
            f"| Frechet distance, generated vs real test | {generated['FD']:.2f} |",
            f"| Frechet distance, {args['num_samples']} real training images vs real test | "
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
    values = default_card_values(pipe, args["repo_id"]) | {
        "title": "MPDiT Fashion-MNIST demo",
        "dataset": "zalando-datasets/fashion_mnist",
        "data_description": "60,000 28x28 greyscale training images, padded to 32x32; MIT",
        "class_names": [pipe.id2label[i] for i in sorted(pipe.id2label)],
        "training": training,
        "train_command": command.split("\n", 1)[1].strip(),
        "steps": result["sampling"]["steps"],
        "guidance_scale": result["sampling"]["guidance_scale"],
        "guidance_interval": result["sampling"]["guidance_interval"],
        "example_classes": ["sandal", "ankle boot"],
        "results": results,
    }
    card = render_model_card("mpdit-demo", **values)
    with atomic_path(folder / "README.md") as tmp:
        card.save(tmp)
    print(f"wrote {folder / 'README.md'}")


if __name__ == "__main__":
    main()
