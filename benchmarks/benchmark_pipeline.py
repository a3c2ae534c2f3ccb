"""MPDiTPipeline overhead: a full pipeline call against a bare loop of transformer forwards and Euler updates.

    python benchmarks/benchmark_pipeline.py [--preset MPDiT-B/4x] [--steps 4] [--batch-size 2] [--repeats 5]

Same model, same steps, same classifier-free guidance (one batched forward of [cond; uncond]), latents out (no VAE
decode on either side). The two alternate in one run; the median of the repeats is compared.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from diffusers_mpdit import MPDiTPipeline, MPDiTTransformer2DModel, default_scheduler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="MPDiT-B/4x")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--guidance-scale", type=float, default=1.5)
    parser.add_argument("--repeats", type=int, default=5)
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
    times = {"pipeline": [], "bare loop": []}
    for _ in range(args.repeats):
        for name, fn in (("pipeline", run_pipeline), ("bare loop", run_bare_loop)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    pipeline, bare = statistics.median(times["pipeline"]), statistics.median(times["bare loop"])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.preset}, 256 px, batch {args.batch_size}"
    )
    print(f"{args.steps} steps, guidance {scale}, median of {args.repeats}")
    print(
        f"| pipeline | bare loop | ratio |\n| --- | --- | --- |\n| {pipeline:.3f} s | {bare:.3f} s | {pipeline / bare:.3f} |"
    )


if __name__ == "__main__":
    main()
