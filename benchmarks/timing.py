"""What the timing benchmarks share: alternating repeats, min / median / max, and the JSON each writes beside itself."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from diffusers_mpdit.atomic import atomic_path


def time_alternating(
    fns: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None] = lambda: None, warmup: int = 2
) -> dict[str, list[float]]:
    """Seconds per call of each function, the functions taking turns so that they share the machine's conditions.

    Args:
        fns (`dict`): Name -> a function to time.
        repeats (`int`): Timed calls of each.
        sync (`Callable`): Waits for the device (e.g. `torch.cuda.synchronize`).
        warmup (`int`): Untimed calls of each first (compilation, allocator caches).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def spread(seconds: list[float]) -> dict[str, float]:
    """`min`, `median` and `max` of a list of timings, and every timing."""
    return {"min": min(seconds), "median": statistics.median(seconds), "max": max(seconds), "all": list(seconds)}


def describe(seconds: list[float], unit: str = "ms") -> str:
    """`median unit (min ..., max ...)` of a list of timings, in ms or s."""
    scale, digits = (1000, 0) if unit == "ms" else (1, 3)
    s = spread(seconds)
    return (
        f"{s['median'] * scale:.{digits}f} {unit} "
        f"(min {s['min'] * scale:.{digits}f}, max {s['max'] * scale:.{digits}f})"
    )


def environment(device: str = "cpu") -> dict:
    """The machine a result was measured on."""
    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "device": device,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_result(script: str, result: dict, path: str | None = None) -> Path:
    """Writes `result` as JSON, by default beside the benchmark (`benchmark_x.py` -> `benchmark_x.json`)."""
    target = Path(path) if path else Path(script).with_suffix(".json")
    with atomic_path(target) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2))
    print(f"wrote {target}")
    return target
