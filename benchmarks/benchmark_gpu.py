"""Where users train: GPU training and sampling throughput, peak memory and MFU, MPDiT-XL against diffusers' DiT-XL/2.

    python benchmarks/benchmark_gpu.py                               # one GPU, bf16; about 8 minutes on an H100
    python benchmarks/benchmark_gpu.py --device cpu --preset tiny     # a dry run of every section (the test suite's)

Side by side in one run, the models taking turns:

1. Training: images/s of a full step (flow-matching loss, backward, AdamW, EMA) under bf16 autocast, eager and
   `torch.compile`d, at `--batch_size`, for MPDiT-XL/4x, diffusers' `DiTTransformer2DModel` as DiT-XL/2, and the
   isotropic twin of our code (one level of 2x2 patches, 28 blocks); peak memory (`max_memory_allocated`) of each;
   MFU: 3 x the forward's FLOPs (`FlopCounterMode`, attention counted) x images/s over the GPU's dense bf16 peak
   (looked up for H100 and H200, or `--peak_tflops`).
2. Sampling: images/s of `--sampling_steps` Euler steps with classifier-free guidance 1.5 (one batched forward of
   [cond; uncond]), bf16 weights, eager and compiled, MPDiT-XL against DiT-XL/2 on the same loop and time grid.
3. Attention backends: MPDiT-XL training images/s with each diffusers attention backend that runs here (native
   SDPA, its flash, efficient and cuDNN paths; flash-attn and xformers where installed).

Writes `benchmark_gpu.json` beside this script.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from benchmark_model import build_dit, count_gmacs
from diffusers import DiTTransformer2DModel
from diffusers.training_utils import EMAModel
from timing import environment, spread, time_alternating, write_result

from diffusers_mpdit import MPDiTTransformer2DModel
from diffusers_mpdit.training import flow_matching_loss

# Dense bf16 tensor-core peaks (TFLOP/s) by the name torch reports.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4}
BACKENDS = ("native", "_native_flash", "_native_efficient", "_native_cudnn", "flash", "_flash_3", "xformers")


def build_models(preset: str) -> dict[str, torch.nn.Module]:
    """MPDiT, DiT and the isotropic twin, at full size (`xl`) or tiny for a dry run (`tiny`)."""
    torch.manual_seed(0)
    if preset == "xl":
        return {
            "MPDiT-XL/4x": MPDiTTransformer2DModel.from_preset("MPDiT-XL/4x"),
            "DiT-XL/2": build_dit("DiT-XL/2"),
            "isotropic XL/2": MPDiTTransformer2DModel.from_preset("MPDiT-XL/4x", patch_sizes=(2,), depths=(28,)),
        }
    tiny = {"num_classes": 1000, "sample_size": 32}
    return {
        "MPDiT-XL/4x": MPDiTTransformer2DModel.from_preset("MPDiT-tiny", **tiny),
        "DiT-XL/2": DiTTransformer2DModel(
            in_channels=4,
            out_channels=8,
            sample_size=32,
            patch_size=2,
            num_embeds_ada_norm=1000,
            num_attention_heads=2,
            attention_head_dim=16,
            num_layers=4,
        ),  # fmt: skip
        "isotropic XL/2": MPDiTTransformer2DModel.from_preset("MPDiT-tiny", patch_sizes=(2,), depths=(4,), **tiny),
    }


def forward(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The velocity (the first four channels; DiT's other four are its learned variance)."""
    if isinstance(getattr(model, "_orig_mod", model), DiTTransformer2DModel):
        return model(x, timestep=t * 1000, class_labels=y, return_dict=False)[0][:, :4]
    return model(x, t, y, return_dict=False)[0]


class Velocity(torch.nn.Module):
    """A model as `flow_matching_loss` calls it: `(x_t, t, labels) -> (velocity,)`."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, t, y, return_dict=False):
        return (forward(self.model, x, t, y),)


def training_step(model, batch_size: int, device: torch.device, compile_backend: str | None):
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.0, fused=device.type == "cuda")
    ema = EMAModel(model.parameters(), decay=0.9999, min_decay=0.9999, foreach=True)
    ema.to(device)
    net = Velocity(model)
    if compile_backend:
        net = torch.compile(net, backend=compile_backend)
    g = torch.Generator(device).manual_seed(0)
    data = torch.randn(batch_size, 4, 32, 32, device=device, generator=g)
    noise = torch.randn(batch_size, 4, 32, 32, device=device, generator=g)
    t = torch.rand(batch_size, device=device, generator=g)
    labels = torch.randint(0, 1001, (batch_size,), device=device, generator=g)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = flow_matching_loss(net, data, noise, t, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(model.parameters())

    return step


def sampling_run(model, batch_size: int, steps: int, device: torch.device, compile_backend: str | None):
    model = model.to(device, torch.bfloat16).eval()
    net = torch.compile(model, backend=compile_backend) if compile_backend else model
    labels = torch.arange(batch_size, device=device) % 1000
    cfg_labels = torch.cat([labels, torch.full_like(labels, 1000)])
    noise = torch.randn(batch_size, 4, 32, 32, device=device, dtype=torch.bfloat16)
    sigmas = torch.linspace(1, 0, steps + 1).tolist()

    @torch.no_grad()
    def run():
        x = noise
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            t = torch.full((2 * batch_size,), sigma, device=device)
            cond, uncond = forward(net, torch.cat([x, x]), t, cfg_labels).chunk(2)
            x = x + (sigma_next - sigma) * (uncond + 1.5 * (cond - uncond))
        return x

    return run


def peak_memory(device: torch.device, fn) -> float | None:
    """GiB allocated at the peak of one call (None on the CPU, where torch does not track it)."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS.items() if key in name), None)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="torch device (default cuda)")
    p.add_argument("--preset", choices=["xl", "tiny"], default="xl", help="xl, or tiny models for a dry run")
    p.add_argument("--batch_size", type=int, default=64, help="images per training step and per sampling call")
    p.add_argument("--sampling_steps", type=int, default=250, help="Euler steps per sample (default 250)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls of each, after two warm-ups (default 5)")
    p.add_argument("--compile_backend", default="inductor", help="torch.compile backend (default inductor)")
    p.add_argument("--peak_tflops", type=float, help="the GPU's dense bf16 peak (default: looked up for H100/H200)")
    p.add_argument("--sections", default="train,sample,attention", help="comma-separated: train, sample, attention")
    p.add_argument("--output_json", help="where to write the result (default: beside this script)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    sections = args.sections.split(",")
    start = time.perf_counter()
    result = {"args": vars(args), "environment": environment(args.device), "peak_tflops": None}
    peak = peak_tflops(device, args.peak_tflops)
    result["peak_tflops"] = peak
    print(f"{result['environment']}, dense bf16 peak {peak} TFLOP/s")

    if "train" in sections:
        # FLOPs are counted on the CPU in float32, batch 1 (FlopCounterMode counts SDPA there by a custom mapping).
        flops = {name: 2e9 * count_gmacs(model.eval(), isinstance(model, DiTTransformer2DModel))
                 for name, model in build_models(args.preset).items()}  # fmt: skip
        train = {}
        for compiled in (False, True):
            backend = args.compile_backend if compiled else None
            models = build_models(args.preset)
            steps = {name: training_step(model, args.batch_size, device, backend) for name, model in models.items()}
            times = time_alternating(steps, args.repeats, sync)
            for name, step in steps.items():
                median = statistics.median(times[name])
                images = args.batch_size / median
                mfu = 3 * flops[name] * images / (peak * 1e12) if peak else None
                row = {"seconds": spread(times[name]), "images_per_second": images, "train_flops_per_image":
                       3 * flops[name], "mfu": mfu, "peak_memory_gib": peak_memory(device, step)}  # fmt: skip
                train[f"{name}, {'compiled' if compiled else 'eager'}"] = row
                print(f"train {name:15s} {'compiled' if compiled else 'eager':8s} {images:8.1f} images/s"
                      + (f", MFU {100 * mfu:.1f}%" if mfu else "")
                      + (f", peak {row['peak_memory_gib']:.1f} GiB" if row["peak_memory_gib"] else ""))  # fmt: skip
            del models, steps
            if device.type == "cuda":
                torch.cuda.empty_cache()
        for mode in ("eager", "compiled"):
            ratio = (
                train[f"MPDiT-XL/4x, {mode}"]["images_per_second"] / train[f"DiT-XL/2, {mode}"]["images_per_second"]
            )
            result[f"train_speedup_vs_dit_{mode}"] = ratio
            print(f"train MPDiT-XL / DiT-XL/2 images/s, {mode}: {ratio:.2f}x")
        result["compile_speedup_mpdit"] = (
            train["MPDiT-XL/4x, compiled"]["images_per_second"] / train["MPDiT-XL/4x, eager"]["images_per_second"]
        )
        result["train"] = train

    if "sample" in sections:
        sample = {}
        for compiled in (False, True):
            backend = args.compile_backend if compiled else None
            models = {k: v for k, v in build_models(args.preset).items() if k != "isotropic XL/2"}
            runs = {name: sampling_run(m, args.batch_size, args.sampling_steps, device, backend)
                    for name, m in models.items()}  # fmt: skip
            times = time_alternating(runs, max(1, args.repeats // 2), sync, warmup=1)
            for name in runs:
                images = args.batch_size / statistics.median(times[name])
                sample[f"{name}, {'compiled' if compiled else 'eager'}"] = {
                    "seconds": spread(times[name]), "images_per_second": images
                }  # fmt: skip
                print(f"sample {name:14s} {'compiled' if compiled else 'eager':8s} {images:8.2f} images/s")
            del models, runs
        for mode in ("eager", "compiled"):
            ratio = (
                sample[f"MPDiT-XL/4x, {mode}"]["images_per_second"] / sample[f"DiT-XL/2, {mode}"]["images_per_second"]
            )
            result[f"sample_speedup_vs_dit_{mode}"] = ratio
            print(f"sample MPDiT-XL / DiT-XL/2 images/s, {mode}: {ratio:.2f}x")
        result["sample"] = sample

    if "attention" in sections:
        attention = {}
        for backend_name in BACKENDS:
            model = build_models(args.preset)["MPDiT-XL/4x"]
            try:
                model.set_attention_backend(backend_name)
                step = training_step(model, args.batch_size, device, None)
                times = time_alternating({backend_name: step}, args.repeats, sync)[backend_name]
                attention[backend_name] = {"seconds": spread(times),
                                           "images_per_second": args.batch_size / statistics.median(times)}  # fmt: skip
                print(f"attention {backend_name:18s} {attention[backend_name]['images_per_second']:8.1f} images/s")
            except Exception as error:  # a backend this machine lacks: recorded, not fatal
                attention[backend_name] = {"unavailable": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
                print(f"attention {backend_name:18s} unavailable ({type(error).__name__})")
            finally:
                from diffusers.models.attention_dispatch import _AttentionBackendRegistry

                _AttentionBackendRegistry._active_backend = "native"
            del model
        result["attention"] = attention
    result["minutes"] = (time.perf_counter() - start) / 60
    write_result(__file__, result, args.output_json)
    return result


if __name__ == "__main__":
    main()
