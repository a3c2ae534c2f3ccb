"""examples/sample_fid.py: world-size independent, resumable, ADM-format output."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_pipeline
from test_training import launch

SCRIPT = str(Path(__file__).parents[1] / "examples" / "sample_fid.py")
sys.path.insert(0, str(Path(SCRIPT).parent))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny-rgb"
    tiny_pipeline(with_vae=False, in_channels=3, sample_size=16).save_pretrained(path)
    return path


def sample_args(model_dir, output_dir, **overrides):
    flags = {"num_samples": 10, "batch_size": 4, "num_inference_steps": 2, "seed": 3, **overrides}
    args = ["--model", str(model_dir), "--output_dir", str(output_dir)]
    for name, value in flags.items():
        args += [f"--{name}", str(value)]
    return args


def load_npz(output_dir, name="samples_10x16x16x3.npz"):
    with np.load(output_dir / name) as data:
        return data["arr_0"], data["arr_1"]


def test_same_images_on_one_and_two_processes_and_resume(model_dir, tmp_path):
    launch(SCRIPT, sample_args(model_dir, tmp_path / "one"))
    two = launch(SCRIPT, sample_args(model_dir, tmp_path / "two"), launcher="torchrun", nproc=2)
    assert "over 2 processes" in two.stdout and "images/s" in two.stdout
    images, labels = load_npz(tmp_path / "one")
    assert images.dtype == np.uint8 and images.shape == (10, 16, 16, 3)
    assert labels.tolist() == [i % 10 for i in range(10)]  # the tiny model has 10 classes: balanced
    assert images.std() > 10  # real samples, not a blank
    two_images, two_labels = load_npz(tmp_path / "two")
    np.testing.assert_array_equal(two_images, images)
    np.testing.assert_array_equal(two_labels, labels)

    # Interrupted run: two images of the last batch are missing. Only that batch is sampled again.
    folder = tmp_path / "two" / "images"
    for index in (8, 9):
        (folder / f"{index:06d}.png").unlink()
    os.remove(tmp_path / "two" / "samples_10x16x16x3.npz")
    kept = {i: (folder / f"{i:06d}.png").stat().st_mtime_ns for i in range(8)}
    resumed = launch(SCRIPT, sample_args(model_dir, tmp_path / "two"))
    assert "2 of this process's 3 batches already done" in resumed.stdout
    assert {i: (folder / f"{i:06d}.png").stat().st_mtime_ns for i in range(8)} == kept
    np.testing.assert_array_equal(load_npz(tmp_path / "two")[0], images)
    assert not [p for p in os.listdir(tmp_path / "two") if p.startswith(".")]  # no temporary files left


def test_each_image_is_the_pipeline_sample_of_its_own_seed(model_dir, tmp_path):
    from sample_fid import image_generator

    from diffusers_mpdit import MPDiTPipeline

    launch(SCRIPT, sample_args(model_dir, tmp_path / "out", num_samples=6, num_classes=3, batch_size=3))
    images, labels = load_npz(tmp_path / "out", "samples_6x16x16x3.npz")
    assert labels.tolist() == [0, 1, 2, 0, 1, 2]
    pipe = MPDiTPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    for index in (0, 4):
        alone = pipe(
            class_labels=[index % 3], num_inference_steps=2, generator=[image_generator(3, index)], output_type="np"
        ).images[0]
        alone = (np.clip(alone, 0, 1) * 255).round()
        # Sampled alone rather than in a batch of three: equal up to float rounding.
        assert np.abs(alone - images[index]).max() <= 1


def test_refuses_to_mix_settings(model_dir, tmp_path):
    launch(SCRIPT, sample_args(model_dir, tmp_path / "out", num_samples=2, batch_size=2))
    run = launch(
        SCRIPT, sample_args(model_dir, tmp_path / "out", num_samples=2, batch_size=2, guidance_scale=3.0), check=False
    )
    assert run.returncode != 0 and "guidance_scale: 1.5 -> 3.0" in run.stderr


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("num_samples", 0, "--num_samples must be >= 1"),
        ("num_classes", 11, "--num_classes 11: the model has 10 classes"),
        ("guidance_interval", "0.8 0.2", "--guidance_interval must be LOW <= HIGH"),
        # torch seeds CPU generators with 32 bits: seed + index must not wrap around.
        ("seed", 2**32 - 1, "--seed must be in [0, 2**32 - num_samples]"),
    ],
)
def test_bad_arguments(model_dir, tmp_path, flag, value, message):
    args = sample_args(model_dir, tmp_path / "out", num_samples=2)
    if flag == "guidance_interval":
        args += ["--guidance_interval", *value.split()]
    else:
        args += [f"--{flag}", str(value)]
    run = launch(SCRIPT, args, launcher="python", check=False)
    assert run.returncode != 0 and message in run.stderr, run.stderr[-2000:]
    assert not (tmp_path / "out" / "images").exists() or not os.listdir(tmp_path / "out" / "images")
