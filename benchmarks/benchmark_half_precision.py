"""Half-precision drift of the bundled model: images drawn with a bf16 or fp16 transformer against float32.

    python benchmarks/benchmark_half_precision.py [--num_images 6] [--steps 250] [--output_json PATH (default: beside the script)]

The official 250-point ODE (`SamplingConfig(scheduler="ode")`) with the model's saved guidance, image i from its own
seeded generator. Rows, each against the float32 pipeline on the same noise (0..1 scale):

- `bf16, bf16 latents (before)`: the pipeline as it was before latents stayed float32, replayed by a hand loop: the
  whole transformer cast to bf16 (time embedding included), velocity and guidance in bf16, and the scheduler's
  float32 step cast back to bf16 after every step.
- `bf16 cast, float32 latents`: the same bf16 transformer in today's pipeline.
- `bf16 load` / `fp16 load`: `MPDiTPipeline.from_pretrained(..., dtype=...)`, which keeps the time embedding float32.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from timing import environment, write_result

from diffusers_mpdit import BUNDLED_MODEL, MPDiTPipeline
from diffusers_mpdit.sampling import SamplingConfig, quiet_backend_warnings


def bf16_latents_loop(pipe: MPDiTPipeline, noise: torch.Tensor, labels: torch.Tensor, kwargs: dict) -> np.ndarray:
    """The earlier pipeline's arithmetic: latents stored in the transformer's dtype between Euler steps."""
    dtype = pipe.transformer.dtype
    sigmas = torch.from_numpy(np.append(np.asarray(kwargs["sigmas"], dtype=np.float32), np.float32(0)))
    null = torch.full_like(labels, pipe.transformer.config.num_classes)
    low, high = kwargs["guidance_interval"] or (0.0, 1.0)
    x = noise.to(dtype)
    with torch.no_grad():
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            t = (sigma * 1000) / 1000
            guided = kwargs["guidance_scale"] != 1 and low <= t.item() <= high
            model_input, ids = (torch.cat([x, x]), torch.cat([labels, null])) if guided else (x, labels)
            v = pipe.transformer(model_input, t.expand(len(ids)), ids).sample
            if guided:
                cond, uncond = v.chunk(2)
                v = uncond + kwargs["guidance_scale"] * (cond - uncond)
            x = (x.float() + (sigma_next - sigma) * v.float()).to(v.dtype)
    return (x.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=BUNDLED_MODEL, help="a pixel-space pipeline folder (default: the bundled model)")
    p.add_argument("--num_images", type=int, default=6, help="images per row, classes 0, 1, ... in turn")
    p.add_argument("--steps", type=int, default=250, help="time points of the official ODE")
    p.add_argument("--seed", type=int, default=0, help="image i draws its noise with seed + i")
    p.add_argument("--output_json", help="where to write the figures (default: the .json beside this script)")
    args = p.parse_args(argv)
    quiet_backend_warnings()
    torch.manual_seed(0)

    sampling = SamplingConfig(scheduler="ode", steps=args.steps, seed=args.seed)
    reference = MPDiTPipeline.from_pretrained(args.model)
    if reference.vae is not None:
        raise SystemExit("--model must be a pixel-space pipeline (the hand loop does not decode)")
    reference.set_progress_bar_config(disable=True)
    reference.scheduler = sampling.make_scheduler(reference.scheduler.config)
    kwargs = sampling.call_kwargs(reference)
    num_classes = reference.transformer.config.num_classes
    labels = torch.arange(args.num_images) % num_classes
    config = reference.transformer.config
    noise = torch.stack(
        [
            torch.randn(config.in_channels, config.sample_size, config.sample_size, generator=g)
            for g in sampling.generators(range(args.num_images))
        ]
    )

    def draw(pipe: MPDiTPipeline) -> np.ndarray:
        pipe.set_progress_bar_config(disable=True)
        pipe.scheduler = sampling.make_scheduler(reference.scheduler.config)
        return pipe(class_labels=labels.tolist(), latents=noise, output_type="np", **kwargs).images

    float32 = draw(reference)
    cast = MPDiTPipeline.from_pretrained(args.model)
    cast.transformer = cast.transformer.to(torch.bfloat16)  # everything bf16, the time embedding too
    rows = {
        "bf16, bf16 latents (before)": bf16_latents_loop(cast, noise, labels, kwargs),
        "bf16 cast, float32 latents": draw(cast),
        "bf16 load, float32 latents": draw(MPDiTPipeline.from_pretrained(args.model, dtype=torch.bfloat16)),
        "fp16 load, float32 latents": draw(MPDiTPipeline.from_pretrained(args.model, dtype=torch.float16)),
    }
    figures = {
        name: {"mean": float(np.abs(images - float32).mean()), "max": float(np.abs(images - float32).max())}
        for name, images in rows.items()
    }
    before = figures["bf16, bf16 latents (before)"]["mean"]
    print(
        f"{args.num_images} images, {args.steps}-point official ODE, guidance {kwargs['guidance_scale']} on "
        f"{kwargs['guidance_interval']}; |difference| from float32 on a 0..1 scale"
    )
    print(f"{'':32} {'mean':>8} {'max':>8} {'mean vs before':>15}")
    for name, row in figures.items():
        print(f"{name:32} {row['mean']:8.4f} {row['max']:8.4f} {before / row['mean']:14.1f}x")
    result = {
        "machine": environment(),
        "settings": {
            "model": "bundled" if args.model == BUNDLED_MODEL else str(args.model),
            "num_images": args.num_images,
            "steps": args.steps,
            "seed": args.seed,
            "guidance_scale": kwargs["guidance_scale"],
            "guidance_interval": kwargs["guidance_interval"],
        },
        "difference_from_float32": figures,
    }
    write_result(__file__, result, args.output_json)
    return result


if __name__ == "__main__":
    main()
