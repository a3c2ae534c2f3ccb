"""The paper's four claims at small scale, with seeds and a spread: multi-patch, class tokens, FNO time embedding and
shared modulation, each against the reference MPDiT on Fashion-MNIST.

    python benchmarks/benchmark_ablation.py --data data/fashion-mnist --output_dir out/ablation

Every configuration is the reference (two levels, 4x4 then 2x2 patches, depths 6 + 2, FNO time embedding, 16 class
tokens, one shared modulation) with one thing changed:

| name | change | claim tested |
| --- | --- | --- |
| mpdit | none: the reference | |
| isotropic | one level of 2x2 patches, depth 8 (same width, same total depth) | multi-patch |
| 1-class-token | 1 class token instead of 16 | class tokens |
| mlp-time | DiT's sinusoidal + MLP time embedding instead of the FNO | FNO time embedding |
| per-block-adaln | DiT's adaLN-Zero in every block instead of one shared modulation | shared modulation |

Each runs `examples/train_mpdit.py` with the bundled model's data and recipe (32x32 grey, pixel space, no flips,
AdamW 1e-3, logit-normal flow times, class dropout 0.1), for `--steps` steps of `--batch_size` images and every
`--seeds` seed, `--parallel` runs at a time with one CPU thread each. The isotropic twin runs the same steps.
Training time is steps times each configuration's step time, measured side by side on one thread (the models take
turns, 10 steps each after a warm-up) before judging: the runs' own clocks depend on what else shared the machine
while they ran, and are kept in the JSON as `train_seconds`. Comparing the twin at the reference's training time
gives the equal-wall-clock comparison. The project's classifier judge (trained once on the real training split) then scores each run's
`--points` checkpoints (EMA weights) on the same `--num_samples` class-balanced samples per checkpoint (Euler,
`--sampling_steps`, guidance 1.5 at every step, image i from seed `--sampling_seed` + i): A_gen and the Frechet
distance to the real test split in the classifier's feature space, against the real-vs-real yardstick.

Writes `benchmark_ablation.json` and `benchmark_ablation.png` (mean and standard deviation over seeds against steps
and against training time) into `--results_dir` (default: beside this script). `--skip_training` judges the runs
already in `--output_dir`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "mpdit": {},
    "isotropic": {"patch_sizes": [2], "depths": [8]},
    "1-class-token": {"num_class_tokens": 1},
    "mlp-time": {"time_embedding_type": "mlp"},
    "per-block-adaln": {"modulation": "per_block"},
}
# The claim each configuration tests against the reference, and which way the paper says it goes.
CLAIMS = {
    "isotropic": "multi-patch: no loss against the isotropic model, at about half the compute",
    "1-class-token": "16 class tokens beat 1",
    "mlp-time": "the FNO time embedding beats DiT's MLP",
    "per-block-adaln": "one shared modulation costs nothing against per-block adaLN",
}


def model_config(name: str, width: int) -> dict:
    base = {
        "num_attention_heads": width // 32,
        "attention_head_dim": 32,
        "patch_sizes": [4, 2],
        "depths": [6, 2],
        "num_class_tokens": 16,
        "fno_width": 32,
        "fno_modes": 16,
        "fno_grid_size": 32,
    }
    return base | CONFIGS[name]


def train_command(args, name: str, seed: int) -> list[str]:
    every = max(1, args.steps // args.points)
    return [
        sys.executable,
        str(ROOT / "examples" / "train_mpdit.py"),
        *("--dataset_name", args.data, "--image_preprocessing", "pad", "--resolution", "32", "--image_channels", "1"),
        *("--preset", "MPDiT-tiny", "--model_config", json.dumps(model_config(name, args.width))),
        *("--train_batch_size", str(args.batch_size), "--learning_rate", str(args.learning_rate)),
        *("--ema_decay", str(args.ema_decay), "--max_train_steps", str(args.steps)),
        *("--checkpointing_steps", str(every), "--validation_steps", "0", "--report_to", "none"),
        *("--seed", str(seed), "--output_dir", str(run_dir(args, name, seed))),
    ]


def run_dir(args, name: str, seed: int) -> Path:
    return Path(args.output_dir) / f"{name}-seed{seed}"


def run_all(commands: list[tuple[str, list[str], Path]], parallel: int) -> None:
    """Runs the commands, `parallel` at a time, one CPU thread each; logs go to `<log path>`."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def run(item):
        label, command, log = item
        start = time.perf_counter()
        with open(log, "w") as f:
            code = subprocess.run(command, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
        print(f"{label}: exit {code} after {(time.perf_counter() - start) / 60:.1f} min", flush=True)
        return label, code

    with ThreadPoolExecutor(parallel) as pool:
        failed = [label for label, code in pool.map(run, commands) if code != 0]
    if failed:
        raise SystemExit(f"failed: {failed}; see the logs beside them")


def checkpoints(run: Path) -> list[tuple[int, float, Path]]:
    """(step, training seconds, folder) of every checkpoint of a run, by step."""
    found = []
    for path in run.glob("checkpoint-*"):
        state = json.loads((path / "training_state.json").read_text())
        found.append((state["global_step"], state["train_seconds"], path))
    return sorted(found)


def step_seconds(args, names: list[str], repeats: int = 10) -> dict[str, dict]:
    """Seconds per training step (flow-matching loss, backward, AdamW, EMA) of each configuration on one thread,
    the models taking turns so that they share the machine's conditions."""
    from diffusers.training_utils import EMAModel
    from timing import spread, time_alternating

    from diffusers_mpdit import MPDiTTransformer2DModel
    from diffusers_mpdit.training import flow_matching_loss, sample_flow_times

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    steps = {}
    for name in names:
        torch.manual_seed(0)
        model = MPDiTTransformer2DModel.from_preset(
            "MPDiT-tiny", sample_size=32, in_channels=1, num_classes=10, **model_config(name, args.width)
        ).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
        ema = EMAModel(model.parameters(), decay=args.ema_decay, min_decay=args.ema_decay)
        data = torch.randn(args.batch_size, 1, 32, 32)
        labels = torch.randint(0, 11, (args.batch_size,))

        def step(model=model, optimizer=optimizer, ema=ema, data=data, labels=labels):
            loss = flow_matching_loss(model, data, torch.randn_like(data), sample_flow_times(len(data)), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ema.step(model.parameters())

        steps[name] = step
    times = time_alternating(steps, repeats)
    torch.set_num_threads(threads)
    return {name: spread(ts) for name, ts in times.items()}


def judge_one(args_json: str) -> None:
    """Child process: scores one checkpoint with the saved judge and writes its JSON."""
    from diffusers_mpdit import MPDiTPipeline, MPDiTTransformer2DModel, default_scheduler
    from diffusers_mpdit.evaluation import ClassifierScorer
    from diffusers_mpdit.sampling import SamplingConfig

    job = json.loads(args_json)
    torch.set_num_threads(1)
    scorer = ClassifierScorer.load(job["judge"])
    transformer = MPDiTTransformer2DModel.from_pretrained(Path(job["checkpoint"]) / "transformer_ema")
    pipe = MPDiTPipeline(transformer.eval(), None, default_scheduler(), dict(enumerate(scorer.names)))
    sampling = SamplingConfig(
        steps=job["sampling_steps"], guidance_scale=1.5, guidance_interval=(0.0, 1.0), seed=job["sampling_seed"]
    )
    start = time.perf_counter()
    score = scorer.score_pipeline(pipe, job["num_samples"], sampling, batch_size=100)
    score["sampling_seconds"] = time.perf_counter() - start
    from diffusers_mpdit.atomic import atomic_path

    with atomic_path(job["output"]) as tmp:  # a resume trusts any judged.json it finds
        Path(tmp).write_text(json.dumps(score))


def judge_all(args, runs: dict[tuple[str, int], Path], judge: Path) -> list[dict]:
    jobs, rows = [], []
    for (name, seed), run in runs.items():
        for step, seconds, path in checkpoints(run):
            output = path / "judged.json"
            rows.append({"config": name, "seed": seed, "step": step, "train_seconds": seconds, "file": output})
            if not output.exists():
                job = {
                    "judge": str(judge), "checkpoint": str(path), "output": str(output), "num_samples": args.num_samples,
                    "sampling_steps": args.sampling_steps, "sampling_seed": args.sampling_seed,
                }  # fmt: skip
                command = [sys.executable, __file__, "--judge_one", json.dumps(job)]
                jobs.append((f"judge {name} seed {seed} step {step}", command, path / "judge.log"))
    run_all(jobs, args.parallel)
    for row in rows:
        row |= json.loads(row.pop("file").read_text())
    return rows


def summarise(rows: list[dict], names: list[str]) -> dict:
    """Mean and standard deviation over seeds at each checkpoint index, per configuration."""
    summary = {}
    for name in names:
        by_seed = {}
        for row in rows:
            if row["config"] == name:
                by_seed.setdefault(row["seed"], []).append(row)
        runs = [sorted(r, key=lambda row: row["step"]) for r in by_seed.values()]
        points = min(len(r) for r in runs)
        summary[name] = []
        for i in range(points):
            at = [r[i] for r in runs]
            entry = {"step": at[0]["step"], "seeds": len(at)}
            for key in ("A_gen", "FD", "train_seconds", "time_seconds"):
                values = np.array([row[key] for row in at], dtype=float)
                entry[key] = {
                    "mean": float(values.mean()),
                    "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                }
            summary[name].append(entry)
    return summary


def at_time(curve: list[dict], seconds: float, key: str) -> tuple[float, float] | None:
    """Linear interpolation of a metric's mean and std at a training time inside the curve, else None."""
    times = [point["time_seconds"]["mean"] for point in curve]
    if not times or seconds < times[0] or seconds > times[-1]:
        return None
    mean = float(np.interp(seconds, times, [point[key]["mean"] for point in curve]))
    std = float(np.interp(seconds, times, [point[key]["std"] for point in curve]))
    return mean, std


def verdicts(summary: dict, seeds: int) -> dict:
    """For each claim: the reference minus the variant at the last checkpoint (and, for multi-patch, at the reference's
    last training time), in units of the standard error of that difference. |z| < 2 cannot tell; otherwise the sign
    says whether the reference is better (supports the claim) or worse."""
    reference = summary["mpdit"][-1]
    out = {}
    for name, claim in CLAIMS.items():
        if name not in summary:
            continue
        comparisons = {"equal steps": summary[name][-1]}
        if name == "isotropic":
            seconds = reference["time_seconds"]["mean"]
            fd, acc = at_time(summary[name], seconds, "FD"), at_time(summary[name], seconds, "A_gen")
            if fd and acc:
                comparisons["equal training time"] = {
                    "FD": {"mean": fd[0], "std": fd[1]}, "A_gen": {"mean": acc[0], "std": acc[1]}
                }  # fmt: skip
        result = {"claim": claim}
        for label, other in comparisons.items():
            entry = {}
            for key, better in (("FD", -1), ("A_gen", 1)):
                diff = better * (reference[key]["mean"] - other[key]["mean"])  # > 0: the reference is better
                error = math.sqrt((reference[key]["std"] ** 2 + other[key]["std"] ** 2) / seeds) or 1e-12
                z = diff / error
                entry[key] = {
                    "reference": reference[key]["mean"], "variant": other[key]["mean"], "reference_better_by": diff,
                    "z": z, "verdict": "cannot tell" if abs(z) < 2 else ("supports" if z > 0 else "contradicts"),
                }  # fmt: skip
            result[label] = entry
        out[name] = result
    return out


def plot(summary: dict, reference: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharey="row")
    for name, curve in summary.items():
        steps = [p["step"] for p in curve]
        minutes = [p["time_seconds"]["mean"] / 60 for p in curve]
        for row, key in enumerate(("A_gen", "FD")):
            mean = np.array([p[key]["mean"] for p in curve])
            std = np.array([p[key]["std"] for p in curve])
            for col, x in enumerate((steps, minutes)):
                ax = axes[row, col]
                ax.plot(x, mean, "o-", label=name)
                ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    for col in range(2):
        axes[0, col].axhline(reference["A_real"], color="gray", ls="--", label="A_real")
        axes[1, col].axhline(reference["FD_train_test"], color="gray", ls="--", label="real train vs test")
        axes[1, col].set_yscale("log")
        axes[1, col].set_xlabel(["training steps", "training time (minutes, one CPU thread)"][col])
    axes[0, 0].set_ylabel("A_gen (higher is better)")
    axes[1, 0].set_ylabel("Frechet distance to test (lower is better)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    axes[0, 1].legend(fontsize=8)
    fig.suptitle("Fashion-MNIST 32x32: mean and standard deviation over seeds")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}")
    fig.savefig(tmp, dpi=110, format="png")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT / "data" / "fashion-mnist"), help="examples/prepare_fashion_mnist.py")
    p.add_argument("--output_dir", default=str(ROOT / "out" / "ablation"), help="training runs and their checkpoints")
    p.add_argument("--results_dir", default=str(Path(__file__).parent), help="where the JSON and the plot go")
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS), help="configurations to run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    p.add_argument("--width", type=int, default=64, help="hidden size, a multiple of 32 (default 64: 2 heads of 32)")
    p.add_argument("--steps", type=int, default=1200, help="training steps of every run (default 1200)")
    p.add_argument("--batch_size", type=int, default=64, help="images per step (default 64)")
    p.add_argument("--learning_rate", type=float, default=1e-3, help="AdamW, constant (default 1e-3)")
    p.add_argument("--ema_decay", type=float, default=0.995, help="a horizon short against the run (default 0.995)")
    p.add_argument("--points", type=int, default=4, help="checkpoints judged per run, evenly spaced (default 4)")
    p.add_argument("--parallel", type=int, default=2, help="runs at a time, one CPU thread each (default 2)")
    p.add_argument("--num_samples", type=int, default=500, help="generated images per checkpoint (default 500)")
    p.add_argument("--sampling_steps", type=int, default=20, help="Euler steps per sample (default 20)")
    p.add_argument("--sampling_seed", type=int, default=1000, help="image i uses this + i, in every run")
    p.add_argument("--classifier_epochs", type=int, default=3, help="the judge's passes over the training split")
    p.add_argument("--judge_seed", type=int, default=0, help="seeds the judge and the yardstick's real images")
    p.add_argument("--skip_training", action="store_true", help="judge the runs already in --output_dir")
    p.add_argument("--judge_one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.judge_one:
        judge_one(args.judge_one)
        return {}
    if "mpdit" not in args.configs:
        p.error("--configs must include mpdit, the reference")
    if args.width % 32 or args.width < 32:
        p.error(f"--width must be a positive multiple of 32, got {args.width}")

    from timing import environment

    from diffusers_mpdit.atomic import atomic_path
    from diffusers_mpdit.evaluation import ClassifierScorer, load_split

    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs = {(name, seed): run_dir(args, name, seed) for name in args.configs for seed in args.seeds}
    if not args.skip_training:
        # The slowest first, so that the pool ends together.
        order = sorted(runs, key=lambda key: key[0] != "isotropic")
        run_all([(f"{n} seed {s}", train_command(args, n, s), output / f"{n}-seed{s}.log") for n, s in order],
                args.parallel)  # fmt: skip
    # None when the runs were trained by an earlier invocation: this one did not time them.
    training_minutes = None if args.skip_training else (time.perf_counter() - start) / 60

    torch.set_num_threads(args.parallel)
    torch.manual_seed(args.judge_seed)
    scorer = ClassifierScorer.fit(
        load_split(args.data, "train"), load_split(args.data, "test"), epochs=args.classifier_epochs,
        seed=args.judge_seed,
    )  # fmt: skip
    reference = scorer.reference(args.num_samples, seed=args.judge_seed)
    judge = output / "judge.pt"
    scorer.save(str(judge))
    print(f"judge: A_real {reference['A_real']:.4f}, real train vs test FD {reference['FD_train_test']:.3f}")
    rows = judge_all(args, runs, judge)
    step_times = step_seconds(args, args.configs)
    for row in rows:
        row["time_seconds"] = row["step"] * step_times[row["config"]]["median"]
    for name, spread_ in step_times.items():
        print(
            f"{name}: {spread_['median']:.3f} s per step on one thread (min {spread_['min']:.3f}, max {spread_['max']:.3f})"
        )
    summary = summarise(rows, args.configs)
    claims = verdicts(summary, len(args.seeds))
    for name, curve in summary.items():
        last = curve[-1]
        print(f"{name:16s} step {last['step']:5d} ({last['time_seconds']['mean'] / 60:5.1f} min): "
              f"A_gen {last['A_gen']['mean']:.3f} +- {last['A_gen']['std']:.3f}, "
              f"FD {last['FD']['mean']:.2f} +- {last['FD']['std']:.2f}")  # fmt: skip
    for claim in claims.values():
        for label in ("equal steps", "equal training time"):
            if label in claim:
                fd = claim[label]["FD"]
                print(f"{claim['claim']} ({label}): FD {fd['reference']:.2f} vs {fd['variant']:.2f}, "
                      f"z {fd['z']:+.1f}: {fd['verdict']}")  # fmt: skip
    result = {
        "reference": reference,
        "summary": summary,
        "claims": claims,
        "step_seconds": step_times,
        "runs": rows,
        "minutes": {"training": training_minutes, "total": (time.perf_counter() - start) / 60},
        "environment": environment(),
        "args": vars(args),
    }
    results = Path(args.results_dir)
    with atomic_path(results / "benchmark_ablation.json") as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2, default=str))
    plot(summary, reference, results / "benchmark_ablation.png")
    print(f"wrote {results / 'benchmark_ablation.json'} and {results / 'benchmark_ablation.png'}")
    return result


if __name__ == "__main__":
    main()
