"""Training throughput and peak memory: MPDiT-B/4x against the isotropic configuration of the same code.

    python benchmarks/benchmark_training.py [--batch_size 4] [--repeats 5] [--device cuda --mixed_precision bf16]

The isotropic baseline is `MPDiTTransformer2DModel` with one level on 2x2 patches and the same width and total depth
(a SiT/DiT-B/2 with MPDiT's embeddings). A step is what `examples/train_mpdit.py` does: flow times, noise and label
dropout from the shared helpers, the flow-matching loss, backward, AdamW and the EMA update. The two models alternate
in one run; the median step times are compared, and min, median and max printed. Peak memory is measured in a fresh
process per model (peak RSS growth over the process before its first step on CPU, `max_memory_allocated` on CUDA).
Writes `benchmark_training.json` beside this script.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys

import torch
from diffusers.training_utils import EMAModel
from timing import describe, environment, spread, time_alternating, write_result

from diffusers_mpdit import MPDiTTransformer2DModel
from diffusers_mpdit.training import drop_class_labels, flow_matching_loss, sample_flow_times, step_generator

CONFIGS = {
    "MPDiT-B/4x": {},
    "isotropic B/2": {"patch_sizes": (2,), "depths": (12,)},
}


def build(name: str, device: torch.device):
    torch.manual_seed(0)
    model = MPDiTTransformer2DModel.from_preset("MPDiT-B/4x", **CONFIGS[name]).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.0)
    ema = EMAModel(model.parameters(), decay=0.9999, min_decay=0.9999)
    ema.to(device)
    return model, optimizer, ema


def make_step(model, optimizer, ema, batch_size, device, autocast_dtype):
    counter = iter(range(10**9))

    def step():
        g = step_generator(0, next(counter))
        data = torch.randn(batch_size, 4, 32, 32, generator=g).to(device)
        noise = torch.randn(batch_size, 4, 32, 32, generator=g).to(device)
        t = sample_flow_times(batch_size, generator=g).to(device)
        labels = drop_class_labels(torch.randint(0, 1000, (batch_size,), generator=g), 1000, 0.1, generator=g)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = flow_matching_loss(model, data, noise, t, labels.to(device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(model.parameters())

    return step


def measure_memory(name: str, args) -> float:
    """Runs in a child process: peak memory growth of three training steps, in GiB."""
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision)
    model, optimizer, ema = build(name, device)
    step = make_step(model, optimizer, ema, args.batch_size, device, dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(3):
            step()
        return (torch.cuda.max_memory_allocated() - base) / 2**30
    before = _rss_gib()
    for _ in range(3):
        step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 - before


def _rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=4, help="images per step (default 4)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps, after a warm-up (default 5)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument(
        "--mixed_precision", choices=["no", "bf16", "fp16"], default="no", help="autocast precision (default no)"
    )
    parser.add_argument("--output_json", help="where to write the result (default: beside this script)")
    parser.add_argument("--memory_of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        print(json.dumps(measure_memory(args.memory_of, args)))
        return

    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    steps = {name: make_step(*build(name, device), args.batch_size, device, dtype) for name in CONFIGS}
    times = time_alternating(steps, args.repeats, sync, warmup=1)
    del steps

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}, mixed precision "
        f"{args.mixed_precision}, batch {args.batch_size} at 256 px (32x32x4 latents), {args.repeats} repeats\n"
    )
    rows = {}
    for name, seconds in times.items():
        child = subprocess.run(
            [sys.executable, __file__, "--memory_of", name, "--batch_size", str(args.batch_size)]
            + ["--device", args.device, "--mixed_precision", args.mixed_precision],
            capture_output=True,
            text=True,
            check=True,
        )
        memory = json.loads(child.stdout.strip().splitlines()[-1])
        median = statistics.median(seconds)
        rows[name] = {"seconds": spread(seconds), "images_per_second": args.batch_size / median, "peak_gib": memory}
        print(f"{name}: step {describe(seconds, 's')}, {args.batch_size / median:.2f} images/s, peak {memory:.2f} GiB")
    ratio = statistics.median(times["MPDiT-B/4x"]) / statistics.median(times["isotropic B/2"])
    print(f"\nMPDiT-B/4x step time / isotropic (medians): {ratio:.3f}")
    write_result(__file__, {"args": vars(args), "environment": environment(args.device), "models": rows,
                            "ratio": ratio}, args.output_json)  # fmt: skip


if __name__ == "__main__":
    main()
