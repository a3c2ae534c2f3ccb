"""MPDiTPipeline overhead: a full pipeline call against a bare loop of transformer forwards and Euler updates.

    python benchmarks/benchmark_pipeline.py [--preset MPDiT-B/4x] [--steps 4] [--batch_size 2] [--repeats 5]

Same model, same steps, same classifier-free guidance (one batched forward of [cond; uncond]), latents out (no VAE
decode on either side). The two alternate in one run; the medians are compared, and min, median and max printed.
Writes `benchmark_pipeline.json` beside this script.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from timing import describe, environment, spread, time_alternating, write_result

from diffusers_mpdit import MPDiTPipeline, MPDiTTransformer2DModel, default_scheduler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="MPDiT-B/4x", help="model preset (default MPDiT-B/4x)")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps (default 4)")
    parser.add_argument("--batch_size", type=int, default=2, help="images per call (default 2)")
    parser.add_argument("--guidance_scale", type=float, default=1.5, help="CFG scale (default 1.5)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions, after a warm-up (default 5)")
    parser.add_argument("--output_json", help="where to write the result (default: beside this script)")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = MPDiTTransformer2DModel.from_preset(args.preset).eval()  # 32x32x4 latents: 256-px images
    pipe = MPDiTPipeline(model, None, default_scheduler())
    pipe.set_progress_bar_config(disable=True)
    labels = torch.arange(args.batch_size)
    noise = torch.randn(args.batch_size, 4, 32, 32)
    null = torch.full_like(labels, model.config.num_classes)
    scale = args.guidance_scale

    def run_pipeline():
        return pipe(
            class_labels=labels,
            num_inference_steps=args.steps,
            guidance_scale=scale,
            latents=noise,
            output_type="latent",
        ).images

    pipe.scheduler.set_timesteps(args.steps)
    sigmas = pipe.scheduler.sigmas.tolist()

    @torch.no_grad()
    def run_bare_loop():
        x = noise
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            t = torch.full((2 * args.batch_size,), sigma)
            cond, uncond = model(torch.cat([x, x]), t, torch.cat([labels, null]), return_dict=False)[0].chunk(2)
            x = x + (sigma_next - sigma) * (uncond + scale * (cond - uncond))
        return x

    torch.testing.assert_close(run_pipeline(), run_bare_loop(), rtol=1e-4, atol=1e-4)  # the same computation
    times = time_alternating({"pipeline": run_pipeline, "bare loop": run_bare_loop}, args.repeats, warmup=1)
    ratio = statistics.median(times["pipeline"]) / statistics.median(times["bare loop"])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.preset}, 256 px, batch {args.batch_size}, "
        f"{args.steps} steps, guidance {scale}, {args.repeats} repeats"
    )
    print(f"pipeline:  {describe(times['pipeline'], 's')}")
    print(f"bare loop: {describe(times['bare loop'], 's')}")
    print(f"ratio of medians: {ratio:.3f}")
    result = {
        "args": vars(args),
        "environment": environment(),
        "seconds": {name: spread(ts) for name, ts in times.items()},
        "ratio": ratio,
    }
    write_result(__file__, result, args.output_json)


if __name__ == "__main__":
    main()
