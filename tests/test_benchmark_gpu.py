"""benchmarks/benchmark_gpu.py: a CPU dry run of every section with tiny models (the GPU run itself needs a GPU)."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))


def test_cpu_dry_run_of_every_section(tmp_path):
    from benchmark_gpu import build_models
    from benchmark_model import count_gmacs

    out = tmp_path / "gpu.json"
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "benchmark_gpu.py"), "--device", "cpu", "--preset", "tiny"]
        + ["--batch_size", "2", "--sampling_steps", "2", "--repeats", "1", "--compile_backend", "aot_eager"]
        + ["--output_json", str(out)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    models = ("MPDiT-XL/4x", "DiT-XL/2", "isotropic XL/2")
    assert set(result["train"]) == {f"{m}, {mode}" for m in models for mode in ("eager", "compiled")}
    for row in result["train"].values():
        assert row["images_per_second"] > 0
        assert row["mfu"] is None and row["peak_memory_gib"] is None  # no known peak and no allocator on the CPU
    # Training FLOPs per image: 3 x the forward's (2 x its multiply-adds, attention included).
    dit = build_models("tiny")["DiT-XL/2"].eval()
    expected = 3 * 2e9 * count_gmacs(dit, is_dit=True)
    assert abs(result["train"]["DiT-XL/2, eager"]["train_flops_per_image"] - expected) <= 1e-6 * expected
    assert set(result["sample"]) == {f"{m}, {mode}" for m in models[:2] for mode in ("eager", "compiled")}
    assert result["attention"]["native"]["images_per_second"] > 0
    assert "unavailable" in result["attention"]["xformers"]
    assert "train MPDiT-XL / DiT-XL/2 images/s, eager" in run.stdout


def test_the_flop_counter_gives_the_published_counts():
    # The MFU's numerator: diffusers' DiT-B/2 costs 23.01 GMACs per 256-px image (the paper: 23.02) and the official
    # MPDiT-B/4x 16.17, attention included.
    import torch
    from benchmark_model import build_dit, count_gmacs

    from diffusers_mpdit import MPDiTTransformer2DModel

    torch.manual_seed(0)
    assert abs(count_gmacs(build_dit("DiT-B/2").eval(), is_dit=True) - 23.01) < 0.01
    assert abs(count_gmacs(MPDiTTransformer2DModel.from_preset("MPDiT-B/4x").eval(), is_dit=False) - 16.17) < 0.02
