"""Peak memory of `mpdit evaluate`'s streamed metrics against the whole-in-memory computation, by image count.

    python benchmarks/benchmark_evaluate_memory.py [--counts 5000 20000] [--side 32]

For each count N it writes N random samples and N random reference images (N x side x side x 3 uint8, `.npz`), then
scores them in a fresh process, twice: with `diffusers_mpdit.evaluation.adm.evaluate` (streamed) and with the
computation it replaced (both arrays loaded whole, every feature kept, precision and recall on whole rows of
distances). Each process reports its peak resident memory (`ru_maxrss`). The network is a stand-in with the TF
Inception's feature sizes (2048 pool, 2023 spatial, 1008 softmax): fixed random projections of the pixels, so that
20,000 images take minutes rather than hours on a CPU. Its memory is one batch's whatever N is, so the growth
measured is that of the code around it. Writes `benchmark_evaluate_memory.json` beside this script.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

POOL, SPATIAL, CLASSES = 2048, 2023, 1008


class ProjectionInception:
    """The Inception network's interface and feature sizes, computed by fixed random projections of the pixels."""

    def __init__(self, pixels: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.pool = torch.randn(pixels, POOL, generator=g) / pixels**0.5
        self.spatial = torch.randn(pixels, SPATIAL, generator=g) / pixels**0.5
        self.logits = torch.randn(POOL, CLASSES, generator=g) * 0.1

    def __call__(self, images: np.ndarray) -> dict[str, torch.Tensor]:
        x = torch.as_tensor(np.asarray(images)).float().flatten(1) / 255
        pool = torch.relu(x @ self.pool)
        return {
            "pool": pool,
            "spatial": x @ self.spatial,
            "softmax": torch.softmax(pool.double() @ self.logits.double(), 1),
        }


def write_set(path: Path, count: int, side: int, seed: int) -> None:
    from diffusers_mpdit.evaluation.batches import NpzWriter

    rng = np.random.default_rng(seed)
    writer = NpzWriter(str(path), "arr_0", (count, side, side, 3))
    for start in range(0, count, 1000):
        writer.write(rng.integers(0, 256, size=(min(1000, count - start), side, side, 3), dtype=np.uint8))
    writer.close()


def streamed(samples: str, reference: str, pixels: int) -> dict:
    from diffusers_mpdit.evaluation.adm import evaluate
    from diffusers_mpdit.evaluation.batches import open_images

    return evaluate(ProjectionInception(pixels), open_images(samples), open_images(reference), batch_size=50)


def whole_in_memory(samples: str, reference: str, pixels: int) -> dict:
    from diffusers_mpdit.evaluation.adm import inception_score, precision_recall
    from diffusers_mpdit.evaluation.frechet import feature_statistics, frechet_distance

    extractor = ProjectionInception(pixels)
    features = {}
    for name, path in (("samples", samples), ("reference", reference)):
        with np.load(path) as data:
            images = data["arr_0"]
        parts = [extractor(images[i : i + 50]) for i in range(0, len(images), 50)]
        features[name] = {k: np.concatenate([p[k].double().numpy() for p in parts]) for k in parts[0]}
    fake, real = features["samples"], features["reference"]
    precision, recall = precision_recall(real["pool"], fake["pool"], block_size=max(len(real["pool"]), 10000))
    return {
        "fid": frechet_distance(*feature_statistics(fake["pool"]), *feature_statistics(real["pool"])),
        "sfid": frechet_distance(*feature_statistics(fake["spatial"]), *feature_statistics(real["spatial"])),
        "inception_score": inception_score(fake["softmax"]),
        "precision": precision,
        "recall": recall,
    }


def child(args) -> None:
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    run = streamed if args.child == "streamed" else whole_in_memory
    metrics = run(args.samples, args.reference, args.side * args.side * 3)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(json.dumps({"metrics": metrics, "peak_rss_mb": peak_mb, "seconds": time.perf_counter() - start}))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", type=int, nargs="+", default=[5000, 20000], help="images per set (samples = reference)")
    p.add_argument("--side", type=int, default=32, help="image side in pixels (default 32)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of each scoring process (default 2)")
    p.add_argument("--output_json", default=str(Path(__file__).with_suffix(".json")), help="where to write results")
    p.add_argument("--child", choices=["streamed", "in-memory"], help=argparse.SUPPRESS)
    p.add_argument("--samples", help=argparse.SUPPRESS)
    p.add_argument("--reference", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return {}

    rows = []
    with tempfile.TemporaryDirectory(prefix="mpdit-memory-") as folder:
        for count in args.counts:
            samples, reference = Path(folder) / f"samples-{count}.npz", Path(folder) / f"reference-{count}.npz"
            write_set(samples, count, args.side, seed=1)
            write_set(reference, count, args.side, seed=2)
            row = {"images": count}
            for mode in ("streamed", "in-memory"):
                command = [sys.executable, __file__, "--child", mode, "--samples", str(samples)]
                command += ["--reference", str(reference), "--side", str(args.side), "--threads", str(args.threads)]
                run = subprocess.run(command, capture_output=True, text=True, check=True)
                row[mode] = json.loads(run.stdout.strip().splitlines()[-1])
                print(f"{count} images, {mode}: peak RSS {row[mode]['peak_rss_mb']:.0f} MB, "
                      f"{row[mode]['seconds']:.0f} s")  # fmt: skip
            row["largest_metric_difference"] = max(
                abs(row["streamed"]["metrics"][k] - row["in-memory"]["metrics"][k])
                for k in ("fid", "sfid", "inception_score", "precision", "recall")
            )
            rows.append(row)
            Path(samples).unlink()
            Path(reference).unlink()
    first, last = rows[0], rows[-1]
    for mode in ("streamed", "in-memory"):
        growth = last[mode]["peak_rss_mb"] / first[mode]["peak_rss_mb"]
        print(f"{mode}: peak RSS at {last['images']} images = {growth:.2f} x at {first['images']}")
    print(f"largest metric difference, streamed vs in memory: {max(r['largest_metric_difference'] for r in rows):.2e}")
    result = {
        "args": {k: v for k, v in vars(args).items() if k not in ("child", "samples", "reference")},
        "rows": rows,
    }
    from diffusers_mpdit.atomic import atomic_path

    with atomic_path(args.output_json) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
