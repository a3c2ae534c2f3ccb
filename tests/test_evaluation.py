"""Frechet distance, the classifier judge, and the quality benchmark script on a few samples."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import FASHION_MNIST

from diffusers_mpdit import BUNDLED_MODEL
from diffusers_mpdit.evaluation import (
    ClassifierScorer,
    LabelledImages,
    balanced_indices,
    feature_statistics,
    frechet_distance,
)

ROOT = Path(__file__).resolve().parents[1]


def random_spd(dim, rng):
    a = rng.standard_normal((dim, dim))
    return a @ a.T + 0.1 * np.eye(dim)


def test_frechet_distance_of_commuting_gaussians_is_analytic():
    # Diagonal covariances commute: tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (sqrt(s1) - sqrt(s2))^2.
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([3.0, 1.0, 0.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1)) == pytest.approx(0, abs=1e-10)


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    s1, s2 = random_spd(16, rng), random_spd(16, rng)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_feature_statistics_and_shape_errors():
    features = np.random.default_rng(1).standard_normal((50, 3))
    mu, sigma = feature_statistics(features)
    np.testing.assert_allclose(mu, features.mean(0))
    np.testing.assert_allclose(sigma, np.cov(features.T))
    with pytest.raises(ValueError, match="num_samples >= 2"):
        feature_statistics(features[:1])
    with pytest.raises(ValueError, match="shapes do not match"):
        frechet_distance(mu, sigma, mu[:2], sigma[:2, :2])


def test_balanced_indices_cycle_through_classes_without_repeats():
    labels = torch.tensor([0, 1, 2] * 5)
    index = balanced_indices(labels, 9)
    assert labels[index].tolist() == [0, 1, 2] * 3 and len(set(index.tolist())) == 9
    with pytest.raises(ValueError, match="more images of class"):
        balanced_indices(labels, 18)


def test_classifier_scorer_separates_easy_classes():
    # Two classes that differ in brightness: the judge must learn them, and score images by the requested class.
    g = torch.Generator().manual_seed(0)
    images = torch.cat([torch.rand(64, 1, 8, 8, generator=g) - 1, torch.rand(64, 1, 8, 8, generator=g)])
    labels = torch.tensor([0] * 64 + [1] * 64)
    data = LabelledImages(images, labels, ["dark", "light"])
    scorer = ClassifierScorer.fit(data, data, epochs=5, batch_size=16)
    assert scorer.reference(20)["A_real"] == 1.0
    # Mirroring moves only images that are not left-right symmetric.
    symmetric = ClassifierScorer(scorer.classifier, LabelledImages(images + images.flip(-1), labels, data.names), data)
    same = symmetric.reference(20, half_mirrored=True)
    assert same["FD_train_test_half_mirrored"] == pytest.approx(same["FD_train_test"], abs=1e-9)
    lopsided = images.clone()
    lopsided[..., :4] = -1  # the left half dark in every image
    moved = ClassifierScorer(scorer.classifier, LabelledImages(lopsided, labels, data.names), data)
    noisy_too = moved.reference(20, noise_levels=(0.05,), half_mirrored=True)
    moved = moved.reference(20, half_mirrored=True)
    assert moved["FD_train_test_half_mirrored"] > moved["FD_train_test"] + 1e-3
    # Which half is mirrored must not depend on whether noise was drawn first.
    assert noisy_too["FD_train_test_half_mirrored"] == moved["FD_train_test_half_mirrored"]
    swapped = scorer.score_images(images[:20], torch.ones(20, dtype=torch.long))
    assert swapped["A_gen"] == 0.0 and swapped["per_class"]["light"] == 0.0
    right = scorer.score_images(images, labels)
    assert right["A_gen"] == 1.0 and right["FD"] < swapped["FD"]


def write_fake_fashion(folder: Path, per_class: int):
    from datasets import ClassLabel, Dataset, Features, Image

    rng = np.random.default_rng(0)
    features = Features({"image": Image(), "label": ClassLabel(names=FASHION_MNIST)})
    for split in ("train", "test"):
        rows = {"image": [], "label": []}
        for c in range(10):
            for _ in range(per_class):
                rows["image"].append({"bytes": png(rng, c), "path": None})
                rows["label"].append(c)
        Dataset.from_dict(rows, features=features).to_parquet(str(folder / f"{split}.parquet"))


def png(rng, c):
    import io

    from PIL import Image

    pixels = np.clip(rng.normal(25 * c, 20, (28, 28)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_quality_benchmark_runs_on_a_few_samples(tmp_path):
    write_fake_fashion(tmp_path, per_class=3)
    out = tmp_path / "quality.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "benchmark_quality.py"), "--data", str(tmp_path)]
        + ["--num_samples", "10", "--num_inference_steps", "2", "--classifier_epochs", "1", "--output_json", str(out)]
        + ["--guidance_interval", "0.1", "0.6"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["generated"]["num_samples"] == 10 and set(result["generated"]["per_class"]) == set(FASHION_MNIST)
    assert 0 <= result["generated"]["A_gen"] <= 1 and result["generated"]["FD"] > 0
    # Without --guidance_scale the model's saved default is used, and recorded.
    saved = json.loads((Path(BUNDLED_MODEL) / "model_index.json").read_text())["default_guidance_scale"]
    assert result["sampling"]["guidance_scale"] == saved and result["sampling"]["guidance_interval"] == [0.1, 0.6]
    assert "A_gen" in run.stdout and "x A_real" in run.stdout
    assert f"euler, 2 steps, guidance {saved:g} for t in [0.1, 0.6], seed 0" in run.stdout
    # The card, rendered from that JSON into a copy of the bundled model, gives the settings that were measured.
    model = shutil.copytree(BUNDLED_MODEL, tmp_path / "model")
    card = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "benchmark_quality.py"), "--card_from_json", str(out)]
        + ["--model", str(model)],
        capture_output=True,
        text=True,
    )
    assert card.returncode == 0, card.stderr[-3000:]
    text = (model / "README.md").read_text()
    assert "--num_samples 10 --num_inference_steps 2 --guidance_interval 0.1 0.6" in text
    assert "guidance_interval=(0.1, 0.6)" in text


def test_ablation_benchmark_runs_two_configurations_and_two_seeds_end_to_end(tmp_path):
    data, out, results = tmp_path / "data", tmp_path / "runs", tmp_path / "results"
    data.mkdir()
    results.mkdir()
    write_fake_fashion(data, per_class=2)
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "benchmark_ablation.py"), "--data", str(data)]
        + ["--output_dir", str(out), "--results_dir", str(results), "--configs", "mpdit", "isotropic"]
        + ["--seeds", "0", "1", "--width", "32", "--steps", "4", "--batch_size", "4", "--points", "2"]
        + ["--num_samples", "10", "--sampling_steps", "1", "--classifier_epochs", "1"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads((results / "benchmark_ablation.json").read_text())
    assert set(result["summary"]) == {"mpdit", "isotropic"}
    for name, curve in result["summary"].items():
        assert [point["step"] for point in curve] == [2, 4] and all(point["seeds"] == 2 for point in curve)
        # The mean over seeds is the mean of the runs' own figures.
        own = [r["FD"] for r in result["runs"] if r["config"] == name and r["step"] == 4]
        assert curve[-1]["FD"]["mean"] == pytest.approx(np.mean(own)) and len(own) == 2
        assert curve[-1]["FD"]["std"] == pytest.approx(np.std(own, ddof=1))
    # Every judged checkpoint scored the requested number of samples.
    assert {r["num_samples"] for r in result["runs"]} == {10}
    assert result["claims"]["isotropic"]["equal steps"]["FD"]["verdict"] in ("supports", "contradicts", "cannot tell")
    assert (results / "benchmark_ablation.png").stat().st_size > 10_000
