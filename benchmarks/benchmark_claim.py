"""The paper's claim at small scale: MPDiT against the isotropic configuration of the same code, same wall clock.

    python benchmarks/benchmark_claim.py --data data/fashion-mnist --minutes 25 --output_dir out/claim

Both models are trained with `examples/train_mpdit.py` on Fashion-MNIST (32x32 grey, pixel space) with the bundled
demo model's recipe and width: MPDiT with two levels (4x4 then 2x2 patches, depths 6 + 2) and the isotropic model
(one level on 2x2 patches, depth 8). They run at the same time, one CPU thread each, so they share the machine's
conditions, and each stops after `--minutes` of training time (`--max_train_minutes`). Checkpoints are evaluated
afterwards with the quality benchmark's classifier: A_gen (the classifier's accuracy on class-balanced samples) and
the Frechet distance to the real test split in the classifier's feature space, against training time.
Writes `claim.json` and `claim.png` into `--output_dir`; `--skip_training` re-evaluates existing runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from diffusers_mpdit import MPDiTPipeline, MPDiTTransformer2DModel
from diffusers_mpdit.evaluation import ClassifierScorer, load_split
from diffusers_mpdit.sampling import SamplingConfig

ROOT = Path(__file__).resolve().parents[1]
BASE = {"num_attention_heads": 4, "attention_head_dim": 32, "num_class_tokens": 16}
BASE |= {"fno_width": 32, "fno_modes": 16, "fno_grid_size": 32}
MODELS = {
    "MPDiT (4x4 -> 2x2, depths 6+2)": "mpdit",
    "isotropic (2x2, depth 8)": "isotropic",
}
CONFIGS = {
    "mpdit": BASE | {"patch_sizes": [4, 2], "depths": [6, 2]},
    "isotropic": BASE | {"patch_sizes": [2], "depths": [8]},
}


def train_command(args, name: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "examples" / "train_mpdit.py"),
        *("--dataset_name", args.data, "--image_preprocessing", "pad", "--resolution", "32", "--image_channels", "1"),
        "--random_flip",
        *("--preset", "MPDiT-tiny", "--model_config", json.dumps(CONFIGS[name])),
        *("--train_batch_size", str(args.batch_size), "--learning_rate", "1e-3", "--ema_decay", str(args.ema_decay)),
        *("--max_train_steps", "1000000", "--max_train_minutes", str(args.minutes)),
        *("--checkpointing_steps", str(args.checkpointing_steps), "--validation_steps", "0"),
        *("--report_to", "none", "--seed", "0", "--output_dir", str(Path(args.output_dir) / name)),
    ]


def train_both(args) -> None:
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = {}
    for name in CONFIGS:
        log = open(Path(args.output_dir) / f"{name}.log", "w")
        procs[name] = subprocess.Popen(train_command(args, name), env=env, stdout=log, stderr=subprocess.STDOUT)
    failed = [name for name, proc in procs.items() if proc.wait() != 0]
    if failed:
        raise SystemExit(f"training failed for {failed}; see {args.output_dir}/<name>.log")


def checkpoints(run_dir: Path, count: int) -> list[tuple[float, int, Path]]:
    """`count` checkpoints spread evenly over the run's training time, as (seconds, step, folder)."""
    found = []
    for path in run_dir.glob("checkpoint-*"):
        state = json.loads((path / "training_state.json").read_text())
        found.append((state["train_seconds"], state["global_step"], path))
    found.sort()
    if len(found) <= count:
        return found
    picks = {round(i * (len(found) - 1) / (count - 1)) for i in range(count)}
    return [found[i] for i in sorted(picks)]


def evaluate(args, scorer: ClassifierScorer) -> dict:
    results = {}
    for label, name in MODELS.items():
        run_dir = Path(args.output_dir) / name
        final = MPDiTPipeline.from_pretrained(run_dir)  # scheduler and id2label as trained
        rows = []
        for seconds, step, path in checkpoints(run_dir, args.points):
            transformer = MPDiTTransformer2DModel.from_pretrained(path / "transformer_ema")
            pipe = MPDiTPipeline(
                transformer=transformer, vae=final.vae, scheduler=final.scheduler, id2label=final.id2label
            )
            sampling = SamplingConfig(steps=args.steps, guidance_scale=args.guidance_scale)
            score = scorer.score_pipeline(pipe, args.num_samples, sampling)
            rows.append({"minutes": seconds / 60, "step": step, **score})
            print(
                f"{label}: {seconds / 60:5.1f} min, step {step:5d}: A_gen {score['A_gen']:.3f}, FD {score['FD']:.2f}"
            )
        results[label] = rows
    return results


def plot(results: dict, reference: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_fd) = plt.subplots(1, 2, figsize=(10, 4))
    for label, rows in results.items():
        minutes = [r["minutes"] for r in rows]
        ax_acc.plot(minutes, [r["A_gen"] for r in rows], "o-", label=label)
        ax_fd.plot(minutes, [r["FD"] for r in rows], "o-", label=label)
    ax_acc.axhline(reference["A_real"], color="gray", ls="--", label="A_real (real test images)")
    ax_fd.axhline(reference["FD_train_test"], color="gray", ls="--", label="FD real train vs test")
    ax_acc.set(xlabel="training time (minutes, 1 CPU thread)", ylabel="A_gen (higher is better)")
    ax_fd.set(xlabel="training time (minutes, 1 CPU thread)", ylabel="Frechet distance to test (lower is better)")
    ax_fd.set_yscale("log")
    for ax in (ax_acc, ax_fd):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Fashion-MNIST 32x32: same code, same wall clock")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT / "data" / "fashion-mnist"), help="examples/prepare_fashion_mnist.py")
    p.add_argument("--output_dir", default=str(ROOT / "out" / "claim"))
    p.add_argument("--minutes", type=float, default=25.0, help="training time per model")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--ema_decay", type=float, default=0.995, help="short runs need a short EMA horizon")
    p.add_argument("--checkpointing_steps", type=int, default=50)
    p.add_argument("--points", type=int, default=4, help="checkpoints evaluated per model")
    p.add_argument("--num_samples", type=int, default=300, help="generated images per evaluation (class-balanced)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance_scale", type=float, default=1.5)
    p.add_argument("--classifier_epochs", type=int, default=3)
    p.add_argument("--skip_training", action="store_true", help="evaluate the runs already in --output_dir")
    p.add_argument("--train_only", action="store_true", help="train, evaluate later with --skip_training")
    args = p.parse_args()
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    if not args.skip_training:
        train_both(args)
    if args.train_only:
        return
    torch.manual_seed(0)
    scorer = ClassifierScorer.fit(
        load_split(args.data, "train"), load_split(args.data, "test"), epochs=args.classifier_epochs, seed=0
    )
    reference = scorer.reference(args.num_samples)
    print(f"classifier: A_real {reference['A_real']:.4f}, FD real train vs test {reference['FD_train_test']:.2f}")
    results = evaluate(args, scorer)
    out = Path(args.output_dir)
    tmp = out / "claim.json.tmp"
    tmp.write_text(json.dumps({"reference": reference, "results": results, "args": vars(args)}, indent=2))
    os.replace(tmp, out / "claim.json")
    plot(results, reference, out / "claim.png")
    print(f"wrote {out / 'claim.json'} and {out / 'claim.png'}")


if __name__ == "__main__":
    main()
