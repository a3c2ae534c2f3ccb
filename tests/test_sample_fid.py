"""examples/sample_fid.py: the official samplers, the model's saved guidance, world-size independent, resumable,
ADM-format output."""

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_in_process, tiny_pipeline
from test_samplers import hand_ode, hand_sde
from test_training import launch

from diffusers_mpdit import MPDiTPipeline
from diffusers_mpdit.loaders import NewClasses

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
    flags = {"label_sampling": "random"}
    launch(SCRIPT, sample_args(model_dir, tmp_path / "one", **flags))
    two = launch(SCRIPT, sample_args(model_dir, tmp_path / "two", **flags), launcher="torchrun", nproc=2)
    assert "over 2 processes" in two.stdout and "images/s" in two.stdout
    images, labels = load_npz(tmp_path / "one")
    assert images.dtype == np.uint8 and images.shape == (10, 16, 16, 3)
    # Random labels: each image's class hashes the seed (3) and its index, the same on any number of processes.
    digests = [hashlib.sha256(f"mpdit-label,3,{i}".encode()).digest() for i in range(10)]
    assert labels.tolist() == [int.from_bytes(d[:8], "little") % 10 for d in digests]
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
    resumed = launch(SCRIPT, sample_args(model_dir, tmp_path / "two", **flags))
    assert "2 of this process's 3 batches already done" in resumed.stdout
    assert {i: (folder / f"{i:06d}.png").stat().st_mtime_ns for i in range(8)} == kept
    np.testing.assert_array_equal(load_npz(tmp_path / "two")[0], images)
    assert not [p for p in os.listdir(tmp_path / "two") if p.startswith(".")]  # no temporary files left


@pytest.fixture(scope="module")
def model_with_defaults(tmp_path_factory):
    """A model that saves guidance 2.5 for t <= 0.6 as its default, as the bundled one does."""
    pipe = tiny_pipeline(with_vae=False, in_channels=3, sample_size=16)
    path = tmp_path_factory.mktemp("model") / "with-defaults"
    MPDiTPipeline(pipe.transformer, None, pipe.scheduler, pipe.id2label, 2.5, (0.0, 0.6)).save_pretrained(path)
    return path


@pytest.mark.parametrize("sampler", ["ode", "sde"])
def test_first_images_are_the_official_loops_at_the_models_saved_guidance(model_with_defaults, tmp_path, sampler):
    # No guidance flags: the model's saved 2.5 on [0, 0.6] applies (a forced 1.5 would fail), and is recorded.
    args = sample_args(model_with_defaults, tmp_path, num_samples=4, batch_size=3, num_inference_steps=5, seed=8)
    launch(SCRIPT, args + ["--scheduler", sampler, "--num_classes", "3"])
    settings = json.loads((tmp_path / "sampling_settings.json").read_text())
    assert settings["scheduler"] == sampler and settings["steps"] == 5
    assert settings["guidance_scale"] == 2.5 and settings["guidance_interval"] == [0.0, 0.6]
    images, labels = load_npz(tmp_path, "samples_4x16x16x3.npz")
    assert labels.tolist() == [0, 1, 2, 0]
    pipe = MPDiTPipeline.from_pretrained(model_with_defaults)
    hand = hand_ode if sampler == "ode" else hand_sde
    for index in (0, 3):  # the first image of each of the two batches
        label = torch.tensor([index % 3])
        x = hand(pipe, label, [8 + index], 5, 2.5, interval=(0.0, 0.6), shape=(3, 16, 16))
        expected = ((x[0] / 2 + 0.5).clamp(0, 1) * 255).round().permute(1, 2, 0).numpy()
        # A batch of three against one image alone: equal up to a grey level of rounding.
        assert np.abs(expected - images[index]).max() <= 1


def test_refuses_to_mix_settings(model_dir, tmp_path):
    launch(SCRIPT, sample_args(model_dir, tmp_path / "out", num_samples=2, batch_size=2))
    run = launch(
        SCRIPT, sample_args(model_dir, tmp_path / "out", num_samples=2, batch_size=2, guidance_scale=3.0), check=False
    )
    assert run.returncode != 0 and "guidance_scale: 1.5 -> 3.0" in run.stderr


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("num_samples", 0, "argument --num_samples: expected an integer >= 1, got 0"),
        ("batch_size", "x", "argument --batch_size: expected an integer >= 1, got 'x'"),
        ("num_classes", 11, "--num_classes 11: the model has 10 classes"),
        ("guidance_interval", "0.8 0.2", "--guidance_interval must be (low, high) with 0 <= low <= high <= 1"),
        # torch seeds CPU generators with 32 bits: seed + index must not wrap around.
        ("seed", 2**32 - 1, "--seed must be at most 2**32 - 2 for 2 images"),
        ("scheduler", "ddim", "--scheduler must be one of euler"),
        ("diffusion_form", "linear", "--diffusion_form must be one of constant, SBDM"),
        ("last_step_size", "0.6", "--last_step_size must be a number in (0, 0.5)"),
        ("label_sampling", "stratified", "argument --label_sampling: invalid choice: 'stratified'"),
        ("lora", "/no/lora", "--lora '/no/lora': no such file or folder"),
        ("lora_scale", "nan", "argument --lora_scale: expected a finite number, got 'nan'"),
    ],
)
def test_bad_arguments(model_dir, tmp_path, capsys, flag, value, message):
    import sample_fid

    args = sample_args(model_dir, tmp_path / "out", num_samples=2)
    if flag == "guidance_interval":
        args += ["--guidance_interval", *value.split()]
    else:
        args += [f"--{flag}", str(value)]
    if flag in ("diffusion_form", "last_step_size"):
        args += ["--scheduler", "sde"]
    if flag == "num_samples":  # one case as a user runs it
        run = launch(SCRIPT, args, launcher="python", check=False)
        code, stderr = run.returncode, run.stderr
    else:
        code, _, stderr = run_in_process(sample_fid.main, args, capsys)
    assert code != 0 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr[-2000:]
    assert not (tmp_path / "out" / "images").exists() or not os.listdir(tmp_path / "out" / "images")


def test_the_bundled_model_by_name_and_one_identity_for_every_spelling_of_a_path(model_dir, tmp_path, monkeypatch):
    import sample_fid

    from diffusers_mpdit import BUNDLED_MODEL

    args, _ = sample_fid.parse_args(["--output_dir", str(tmp_path / "out")])
    assert args.model == "bundled"
    monkeypatch.chdir(tmp_path)
    assert sample_fid.load_pipeline("bundled", "cpu").transformer.config.num_classes == 10
    # The same folder as a relative path, an absolute one, and through a symlink: one setting on resume.
    os.symlink(model_dir, tmp_path / "link")
    relative = os.path.relpath(model_dir, tmp_path)
    spellings = {sample_fid.model_identity(m) for m in (relative, str(model_dir), str(tmp_path / "link"), "./link")}
    assert spellings == {str(model_dir.resolve())}
    assert sample_fid.model_identity(BUNDLED_MODEL) == sample_fid.model_identity("bundled") == "bundled"
    assert sample_fid.model_identity("org/name") == "org/name"  # a Hub id stays as given


def test_a_lora_is_recorded_in_the_settings_and_a_resume_without_it_is_refused(model_dir, tmp_path, capsys):
    import sample_fid
    from test_lora import save_lora, with_adapter

    args = sample_args(model_dir, tmp_path / "out", num_samples=4, batch_size=4)
    code, _, err = run_in_process(sample_fid.main, [*args, "--lora", model_dir], capsys)  # a pipeline, not a LoRA
    assert code != 0 and f"--lora '{model_dir}': cannot load it" in err and len(err.strip().splitlines()) == 1

    pipe = MPDiTPipeline.from_pretrained(model_dir)
    with_adapter(pipe.transformer)
    ids = pipe.add_classes(["owl"])
    save_lora(pipe, tmp_path / "lora", NewClasses.from_pipeline(pipe, ids[0]))
    code, _, err = run_in_process(sample_fid.main, [*args, "--lora", tmp_path / "lora", "--lora_scale", "0.5"], capsys)
    assert code == 0, err
    settings = json.loads((tmp_path / "out" / "sampling_settings.json").read_text())
    assert settings["lora"] == str((tmp_path / "lora").resolve()) and settings["lora_scale"] == 0.5
    assert settings["num_classes"] == 11  # the LoRA's class joins the model's
    code, _, err = run_in_process(sample_fid.main, args, capsys)
    assert code != 0 and f"lora: '{(tmp_path / 'lora').resolve()}' -> None" in err


def test_a_cache_is_recorded_in_the_settings_and_a_resume_without_it_is_refused(model_dir, tmp_path, capsys):
    import sample_fid

    args = sample_args(model_dir, tmp_path / "out", num_samples=4, batch_size=4, num_inference_steps=4)
    code, _, err = run_in_process(sample_fid.main, [*args, "--cache", "level:0"], capsys)
    assert code != 0 and "--cache 'level:0'" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_in_process(sample_fid.main, [*args, "--cache", "level:2"], capsys)
    assert code == 0, err
    settings = json.loads((tmp_path / "out" / "sampling_settings.json").read_text())
    assert settings["cache"] == "level:2"
    code, _, err = run_in_process(sample_fid.main, args, capsys)
    assert code != 0 and "cache: 'level:2' -> None" in err


def test_help_shows_the_commands_as_written(capsys):
    import sample_fid

    with pytest.raises(SystemExit):
        sample_fid.parse_args(["-h"])
    # A backslash-newline in the docstring would join the example's two lines into one.
    assert "--output_dir samples/ \\\n" in capsys.readouterr().out
