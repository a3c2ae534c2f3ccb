#!/usr/bin/env python
"""Mutation check: do the tests notice a broken model, sampler, trainer or writer?

    .venv/bin/python scripts/mutation_check.py [--only NAME ...] [--output_json scripts/mutation_check.json]

Each mutation changes one line (the bundled weights one replaces the weights file) in a fresh copy of the repository,
then runs the tests most likely to notice, with that copy first on the import path. First the same tests run on an
unmutated copy and must pass. A mutation that no test fails is a hole in the suite. Slow (each mutation runs its tests in a new process): run it by hand, not in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What a checkout holds beside the source: left out at the top level only (src/diffusers_mpdit/data is source).
TOP_LEVEL = {".git", "out", "data", "build", "dist", ".ruff_cache", ".pytest_cache"}
FRESH_WEIGHTS = "fresh weights"

# name -> (file, the line's text, what replaces it, tests to run)
MUTATIONS = {
    "EMA decay": (
        "examples/train_mpdit.py",
        "min_decay=args.ema_decay,",
        "min_decay=0.0,",
        ["tests/test_training.py::test_ema_after_three_steps_is_the_constant_decay_average"],
    ),
    "guidance scale read once": (
        "src/diffusers_mpdit/pipelines/pipeline_mpdit.py",
        "velocity = uncond + self.guidance_scale * (cond - uncond)",
        "velocity = uncond + guidance_scale * (cond - uncond)",
        ["tests/test_pipeline.py"],
    ),
    "class-dropout probability": (
        "src/diffusers_mpdit/training/flow_matching.py",
        "drop = uniform.to(class_labels.device) < drop_prob",
        "drop = uniform.to(class_labels.device) < drop_prob / 2",
        ["tests/test_training.py::test_label_dropout_rate_and_null_class"],
    ),
    "null class id": (
        "src/diffusers_mpdit/pipelines/pipeline_mpdit.py",
        "cfg_ids = torch.cat([class_ids, torch.full_like(class_ids, config.num_classes)])",
        "cfg_ids = torch.cat([class_ids, torch.full_like(class_ids, config.num_classes - 1)])",
        ["tests/test_pipeline.py", "tests/test_samplers.py"],
    ),
    "pixel-shuffle order": (
        "src/diffusers_mpdit/models/transformer_mpdit.py",
        "return tokens.permute(0, 1, 4, 2, 5, 3).reshape(",
        "return tokens.permute(0, 1, 5, 2, 4, 3).reshape(",
        ["tests/test_fidelity.py"],
    ),
    "logit-normal mean": (
        "src/diffusers_mpdit/training/flow_matching.py",
        'weighting_scheme, batch_size, logit_mean, logit_std, mode_scale, device="cpu", generator=generator',
        'weighting_scheme, batch_size, logit_mean + 0.5, logit_std, mode_scale, device="cpu", generator=generator',
        ["tests/test_training.py::test_flow_times_follow_the_official_logit_normal"],
    ),
    "latent normalisation sign": (
        "src/diffusers_mpdit/pipelines/latents.py",
        "return (latents - shift) * scale",
        "return (latents + shift) * scale",
        ["tests/test_pipeline.py::test_latent_normalisation_uses_mean_std_or_shift_scale"],
    ),
    "per-image seed": (
        "src/diffusers_mpdit/sampling.py",
        'return torch.Generator("cpu").manual_seed(seed + index)',
        'return torch.Generator("cpu").manual_seed(seed * 1000 + index)',
        ["tests/test_samplers.py"],
    ),
    "bundled weights": (
        "src/diffusers_mpdit/bundled/mpdit-fashion-mnist/transformer/diffusion_pytorch_model.safetensors",
        FRESH_WEIGHTS,
        FRESH_WEIGHTS,
        ["tests/test_bundled_model.py"],
    ),
    "atomic rename": (
        "src/diffusers_mpdit/atomic.py",
        "        yield tmp\n",
        "        yield path\n",
        ["tests/test_atomic.py"],
    ),
    "SDE noise on the last step": (
        "src/diffusers_mpdit/schedulers/scheduling_flow_match_euler_maruyama.py",
        "if i < self.num_inference_steps - 1:",
        "if i < self.num_inference_steps:",
        ["tests/test_samplers.py"],
    ),
    "covariance normalisation": (
        "src/diffusers_mpdit/evaluation/adm.py",
        "covariance = (self.outer - self.count * torch.outer(offset, offset)) / (self.count - 1)",
        "covariance = (self.outer - self.count * torch.outer(offset, offset)) / self.count",
        ["tests/test_adm_metrics.py::test_streamed_metrics_equal_the_whole_in_memory_computation"],
    ),
}


def ignore(folder: str, names: list[str]) -> list[str]:
    top = [n for n in names if Path(folder) == ROOT and (n in TOP_LEVEL or n.startswith(".venv"))]
    return top + [n for n in names if n == "__pycache__" or n.endswith(".egg-info")]


def fresh_weights(path: Path) -> None:
    """Replaces the bundled weights with a freshly initialised model of the same config."""
    from diffusers_mpdit import MPDiTTransformer2DModel

    model = MPDiTTransformer2DModel.from_config(MPDiTTransformer2DModel.load_config(str(path.parent)))
    model.save_pretrained(str(path.parent))


def mutate(copy: Path, file: str, old: str, new: str) -> None:
    path = copy / file
    if old == FRESH_WEIGHTS:
        fresh_weights(path)
        return
    text = path.read_text()
    if text.count(old) != 1:
        raise SystemExit(f"{file}: expected the line {old!r} exactly once, found it {text.count(old)} times")
    path.write_text(text.replace(old, new))


def copy_environment(copy: Path) -> dict:
    """An environment that imports the copy's package rather than the installed one."""
    (copy / "src" / "diffusers_mpdit" / "hub_cards").symlink_to(copy / "hub_cards", target_is_directory=True)
    env = os.environ | {"PYTHONPATH": str(copy / "src")}
    where = subprocess.run(
        [sys.executable, "-c", "import diffusers_mpdit.hub_cards as h; print(h.__file__)"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if not where.startswith(str(copy)):
        raise SystemExit(f"the copy is not what gets imported: {where}")
    return env


def run_tests(copy: Path, env: dict, tests: list[str]) -> tuple[bool, str]:
    """True if the tests pass (the mutation survives)."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider", *tests]
    run = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True)
    failed = [line for line in run.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    last = [line for line in run.stdout.splitlines() if line.strip()][-1:]
    return run.returncode == 0, (failed or last or [run.stderr[-300:]])[0]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=list(MUTATIONS), help="run only these mutations")
    p.add_argument("--output_json", help="also write the results here")
    p.add_argument("--skip_control", action="store_true", help="skip the unmutated run of every test first")
    args = p.parse_args(argv)
    names = args.only or list(MUTATIONS)
    if not args.skip_control:
        # The tests must pass on the unmutated copy, or a failure says nothing about a mutation.
        tests = sorted({test for name in names for test in MUTATIONS[name][3]})
        with tempfile.TemporaryDirectory(prefix="mpdit-mutation-") as folder:
            copy = Path(folder) / "repo"
            shutil.copytree(ROOT, copy, ignore=ignore)
            passed, summary = run_tests(copy, copy_environment(copy), tests)
        if not passed:
            raise SystemExit(f"the unmutated copy fails its tests: {summary}")
        print(f"control: the unmutated copy passes {len(tests)} test selections", flush=True)
    results = []
    for name in names:
        file, old, new, tests = MUTATIONS[name]
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="mpdit-mutation-") as folder:
            copy = Path(folder) / "repo"
            shutil.copytree(ROOT, copy, ignore=ignore)
            env = copy_environment(copy)
            mutate(copy, file, old, new)
            survived, summary = run_tests(copy, env, tests)
        verdict = "SURVIVED" if survived else "caught"
        results.append({"mutation": name, "file": file, "tests": tests, "caught": not survived, "summary": summary,
                        "seconds": round(time.perf_counter() - start, 1)})  # fmt: skip
        print(f"{verdict:8s} {name}: {summary}", flush=True)
    caught = sum(r["caught"] for r in results)
    print(f"{caught} of {len(results)} mutations caught")
    if args.output_json:
        sys.path.insert(0, str(ROOT / "src"))
        from diffusers_mpdit.atomic import atomic_path

        with atomic_path(args.output_json) as tmp:
            Path(tmp).write_text(json.dumps({"results": results, "caught": caught, "total": len(results)}, indent=2))
    if caught < len(results):
        sys.exit(1)


if __name__ == "__main__":
    main()
