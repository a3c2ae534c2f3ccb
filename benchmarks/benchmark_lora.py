"""Teaching the bundled Fashion-MNIST model ten new classes (scikit-learn's handwritten digits): LoRA against full
fine-tuning, at equal steps, over several seeds, on CPU.

    python benchmarks/benchmark_lora.py --fashion_data data/fashion-mnist --output_json benchmarks/benchmark_lora.json

Each run is `examples/train_mpdit.py` itself (a subprocess) on `examples/prepare_digits.py`'s train split, from the
bundled model; its data's classes ("digit 0" ... "digit 9") are new to the model and become ids 10-19. For every run:
- trainable parameters (LoRA: the adapter and the ten new class rows; full: the whole model), the saved file's size,
  and the training time (the script's own count, start-up and saving excluded);
- the digits' quality, judged by a classifier trained on the real digits' train split: A_gen (accuracy on generated
  digits, against A_real on the real held-out digits) and the Frechet distance in its features to the held-out
  digits (against the same distance for as many real training digits);
- the garments' quality afterwards, judged by the Fashion-MNIST classifier of `benchmark_quality.py` (same
  figures), against the bundled model before fine-tuning: does it forget?

A LoRA run is loaded back with `MPDiTPipeline.load_lora_weights`, a full run with `from_pretrained`; both sample with
the same settings (`--num_inference_steps`, the model's saved guidance). `--grid` saves, from the first LoRA run of
the first seed, a grid with a row per class, old and new.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open

from diffusers_mpdit import BUNDLED_MODEL, MPDiTPipeline
from diffusers_mpdit.arguments import OneLineParser, positive_int, positive_number
from diffusers_mpdit.atomic import atomic_path
from diffusers_mpdit.evaluation import ClassifierScorer, load_split
from diffusers_mpdit.sampling import SamplingConfig, labelled_grid

ROOT = Path(__file__).resolve().parents[1]
TRAIN, PREPARE = ROOT / "examples" / "train_mpdit.py", ROOT / "examples" / "prepare_digits.py"
LORA_FILE = "pytorch_lora_weights.safetensors"


def main(argv: list[str] | None = None) -> dict:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fashion_data", default=str(ROOT / "data" / "fashion-mnist"), help="prepare_fashion_mnist.py")
    p.add_argument("--work_dir", default=str(ROOT / "data" / "benchmark-lora"), help="digits data and the runs")
    p.add_argument("--ranks", default="4,16", help="LoRA ranks, comma-separated (default 4,16)")
    p.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated (default 0,1,2)")
    p.add_argument("--steps", type=positive_int, default=300, help="optimiser steps of every run (default 300)")
    p.add_argument("--batch_size", type=positive_int, default=32, help="images per step (default 32)")
    p.add_argument("--lora_learning_rate", type=positive_number, default=1e-3, help="LoRA runs (default 1e-3)")
    p.add_argument("--full_learning_rate", type=positive_number, default=2e-4, help="full runs (default 2e-4)")
    p.add_argument("--ema_decay", type=positive_number, default=0.98, help="EMA of every run (default 0.98)")
    p.add_argument("--num_samples", type=positive_int, default=200, help="generated digits and garments per run")
    p.add_argument("--num_inference_steps", type=positive_int, default=25, help="Euler steps (default 25)")
    p.add_argument("--output_json", help="write the figures here")
    p.add_argument("--grid", help="save a grid of old and new classes here (PNG)")
    args = p.parse_args(argv)
    ranks = [int(r) for r in args.ranks.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.work_dir)
    digits_dir = work / "digits"
    if not (digits_dir / "train.parquet").is_file():
        subprocess.run([sys.executable, str(PREPARE), "--output_dir", str(digits_dir)], check=True)
    sampling = SamplingConfig(steps=args.num_inference_steps)

    torch.manual_seed(0)
    digits_train, digits_test = load_split(str(digits_dir), "train"), load_split(str(digits_dir), "test")
    digit_judge = ClassifierScorer.fit(digits_train, digits_test, epochs=15, random_flip=False)
    fashion_train, fashion_test = load_split(args.fashion_data, "train"), load_split(args.fashion_data, "test")
    garment_judge = ClassifierScorer.fit(fashion_train, fashion_test, epochs=3)
    references = {
        "digits": digit_judge.reference(args.num_samples),
        "garments": garment_judge.reference(args.num_samples),
    }
    base = MPDiTPipeline.from_pretrained(BUNDLED_MODEL)
    garments_before = garment_judge.score_pipeline(base, args.num_samples, sampling)

    configs = [(f"lora-r{r}", r) for r in ranks] + [("full", None)]
    runs = []
    for seed in seeds:
        for name, rank in configs:
            out = work / f"{name}-seed{seed}"
            run = train(args, digits_dir, out, seed, rank)
            pipe = MPDiTPipeline.from_pretrained(BUNDLED_MODEL)
            if rank is not None:
                pipe.load_lora_weights(out)
            else:
                pipe = MPDiTPipeline.from_pretrained(out)
            new_ids = pipe.get_label_ids([f"digit {d}" for d in range(10)])
            run.update(
                config=name,
                seed=seed,
                digits=digit_judge.score_pipeline(pipe, args.num_samples, sampling, class_ids=new_ids),
                garments=garment_judge.score_pipeline(pipe, args.num_samples, sampling),
            )
            runs.append(run)
            print(summary_line(run), flush=True)
            if args.grid and rank == ranks[0] and seed == seeds[0]:
                save_grid(pipe, sampling, args.grid)

    result = {
        "references": references,
        "garments_before": garments_before,
        "summary": summarise(runs, configs),
        "runs": runs,
        "settings": {**vars(args), "sampling": sampling.settings(base), "cpu_threads": torch.get_num_threads()},
    }
    for name, _ in configs:
        print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in result["summary"][name].items()))
    print(
        f"references: digits A_real {references['digits']['A_real']:.3f}, FD(real train, test) "
        f"{references['digits']['FD_train_test']:.2f}; garments before fine-tuning A_gen {garments_before['A_gen']:.3f},"
        f" FD {garments_before['FD']:.2f}"
    )
    if args.output_json:
        with atomic_path(args.output_json) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=2))
    return result


def train(args, digits_dir: Path, out: Path, seed: int, rank: int | None) -> dict:
    """One fine-tuning run of examples/train_mpdit.py; its size and time figures."""
    flags = [
        "--dataset_name", str(digits_dir), "--image_preprocessing", "pad", "--resolution", "32",
        "--image_channels", "1", "--pretrained_model_name_or_path", BUNDLED_MODEL, "--output_dir", str(out),
        "--max_train_steps", str(args.steps), "--train_batch_size", str(args.batch_size),
        "--checkpointing_steps", str(args.steps), "--checkpoints_total_limit", "1", "--validation_steps", "0",
        "--ema_decay", str(args.ema_decay), "--report_to", "none", "--seed", str(seed),
    ]  # fmt: skip
    if rank is not None:
        flags += ["--lora_rank", str(rank), "--learning_rate", str(args.lora_learning_rate)]
    else:
        flags += ["--learning_rate", str(args.full_learning_rate)]
    start = time.perf_counter()
    subprocess.run([sys.executable, str(TRAIN), *flags], check=True, capture_output=True)
    wall = time.perf_counter() - start
    state = json.loads((out / f"checkpoint-{args.steps}" / "training_state.json").read_text())
    # What trains is what is saved: the adapter and the new rows, or the whole model.
    saved = out / LORA_FILE if rank is not None else out / "transformer" / "diffusion_pytorch_model.safetensors"
    with safe_open(str(saved), "pt") as f:
        trainable = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return {
        "trainable_parameters": trainable,
        "file_bytes": os.path.getsize(saved),
        "train_seconds": state["train_seconds"],
        "process_seconds": wall,
    }


def summary_line(run: dict) -> str:
    d, g = run["digits"], run["garments"]
    return (
        f"{run['config']} seed {run['seed']}: {run['trainable_parameters']:,} trainable, {run['file_bytes'] / 1e6:.2f} MB,"
        f" {run['train_seconds']:.0f} s; digits A_gen {d['A_gen']:.3f} FD {d['FD']:.2f}; garments A_gen "
        f"{g['A_gen']:.3f} FD {g['FD']:.2f}"
    )


def summarise(runs: list[dict], configs) -> dict:
    """Per configuration: sizes, and mean and standard deviation over the seeds of the time and quality figures."""
    out = {}
    for name, _ in configs:
        mine = [r for r in runs if r["config"] == name]

        def stat(values):
            values = list(values)
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            return {"mean": statistics.fmean(values), "std": spread}

        out[name] = {
            "trainable_parameters": mine[0]["trainable_parameters"],
            "file_bytes": mine[0]["file_bytes"],
            "train_seconds": stat(r["train_seconds"] for r in mine),
            "digits_A_gen": stat(r["digits"]["A_gen"] for r in mine),
            "digits_FD": stat(r["digits"]["FD"] for r in mine),
            "garments_A_gen": stat(r["garments"]["A_gen"] for r in mine),
            "garments_FD": stat(r["garments"]["FD"] for r in mine),
            "seeds": len(mine),
        }
    return out


def save_grid(pipe: MPDiTPipeline, sampling: SamplingConfig, path: str, per_class: int = 6) -> None:
    """A row per class, the new digits first, then the old garments."""
    classes = list(range(10, 20)) + list(range(10))
    labels = [c for c in classes for _ in range(per_class)]
    pipe.set_progress_bar_config(disable=True)
    images = pipe(labels, generator=sampling.generators(range(len(labels))), **sampling.call_kwargs(pipe)).images
    grid = labelled_grid([im.convert("RGB") for im in images], [pipe.class_names.name(c) for c in classes], per_class)
    with atomic_path(path) as tmp:
        grid.save(tmp)


if __name__ == "__main__":
    main()
