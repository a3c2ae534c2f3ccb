"""The official-checkpoint converter: config inference, safety, errors, the command line."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from official_reference import OfficialMPDiT, randomize_

from diffusers_mpdit import MPDiTTransformer2DModel
from diffusers_mpdit.convert import (
    ConversionError,
    convert_checkpoint,
    infer_config,
    official_to_diffusers,
    strip_prefixes,
)
from diffusers_mpdit.models.official_layout import load_official_checkpoint


def official_checkpoint(path, seed=0, compiled=False, **kwargs):
    torch.manual_seed(seed)
    ema = randomize_(OfficialMPDiT(**kwargs), seed).state_dict()
    model = randomize_(OfficialMPDiT(**kwargs), seed + 1).state_dict()
    if compiled:
        ema = {f"_orig_mod.{k}": v for k, v in ema.items()}
    args = argparse.Namespace(model="MPDiT-XL/4x", lr=2e-4, results_dir="results")
    torch.save({"model": model, "ema": ema, "opt": {"state": {}}, "args": args}, path)
    return path


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (
            {},
            {"patch_sizes": [4, 2], "depths": [2, 1], "time_embedding_type": "fno", "skip_connections": True},
        ),
        (
            {"levels": 3, "depths": (3, 2, 1), "hidden_size": 48},
            {"patch_sizes": [8, 4, 2], "depths": [3, 2, 1], "num_attention_heads": 16, "attention_head_dim": 3},
        ),
        (
            {"time_embed": "mlp", "skip": False, "joint": True, "num_classes": 7, "class_tokens": 2},
            {"time_embedding_type": "mlp", "skip_connections": False, "out_channels": 8, "num_classes": 7},
        ),
        ({"hidden_size": 768, "depths": (1, 1)}, {"num_attention_heads": 12, "attention_head_dim": 64}),
        ({"input_size": 64, "in_channels": 3, "fno": (16, 8, 32)}, {"sample_size": 64, "in_channels": 3}),
    ],
)
def test_infer_config_from_shapes(kwargs, expected):
    torch.manual_seed(0)
    config = infer_config(OfficialMPDiT(**kwargs).state_dict())
    for key, value in expected.items():
        assert config[key] == value, key
    if kwargs.get("class_tokens"):
        assert config["num_class_tokens"] == kwargs["class_tokens"]
    if kwargs.get("fno"):
        assert (config["fno_width"], config["fno_modes"]) == kwargs["fno"][:2]


def test_convert_checkpoint_writes_safetensors_and_reproduces_reference(tmp_path):
    ckpt = official_checkpoint(tmp_path / "official.pt", compiled=True)
    out = tmp_path / "converted"
    convert_checkpoint(ckpt, out, num_attention_heads=4)
    assert sorted(os.listdir(out)) == ["config.json", "diffusion_pytorch_model.safetensors", "transformer_mpdit.py"]
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no temporary folder left behind
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    # Nor safetensors' 0600: others may read the weights as they may read any file written under this umask.
    assert (out / "diffusion_pytorch_model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask

    model = MPDiTTransformer2DModel.from_pretrained(out)
    reference = OfficialMPDiT()
    reference.load_state_dict(strip_prefixes(torch.load(ckpt, weights_only=False)["ema"]))
    x, t, y = torch.randn(2, 4, 32, 32), torch.rand(2), torch.tensor([3, 10])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y).sample, reference.eval()(x, t, y), rtol=0, atol=2e-6)


def test_weights_choice_picks_model_or_ema(tmp_path):
    ckpt = official_checkpoint(tmp_path / "official.pt")
    saved = torch.load(ckpt, weights_only=False)
    for which in ("ema", "model"):
        loaded, args = load_official_checkpoint(ckpt, which)
        assert torch.equal(loaded["x_embedder.proj.weight"], saved[which]["x_embedder.proj.weight"])
        assert args == vars(saved["args"])
    with pytest.raises(ValueError, match="`weights` must be one of"):
        load_official_checkpoint(ckpt, "opt")


def test_checkpoint_is_loaded_with_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"ema": {}, "args": Evil()}, path)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported global"):
        load_official_checkpoint(path)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = OfficialMPDiT().state_dict()
    del state["upsample_blocks.0.mlp.fc2.bias"]
    state["upsampler.extra.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError) as info:
        official_to_diffusers(state)
    message = str(info.value)
    assert "missing keys (1): ['upsample_blocks.0.mlp.fc2.bias']" in message
    assert "unexpected keys (1): ['upsampler.extra.weight']" in message


def test_not_an_mpdit_checkpoint_is_a_clear_error():
    with pytest.raises(ConversionError, match="missing key 'x_embedder.proj.weight'"):
        official_to_diffusers({"foo": torch.zeros(1)})
    state = OfficialMPDiT().state_dict()
    state["pos_embed"] = state["pos_embed"] + 1
    with pytest.raises(ConversionError, match="`pos_embed` is not the standard 2-D sin-cos table"):
        official_to_diffusers(state)


def test_heads_override_and_invalid_heads():
    state = OfficialMPDiT(hidden_size=64).state_dict()
    assert infer_config(state, num_attention_heads=8)["attention_head_dim"] == 8
    with pytest.raises(ConversionError, match="--num-heads"):
        infer_config(state, num_attention_heads=5)


def test_refuses_to_overwrite_unless_asked(tmp_path):
    ckpt = official_checkpoint(tmp_path / "official.pt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_checkpoint(ckpt, out)
    convert_checkpoint(ckpt, out, overwrite=True)
    assert sorted(os.listdir(out)) == ["config.json", "diffusion_pytorch_model.safetensors", "transformer_mpdit.py"]


MPDIT = str(Path(sys.executable).with_name("mpdit"))  # the console script of the installed package


@pytest.mark.parametrize("command", [[sys.executable, "-m", "diffusers_mpdit", "convert"], [MPDIT, "convert"]])
def test_command_line(tmp_path, command):
    ckpt = official_checkpoint(tmp_path / "official.pt", levels=3, depths=(1, 1, 1))
    out = tmp_path / "cli"
    run = subprocess.run(
        command + ["--checkpoint", str(ckpt), "--output", str(out), "--weights", "model", "--num-heads", "4"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "3-level MPDiT" in run.stdout
    model = MPDiTTransformer2DModel.from_pretrained(out)
    assert list(model.config.patch_sizes) == [8, 4, 2] and model.config.num_attention_heads == 4

    bad = subprocess.run(
        command + ["--checkpoint", str(tmp_path / "nope.pt"), "--output", "x"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "error: `checkpoint`" in bad.stderr and "Traceback" not in bad.stderr


def test_vae_option_assembles_a_complete_pipeline(tmp_path):
    from conftest import tiny_vae

    from diffusers_mpdit import MPDiTPipeline
    from diffusers_mpdit.convert import OFFICIAL_LATENTS_MEAN, OFFICIAL_LATENTS_STD

    ckpt = official_checkpoint(tmp_path / "official.pt", num_classes=1000, input_size=16)
    tiny_vae(latents_mean=None, latents_std=None).save_pretrained(tmp_path / "sd-vae")
    out = tmp_path / "pipeline"
    run = subprocess.run(
        [sys.executable, "-m", "diffusers_mpdit", "convert", "--checkpoint", str(ckpt), "--output", str(out)]
        + ["--num-heads", "4", "--vae", str(tmp_path / "sd-vae")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert {"model_index.json", "transformer", "vae", "scheduler"} <= set(os.listdir(out))
    pipe = MPDiTPipeline.from_pretrained(out)
    assert list(pipe.vae.config.latents_mean) == list(OFFICIAL_LATENTS_MEAN)
    assert list(pipe.vae.config.latents_std) == list(OFFICIAL_LATENTS_STD) and pipe.vae.config.scaling_factor == 1.0
    assert len(pipe.id2label) == 1000 and pipe.get_label_ids("golden retriever") == [207]
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and pipe.scheduler.config.shift == 1.0
    pipe.set_progress_bar_config(disable=True)
    image = pipe(class_labels="golden retriever", num_inference_steps=2).images[0]
    assert image.size == (32, 32)  # latent 16 x VAE factor 2

    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffusers_mpdit",
            "convert",
            "--checkpoint",
            str(ckpt),
            "--output",
            str(tmp_path / "x"),
        ]
        + ["--vae", str(tmp_path / "no-such-vae"), "--num-heads", "4"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert missing.returncode == 2 and "error:" in missing.stderr and "Traceback" not in missing.stderr
    assert not (tmp_path / "x").exists()


# --- from_single_file ----------------------------------------------------------------------------------------------


def official_outputs(ckpt, which, x, t, y):
    reference = OfficialMPDiT()
    reference.load_state_dict(strip_prefixes(torch.load(ckpt, weights_only=False)[which]))
    with torch.no_grad():
        return reference.eval()(x, t, y)


def test_from_single_file_loads_an_official_checkpoint(tmp_path):
    ckpt = official_checkpoint(tmp_path / "official.pt", compiled=True)
    x, t, y = torch.randn(2, 4, 32, 32), torch.rand(2), torch.tensor([3, 10])
    for which in ("ema", "model"):
        kwargs = {} if which == "ema" else {"weights": "model"}
        model = MPDiTTransformer2DModel.from_single_file(ckpt, num_attention_heads=4, **kwargs)
        assert not model.training and model.config.patch_sizes == [4, 2]
        with torch.no_grad():
            out = model(x, t, y).sample
        torch.testing.assert_close(out, official_outputs(ckpt, which, x, t, y), rtol=0, atol=2e-6)
    assert MPDiTTransformer2DModel.from_single_file(ckpt, num_attention_heads=4, dtype=torch.bfloat16).dtype == (
        torch.bfloat16
    )
    # A bare safetensors state dict in the official layout loads the same way.
    from safetensors.torch import save_file

    save_file(strip_prefixes(torch.load(ckpt, weights_only=False)["ema"]), tmp_path / "official.safetensors")
    model = MPDiTTransformer2DModel.from_single_file(tmp_path / "official.safetensors", num_attention_heads=4)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y).sample, official_outputs(ckpt, "ema", x, t, y), rtol=0, atol=2e-6)


def test_from_single_file_downloads_a_hub_file(hub, tmp_path):
    from huggingface_hub import HfApi

    ckpt = official_checkpoint(tmp_path / "official.pt", seed=3)
    api = HfApi(token="hf_alice_write")
    api.create_repo("alice/mpdit-official")
    api.upload_file(path_or_fileobj=str(ckpt), path_in_repo="checkpoints/0400000.pt", repo_id="alice/mpdit-official")
    model = MPDiTTransformer2DModel.from_single_file(
        "https://huggingface.co/alice/mpdit-official/blob/main/checkpoints/0400000.pt",
        num_attention_heads=4,
        cache_dir=tmp_path / "cache",
    )
    x, t, y = torch.randn(1, 4, 32, 32), torch.rand(1), torch.tensor([5])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y).sample, official_outputs(ckpt, "ema", x, t, y), rtol=0, atol=2e-6)
    assert any(path.endswith("/resolve/main/checkpoints/0400000.pt") for _, path in hub.requests)


@pytest.mark.parametrize(
    "link, error, match",
    [
        ("no/such/file.pt", ValueError, "neither a file nor a Hub file URL"),
        ("https://huggingface.co/alice", ValueError, "names no file"),
    ],
)
def test_from_single_file_bad_references(link, error, match):
    with pytest.raises(error, match=match):
        MPDiTTransformer2DModel.from_single_file(link)


def fno_grid_checkpoint(path, grid=48, args=True):
    """An official checkpoint whose FNO samples `grid` points, a setting no tensor shape shows."""
    reference = randomize_(OfficialMPDiT(fno=(32, 16, grid)), 4).eval()
    state = reference.state_dict()
    checkpoint = {"ema": state, "model": state}
    if args:
        # Recorded under the spelling of an argparse flag, not under our config key.
        checkpoint["args"] = argparse.Namespace(model="MPDiT-XL/4x", fno_grid=grid, num_heads=4)
    torch.save(checkpoint, path)
    return reference


def test_from_single_file_reads_settings_from_args_and_takes_overrides(tmp_path):
    reference = fno_grid_checkpoint(tmp_path / "grid48.pt")
    x, t, y = torch.randn(2, 4, 32, 32), torch.rand(2), torch.tensor([3, 10])
    with torch.no_grad():
        expected = reference(x, t, y)

    def output(model):
        with torch.no_grad():
            return model(x, t, y).sample

    model = MPDiTTransformer2DModel.from_single_file(tmp_path / "grid48.pt")
    assert model.config.fno_grid_size == 48 and model.config.num_attention_heads == 4
    torch.testing.assert_close(output(model), expected, rtol=0, atol=2e-6)

    # The same weights as a bare state dict, in memory: nothing records the grid, so the default (32) is wrong...
    state_dict = dict(reference.state_dict())
    wrong = MPDiTTransformer2DModel.from_single_file(state_dict, num_attention_heads=4)
    assert wrong.config.fno_grid_size == 32 and (output(wrong) - expected).abs().max() > 1e-4
    # ...until an override, a config dict or a config folder supplies it.
    folder = tmp_path / "config-folder"
    model.save_pretrained(folder)
    for kwargs in (
        {"fno_grid_size": 48, "num_attention_heads": 4},
        {"config": {"fno_grid_size": 48, "num_attention_heads": 4}},
        {"config": str(folder)},
        {"config": str(folder / "config.json")},
    ):
        loaded = MPDiTTransformer2DModel.from_single_file(state_dict, **kwargs)
        assert loaded.config.fno_grid_size == 48, kwargs
        torch.testing.assert_close(output(loaded), expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"num_classes": 5}, r"`num_classes`=5 disagrees with the checkpoint, whose tensor shapes give 10"),
        ({"depths": [3, 1]}, r"`depths`=\[3, 1\] disagrees with the checkpoint, whose tensor shapes give \[2, 1\]"),
        (
            {"num_attention_heads": 5},
            r"`num_attention_heads` x `attention_head_dim` must equal the checkpoint's width 64",
        ),
        ({"config": {"patch_sizes": [8, 4]}}, r"`patch_sizes`=\[8, 4\] disagrees"),
        ({"fno_grid": 48}, r"Unknown config keys \['fno_grid'\] for MPDiTTransformer2DModel"),
    ],
)
def test_from_single_file_override_that_contradicts_the_checkpoint_is_one_line(tmp_path, overrides, match):
    fno_grid_checkpoint(tmp_path / "grid48.pt")
    with pytest.raises(ConversionError, match=match) as info:
        MPDiTTransformer2DModel.from_single_file(tmp_path / "grid48.pt", **overrides)
    assert "\n" not in str(info.value)


def test_from_single_file_dtype_device_and_quantization(tmp_path):
    reference = fno_grid_checkpoint(tmp_path / "grid48.pt")
    x, t, y = torch.randn(2, 4, 32, 32), torch.rand(2), torch.tensor([3, 10])
    with torch.no_grad():
        expected = reference(x, t, y)

    model = MPDiTTransformer2DModel.from_single_file(tmp_path / "grid48.pt", dtype=torch.bfloat16, device="cpu")
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    assert all(p.dtype == torch.float32 for p in model.time_embed.parameters())  # _keep_in_fp32_modules
    with torch.no_grad():
        out = model(x.bfloat16(), t, y).sample.float()
    assert (torch.linalg.vector_norm(out - expected) / torch.linalg.vector_norm(expected)) < 0.03
    with pytest.raises(ValueError, match="`dtype` must be a torch.dtype"):
        MPDiTTransformer2DModel.from_single_file(tmp_path / "grid48.pt", dtype="bf16")

    pytest.importorskip("optimum.quanto")
    from diffusers import QuantoConfig
    from optimum.quanto import QLinear

    quantized = MPDiTTransformer2DModel.from_single_file(
        tmp_path / "grid48.pt", quantization_config=QuantoConfig(weights_dtype="int8")
    )
    assert isinstance(quantized.transformer_blocks[0].attn.to_q, QLinear)
    assert type(quantized.time_embed.lift) is torch.nn.Linear
    with torch.no_grad():
        out = quantized(x, t, y).sample
    error = torch.linalg.vector_norm(out - expected) / torch.linalg.vector_norm(expected)
    assert 0 < error < 0.03


def damaged_files(folder, tmp_path):
    """A text file, and the first half of a real official .pt and of a real .safetensors state dict."""
    from safetensors.torch import save_file

    text = folder / "notes.pt"
    text.write_text("not a checkpoint\n" * 20)
    full = official_checkpoint(tmp_path / "full.pt")
    save_file(strip_prefixes(torch.load(full, weights_only=False)["ema"]), tmp_path / "full.safetensors")
    files = [text]
    for source in (full, tmp_path / "full.safetensors"):
        data = source.read_bytes()
        half = folder / f"half{source.suffix}"
        half.write_bytes(data[: len(data) // 2])
        files.append(half)
    return files


def test_a_damaged_or_non_checkpoint_file_is_one_clear_error(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    for path in damaged_files(folder, tmp_path):
        for load, args in (
            (MPDiTTransformer2DModel.from_single_file, (str(path),)),
            (convert_checkpoint, (path, tmp_path / "out")),
        ):
            with pytest.raises(ConversionError) as info:
                load(*args)
            message = str(info.value)
            assert message.startswith(f"{str(path)!r} is not a readable checkpoint: the file is damaged"), message
            assert "\n" not in message
            assert isinstance(info.value, OSError)  # as diffusers' from_pretrained raises for such a file
        assert not (tmp_path / "out").exists()


def test_command_line_names_a_file_that_is_not_a_checkpoint_in_one_line(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint\n" * 20)
    run = subprocess.run(
        [sys.executable, "-m", "diffusers_mpdit", "convert", "--checkpoint", str(path), "--output", "x"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    errors = [line for line in run.stderr.splitlines() if line.startswith("mpdit convert: error:")]
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert len(errors) == 1 and f"{str(path)!r} is not a readable checkpoint" in errors[0], run.stderr
