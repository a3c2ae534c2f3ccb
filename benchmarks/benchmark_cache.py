"""Training-free caches, speed against quality: no cache and each cache setting, side by side in one run.

    python benchmarks/benchmark_cache.py --part quality --data data/fashion-mnist
    python benchmarks/benchmark_cache.py --part timing

Parts (each writes its own key of `--output_json`, keeping the other parts already there):
- `quality`: the bundled model with its saved guidance, `--sampler` (`euler`, 50 steps, or `ode`, the official
  250-point ODE). For each `--caches` entry (`none` first) it draws `--seed_sets` sets of `--num_samples`
  class-balanced images (set k from seed k * 10**6) and scores each with the Fashion-MNIST judge (FD to the real test
  split, A_gen), as benchmarks/benchmark_quality.py does.
- `timing`: sampling wall time of one `--timing_batch`-image call of the bundled model per cache (median of
  `--repeats`, the settings taking turns), as a ratio against no cache; then MPDiT-XL/4x with random weights,
  batch 2, guided, transformer time per step with the level caches against none.

Every cache spec is `diffusers_mpdit.caches`' (`mpdit generate --cache ...`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from timing import environment, spread, time_alternating

from diffusers_mpdit import BUNDLED_MODEL, MPDiTPipeline, MPDiTTransformer2DModel
from diffusers_mpdit.atomic import atomic_path
from diffusers_mpdit.caches import parse_cache
from diffusers_mpdit.evaluation import ClassifierScorer, load_split
from diffusers_mpdit.sampling import SamplingConfig, load_pipeline

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHES = ("none", "level:2", "level:3", "fbc:0.1")
SAMPLER_STEPS = {"euler": 50, "ode": 250}


def sampling_for(sampler: str, cache: str, seed: int = 0) -> SamplingConfig:
    return SamplingConfig(
        scheduler=sampler, steps=SAMPLER_STEPS[sampler], seed=seed, cache=None if cache == "none" else cache
    ).validate()


def quality(args) -> dict:
    train, test = load_split(args.data, "train"), load_split(args.data, "test")
    judge = ClassifierScorer.fit(train, test, epochs=3, seed=0)
    runs = {}
    for cache in args.caches:
        sets = []
        for k in range(args.seed_sets):
            sampling = sampling_for(args.sampler, cache, seed=k * 10**6)
            pipe = load_pipeline(args.model, "cpu", cache=sampling.cache)
            pipe.scheduler = sampling.make_scheduler(pipe.scheduler.config)
            start = time.perf_counter()
            scores = judge.score_pipeline(pipe, args.num_samples, sampling)
            sets.append({"FD": scores["FD"], "A_gen": scores["A_gen"], "seconds": time.perf_counter() - start})
            print(
                f"{args.sampler} {cache} seed set {k}: FD {scores['FD']:.3f} A_gen {scores['A_gen']:.4f}", flush=True
            )
        fds, accs = [s["FD"] for s in sets], [s["A_gen"] for s in sets]
        runs[cache] = {
            "sets": sets,
            "FD": {"mean": statistics.mean(fds), "min": min(fds), "max": max(fds)},
            "A_gen": {"mean": statistics.mean(accs), "min": min(accs), "max": max(accs)},
        }
        base = runs["none"]["FD"]
        runs[cache]["FD_inside_uncached_spread"] = base["min"] <= runs[cache]["FD"]["mean"] <= base["max"]
        # Saved after each cache, so that a stopped run keeps the caches it finished.
        save_part(
            args,
            f"quality_{args.sampler}",
            {"num_samples": args.num_samples, "seed_sets": args.seed_sets, "runs": runs},
        )
    return {"num_samples": args.num_samples, "seed_sets": args.seed_sets, "runs": runs}


def timing(args) -> dict:
    result = {"environment": environment("cpu")}
    pipes = {}
    for cache in args.caches:
        pipes[cache] = load_pipeline(args.model, "cpu", cache=None if cache == "none" else cache)
        pipes[cache].set_progress_bar_config(disable=True)
    results = {}
    for sampler in args.timing_samplers:
        # The same number of image-steps per call for each sampler: 250 ODE steps get a fifth of the images.
        labels = [i % 10 for i in range(max(1, args.timing_batch * 50 // SAMPLER_STEPS[sampler]))]
        fns = {}
        for cache, pipe in pipes.items():
            sampling = sampling_for(sampler, cache)
            pipe.scheduler = sampling.make_scheduler(pipe.scheduler.config)
            call = sampling.call_kwargs(pipe)
            fns[cache] = lambda pipe=pipe, call=call, sampling=sampling, labels=labels: pipe(
                labels, generator=sampling.generators(range(len(labels))), output_type="latent", **call
            )
        times = time_alternating(fns, args.repeats, warmup=1)
        base = statistics.median(times["none"])
        results[sampler] = {cache: {**spread(t), "speedup": base / statistics.median(t)} for cache, t in times.items()}
        for cache in times:
            r = results[sampler][cache]
            print(f"bundled {sampler}: {cache:>18} {r['median']:.2f} s  {r['speedup']:.2f}x", flush=True)
    result["bundled"] = results

    # MPDiT-XL/4x, random weights: the global level is about half the work (22 blocks on 80 tokens, 6 on 272).
    torch.manual_seed(0)
    xl = MPDiTTransformer2DModel.from_preset("MPDiT-XL/4x").eval()
    bundled = MPDiTPipeline.from_pretrained(BUNDLED_MODEL)
    pipe = MPDiTPipeline(xl, None, bundled.scheduler, default_guidance_scale=1.5)
    pipe.set_progress_bar_config(disable=True)
    steps = args.xl_steps
    fns = {}
    for cache in args.xl_caches:

        def run(cache=cache):
            if cache != "none":
                xl.enable_cache(parse_cache(cache).make_config(pipe))
            try:
                pipe(
                    [1, 2], num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="latent"
                )
            finally:
                if cache != "none":
                    xl.disable_cache()

        fns[cache] = run
    times = time_alternating(fns, args.xl_repeats, warmup=1)
    base = statistics.median(times["none"])
    result["xl"] = {"batch": 2, "steps": steps, "guidance_scale": 1.5} | {
        cache: {**spread([s / steps for s in t]), "speedup": base / statistics.median(t)} for cache, t in times.items()
    }
    for cache, t in times.items():
        print(
            f"MPDiT-XL/4x: {cache:>18} {statistics.median(t) / steps:.3f} s/step  {base / statistics.median(t):.2f}x"
        )
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("quality", "timing"), required=True, help="what to measure (see above)")
    p.add_argument("--model", default=BUNDLED_MODEL, help="pipeline folder (default: the bundled model)")
    p.add_argument("--data", default=str(ROOT / "data" / "fashion-mnist"), help="examples/prepare_fashion_mnist.py")
    p.add_argument("--caches", nargs="+", default=list(DEFAULT_CACHES), help="cache specs; `none` is always run")
    p.add_argument("--sampler", choices=tuple(SAMPLER_STEPS), default="euler", help="quality: euler 50 or ode 250")
    p.add_argument("--num_samples", type=int, default=500, help="quality: images per seed set")
    p.add_argument("--seed_sets", type=int, default=3, help="quality: seed sets per cache")
    p.add_argument(
        "--timing_batch",
        type=int,
        default=50,
        help="timing: images per 50-step call of the bundled model (250-step calls: a fifth)",
    )
    p.add_argument("--timing_samplers", nargs="+", default=["euler", "ode"], help="timing: samplers to time")
    p.add_argument("--repeats", type=int, default=5, help="timing: timed calls of each cache")
    p.add_argument("--xl_caches", nargs="+", default=["none", "level:2", "level:3", "level:4"], help="timing: XL")
    p.add_argument("--xl_steps", type=int, default=12, help="timing: XL sampling steps per timed call")
    p.add_argument("--xl_repeats", type=int, default=3, help="timing: XL timed calls of each cache")
    p.add_argument("--output_json", default=str(ROOT / "benchmarks" / "benchmark_cache.json"), help="result file")
    args = p.parse_args(argv)
    args.caches = ["none", *[c for c in args.caches if c != "none"]]
    for cache in args.caches[1:] + [c for c in args.xl_caches if c != "none"]:
        parse_cache(cache, "--caches")
    args.command = " ".join(["python benchmarks/benchmark_cache.py", *(sys.argv[1:] if argv is None else argv)])
    key = f"quality_{args.sampler}" if args.part == "quality" else "timing"
    return save_part(args, key, quality(args) if args.part == "quality" else timing(args))


def save_part(args, key: str, result: dict) -> dict:
    """Writes one part's result under `key` of `--output_json`, keeping the other parts there."""
    path = Path(args.output_json)
    saved = json.loads(path.read_text()) if path.exists() else {}
    saved[key] = result | {"command": args.command}
    with atomic_path(str(path)) as tmp:
        Path(tmp).write_text(json.dumps(saved, indent=2))
    return saved


if __name__ == "__main__":
    main()
