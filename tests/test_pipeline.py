"""MPDiTPipeline: components, call, schedulers, loading and saving, bad input."""

import io
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import CLASS_NAMES, tiny_pipeline, tiny_vae
from diffusers import (
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from PIL import Image

import diffusers_mpdit
from diffusers_mpdit import (
    MPDiTPipeline,
    MPDiTTransformer2DModel,
    denormalize_latents,
    normalize_latents,
    official_euler_sigmas,
)
from diffusers_mpdit.data import imagenet1k_id2label
from diffusers_mpdit.pipelines import ClassNames


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


class SpyTransformer(MPDiTTransformer2DModel):
    """The real model, recording the batch, flow times and labels of every call."""

    def forward(self, hidden_states, timestep, class_labels=None, return_dict=True):
        self.calls.append(
            (hidden_states.shape[0], timestep.clone(), None if class_labels is None else class_labels.clone())
        )
        return super().forward(hidden_states, timestep, class_labels, return_dict)


class OracleTransformer(MPDiTTransformer2DModel):
    """Returns the exact velocity towards a known sample `target`: v = (x_t - x0) / t."""

    def forward(self, hidden_states, timestep, class_labels=None, return_dict=True):
        v = (hidden_states - self.target) / timestep.reshape(-1, 1, 1, 1).to(hidden_states.dtype)
        return Transformer2DModelOutput(sample=v) if return_dict else (v,)


def with_transformer(pipe, cls, **attrs):
    model = cls.from_config(pipe.transformer.config).eval()
    model.load_state_dict(pipe.transformer.state_dict())
    for key, value in attrs.items():
        setattr(model, key, value)
    pipe.transformer = model
    return model


# --- components and latent normalisation -------------------------------------------------------------------------


def test_latent_normalisation_uses_mean_std_or_shift_scale():
    z = torch.randn(2, 4, 3, 3)
    vae = tiny_vae()
    mean = torch.tensor(vae.config.latents_mean).view(1, 4, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 4, 1, 1)
    torch.testing.assert_close(normalize_latents(z, vae.config), (z - mean) / std)
    torch.testing.assert_close(denormalize_latents(normalize_latents(z, vae.config), vae.config), z)
    sd = tiny_vae(latents_mean=None, latents_std=None)
    sd.register_to_config(scaling_factor=0.18215, shift_factor=0.1)
    torch.testing.assert_close(normalize_latents(z, sd.config), (z - 0.1) * 0.18215)
    torch.testing.assert_close(denormalize_latents(normalize_latents(z, sd.config), sd.config), z)
    assert normalize_latents(z, None) is z and denormalize_latents(z, None) is z


def test_components_and_decode_through_the_vae_statistics():
    pipe = tiny_pipeline()
    assert isinstance(pipe, DiffusionPipeline)
    assert set(pipe.components) == {"transformer", "vae", "scheduler"}
    latents = pipe(class_labels=[1, 2], num_inference_steps=2, generator=gen(), output_type="latent").images
    images = pipe(class_labels=[1, 2], num_inference_steps=2, generator=gen(), output_type="pt").images
    with torch.no_grad():
        decoded = pipe.vae.decode(denormalize_latents(latents, pipe.vae.config)).sample
    torch.testing.assert_close(images, (decoded / 2 + 0.5).clamp(0, 1), rtol=1e-5, atol=1e-5)
    assert images.shape == (2, 3, 16, 16)  # sample_size 8 x VAE factor 2


def test_pixel_space_pipeline_without_vae(tmp_path):
    pipe = tiny_pipeline(with_vae=False, in_channels=1, sample_size=16)
    assert pipe.vae is None and pipe.vae_scale_factor == 1
    images = pipe(class_labels=[0, 1, 2], num_inference_steps=2, generator=gen()).images
    assert [im.size for im in images] == [(16, 16)] * 3 and images[0].mode == "L"
    pipe.save_pretrained(tmp_path)
    loaded = MPDiTPipeline.from_pretrained(tmp_path)
    assert loaded.vae is None
    again = loaded(class_labels=[0, 1, 2], num_inference_steps=2, generator=gen()).images
    assert all(np.array_equal(np.array(a), np.array(b)) for a, b in zip(images, again))


# --- class labels ------------------------------------------------------------------------------------------------


def test_class_labels_accept_ids_lists_tensors_names_and_synonyms():
    pipe = tiny_pipeline()
    spy = with_transformer(pipe, SpyTransformer, calls=[])
    cases = [(3, [3]), ("dress", [3]), ([3, 7], [3, 7]), (torch.tensor([3, 7]), [3, 7]), (np.array([3, 7]), [3, 7])]
    cases += [(["dress", "trainer"], [3, 7]), (["dress", 7], [3, 7]), ([[3], [7]], [3, 7])]
    for labels, expected in cases:
        spy.calls.clear()
        pipe(class_labels=labels, num_inference_steps=1, guidance_scale=1.0, output_type="latent")
        assert spy.calls[0][2].tolist() == expected, labels
    assert pipe.labels["sneaker"] == 7 and pipe.labels["trainer"] == 7
    assert pipe.get_label_ids(["Ankle Boot", "T-shirt"]) == [9, 0]  # case-insensitive fallback


def test_unknown_and_ambiguous_names():
    pipe = tiny_pipeline(num_classes=11)
    with pytest.raises(ValueError, match=r"`class_labels`: unknown class name 'sandals'; closest: 'sandal'"):
        pipe(class_labels="sandals")
    with pytest.raises(ValueError, match=r"class name 'trainer' is ambiguous: .*7 \(sneaker, trainer\); 10"):
        pipe.get_label_ids("trainer")


def test_null_class_comes_from_the_transformer_config():
    pipe = tiny_pipeline(num_classes=7)
    spy = with_transformer(pipe, SpyTransformer, calls=[])
    pipe(class_labels=[1, 2], num_inference_steps=2, guidance_scale=2.0, output_type="latent")
    batch, _, labels = spy.calls[0]
    assert batch == 4 and labels.tolist() == [1, 2, 7, 7]  # one forward of [cond; uncond]


@pytest.mark.parametrize("labels", [[10], 10, [1, 10], torch.tensor([10]), np.array([3, 10])])
def test_the_null_class_is_refused_as_a_label_as_the_cli_refuses_it(labels):
    pipe = tiny_pipeline()  # 10 classes: id 10 is the null class, guidance's unconditional input
    spy = with_transformer(pipe, SpyTransformer, calls=[])
    # What `mpdit generate --class 10` says after "--class: ", from the CLI's own call.
    with pytest.raises(ValueError) as cli:
        ClassNames(pipe.id2label, 10).ids(["10"], allow_null=False, parse_digits=True)
    assert str(cli.value) == "class id 10 is out of range: ids run from 0 to 9"
    with pytest.raises(ValueError, match=re.escape(f"`class_labels`: {cli.value} (10 is the null class")) as info:
        pipe(class_labels=labels, num_inference_steps=1, output_type="latent")
    assert "`guidance_scale=0`" in str(info.value) and "\n" not in str(info.value)
    assert spy.calls == []  # refused before sampling


def test_guidance_scale_zero_samples_the_unconditional_velocity():
    pipe = tiny_pipeline()
    x = torch.randn(2, 4, 8, 8, generator=gen(5))
    out = pipe(class_labels=[1, 6], num_inference_steps=3, guidance_scale=0.0, latents=x, output_type="latent").images
    # Euler by hand on the transformer's own unconditional prediction (no labels: the null class), no guidance formula.
    expected, sigmas = x, pipe.scheduler.sigmas.tolist()
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        with torch.no_grad():
            v = pipe.transformer(expected, torch.full((2,), sigma), None).sample
        expected = expected + (sigma_next - sigma) * v
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    other = pipe(class_labels=[3, 3], num_inference_steps=3, guidance_scale=0.0, latents=x, output_type="latent")
    torch.testing.assert_close(other.images, out, rtol=1e-5, atol=1e-5)  # whatever the labels


def test_imagenet_labels_ship_with_the_package():
    labels = imagenet1k_id2label()
    assert len(labels) == 1000 and labels[207] == "golden retriever" and labels[0] == "tench, Tinca tinca"


# --- the call ----------------------------------------------------------------------------------------------------


def test_guidance_interval_limits_the_unconditional_half():
    pipe = tiny_pipeline()
    spy = with_transformer(pipe, SpyTransformer, calls=[])
    pipe(
        class_labels=[1], num_inference_steps=4, guidance_scale=3.0, guidance_interval=(0.3, 0.7), output_type="latent"
    )
    ts = [round(float(t[0]), 3) for _, t, _ in spy.calls]
    assert ts == [1.0, 0.667, 0.334, 0.001]
    assert [b for b, _, _ in spy.calls] == [1, 2, 2, 1]


def test_saved_default_guidance_applies_when_a_call_passes_none(tmp_path):
    tiny_pipeline().save_pretrained(tmp_path / "plain")
    # Set the way the bundled model's train_command.sh sets them: from_pretrained keywords, then save.
    pipe = MPDiTPipeline.from_pretrained(
        tmp_path / "plain", default_guidance_scale=3.0, default_guidance_interval=(0.3, 0.7)
    )
    pipe.save_pretrained(tmp_path)
    loaded = MPDiTPipeline.from_pretrained(tmp_path)
    assert loaded.config.default_guidance_scale == 3.0 and loaded.config.default_guidance_interval == [0.3, 0.7]
    spy = with_transformer(loaded, SpyTransformer, calls=[])
    loaded(class_labels=[1], num_inference_steps=4, output_type="latent")
    assert loaded.guidance_scale == 3.0 and loaded.guidance_interval == (0.3, 0.7)
    assert [b for b, _, _ in spy.calls] == [1, 2, 2, 1]
    # An explicit interval, (0, 1) included, wins over the saved one.
    spy.calls.clear()
    loaded(class_labels=[1], num_inference_steps=4, guidance_interval=(0, 1), guidance_scale=2.0, output_type="latent")
    assert loaded.guidance_scale == 2.0 and loaded.guidance_interval == (0, 1)
    assert [b for b, _, _ in spy.calls] == [2, 2, 2, 2]
    # A pipeline saved before these settings existed keeps the old behaviour: 1.5 at every step.
    index = json.loads((tmp_path / "model_index.json").read_text())
    del index["default_guidance_scale"], index["default_guidance_interval"]
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    old = MPDiTPipeline.from_pretrained(tmp_path)
    assert old.config.default_guidance_scale == 1.5 and old.config.default_guidance_interval is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"default_guidance_scale": -1}, "`default_guidance_scale` must be a number >= 0"),
        ({"default_guidance_interval": (0.9, 0.1)}, "`default_guidance_interval` must be"),
        ({"default_guidance_interval": 0.5}, r"`default_guidance_interval` must be \(low, high\) or None"),
    ],
)
def test_bad_default_guidance_names_the_argument(kwargs, match):
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match=match):
        MPDiTPipeline(pipe.transformer, None, pipe.scheduler, **kwargs)


def test_guidance_is_applied_as_uncond_plus_scale_times_difference():
    pipe = tiny_pipeline()
    x = torch.randn(1, 4, 8, 8, generator=gen())
    out = pipe(class_labels=[4], num_inference_steps=1, guidance_scale=2.5, latents=x, output_type="latent").images
    with torch.no_grad():
        cond = pipe.transformer(x, torch.ones(1), torch.tensor([4])).sample
        uncond = pipe.transformer(x, torch.ones(1), torch.tensor([10])).sample
    v = uncond + 2.5 * (cond - uncond)
    sigma_next = pipe.scheduler.sigmas[1]
    torch.testing.assert_close(out, x + (sigma_next - 1.0) * v, rtol=1e-5, atol=1e-5)


def test_guidance_scale_is_read_at_every_step():
    pipe = tiny_pipeline()

    def bump(p, i, t, kwargs):
        p._guidance_scale += 1.0
        return kwargs

    pipe(class_labels=[1], num_inference_steps=3, guidance_scale=1.5, callback_on_step_end=bump, output_type="latent")
    assert pipe.guidance_scale == 1.5 + pipe.num_timesteps


def test_callback_runs_after_the_step_and_latent_output_is_untouched():
    pipe = tiny_pipeline()
    seen = []

    def zero_at_end(p, i, t, kwargs):
        seen.append(sorted(kwargs))
        if i == p.num_timesteps - 1:
            kwargs["latents"] = torch.zeros_like(kwargs["latents"])
        return kwargs

    out = pipe(class_labels=[1, 2], num_inference_steps=3, callback_on_step_end=zero_at_end, output_type="latent")
    assert seen == [["latents"]] * 3 and out.images.abs().sum() == 0


def test_interrupt_skips_the_remaining_steps():
    pipe = tiny_pipeline()
    spy = with_transformer(pipe, SpyTransformer, calls=[])

    def stop(p, i, t, kwargs):
        p._interrupt = i == 1
        return kwargs

    pipe(class_labels=[1], num_inference_steps=5, guidance_scale=1.0, callback_on_step_end=stop, output_type="latent")
    assert len(spy.calls) == 2


def test_progress_bar():
    pipe = tiny_pipeline()
    stream = io.StringIO()
    pipe.set_progress_bar_config(file=stream, disable=False)
    pipe(class_labels=[1], num_inference_steps=3, output_type="latent")
    assert "3/3" in stream.getvalue()


@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "latent"])
def test_output_types_and_sizes(output_type):
    pipe = tiny_pipeline()
    out = pipe(class_labels=[1, 2], num_inference_steps=2, height=16, width=24, output_type=output_type)
    images = out.images
    if output_type == "pil":
        assert all(isinstance(i, Image.Image) and i.size == (24, 16) for i in images)
    elif output_type == "np":
        assert images.shape == (2, 16, 24, 3) and images.min() >= 0 and images.max() <= 1
    elif output_type == "pt":
        assert images.shape == (2, 3, 16, 24)
    else:
        assert images.shape == (2, 4, 8, 12)
    assert isinstance(pipe(class_labels=1, num_inference_steps=1, return_dict=False), tuple)


def test_default_size_comes_from_the_config():
    pipe = tiny_pipeline(sample_size=12)
    assert pipe(class_labels=[1], num_inference_steps=1, output_type="np").images.shape == (1, 24, 24, 3)


def test_sizes_above_the_documented_maximum_are_refused_before_anything_is_allocated(monkeypatch):
    pipe = tiny_pipeline()  # trained side: sample_size 8 x VAE factor 2 = 16 px, so at most 4 x 16 = 64
    assert MPDiTPipeline.max_size_factor == 4

    def no_noise(*args, **kwargs):
        raise AssertionError("noise allocated for a size that should have been refused")

    with monkeypatch.context() as patch:
        patch.setattr("diffusers_mpdit.pipelines.pipeline_mpdit.randn_tensor", no_noise)
        for height, width in [(100000, 100000), (72, 16), (16, 72)]:
            with pytest.raises(ValueError) as info:
                pipe(class_labels=[1], height=height, width=width, num_inference_steps=1)
            message = str(info.value)
            assert message.startswith("`height` and `width` must be at most 64 (4 x the trained side 16")
            assert "`MPDiTPipeline.max_size_factor`" in message and message.endswith(f"got {height}x{width}.")
    assert pipe(class_labels=[1], height=64, width=64, num_inference_steps=1, output_type="latent").images.shape == (
        1, 4, 32, 32,
    )  # fmt: skip
    pipe.max_size_factor = 5  # raised on one pipeline: 80 px
    assert pipe(class_labels=[1], height=72, num_inference_steps=1, output_type="latent").images.shape[-2:] == (36, 8)
    pipe.max_size_factor = None
    assert pipe(class_labels=[1], width=88, num_inference_steps=1, output_type="latent").images.shape[-1] == 44


def test_deterministic_and_batch_equals_single_runs():
    pipe = tiny_pipeline()
    kwargs = {"num_inference_steps": 3, "output_type": "np", "guidance_scale": 2.0}
    a = pipe(class_labels=[1, 2, 3], generator=[gen(0), gen(1), gen(2)], **kwargs).images
    b = pipe(class_labels=[1, 2, 3], generator=[gen(0), gen(1), gen(2)], **kwargs).images
    np.testing.assert_array_equal(a, b)
    for i, label in enumerate([1, 2, 3]):
        single = pipe(class_labels=[label], generator=gen(i), **kwargs).images
        np.testing.assert_allclose(a[i], single[0], atol=1e-5)


def test_num_images_per_prompt():
    pipe = tiny_pipeline()
    spy = with_transformer(pipe, SpyTransformer, calls=[])
    out = pipe(
        class_labels=[1, 2], num_images_per_prompt=3, num_inference_steps=1, guidance_scale=1.0, output_type="np"
    )
    assert out.images.shape[0] == 6 and spy.calls[0][2].tolist() == [1, 1, 1, 2, 2, 2]


def test_model_cpu_offload():
    pipe = tiny_pipeline()
    expected = pipe(class_labels=[1, 2], num_inference_steps=2, generator=gen(), output_type="np").images
    pipe.enable_model_cpu_offload(device="cpu")
    for _ in range(2):
        out = pipe(class_labels=[1, 2], num_inference_steps=2, generator=gen(), output_type="np").images
        np.testing.assert_allclose(out, expected, atol=1e-6)


def test_sequential_offload_hooks():
    # `pipe.enable_sequential_cpu_offload` always targets "cpu:0" on a CPU-only machine, which accelerate cannot
    # offload to (diffusers' own DiT fails there too); the same accelerate hooks, placed per component, work.
    from accelerate import cpu_offload

    pipe = tiny_pipeline()
    expected = pipe(class_labels=[1, 2], num_inference_steps=2, generator=gen(), output_type="np").images
    for component in (pipe.transformer, pipe.vae):
        cpu_offload(component, torch.device("cpu"), offload_buffers=True)
    assert pipe.transformer.transformer_blocks[0].attn.to_q.weight.device.type == "meta"
    out = pipe(class_labels=[1, 2], num_inference_steps=2, generator=gen(), output_type="np").images
    np.testing.assert_allclose(out, expected, atol=1e-6)


# --- schedulers --------------------------------------------------------------------------------------------------

SCHEDULERS = {
    "euler": (lambda c: FlowMatchEulerDiscreteScheduler.from_config(c), 1e-6),
    "euler-stochastic": (lambda c: FlowMatchEulerDiscreteScheduler.from_config(c, stochastic_sampling=True), 1e-6),
    "heun": (lambda c: FlowMatchHeunDiscreteScheduler.from_config(c), 1e-6),
    # Integer timesteps (999, 750, ...) give the model t = timestep / 1000, a little off the scheduler's own sigma.
    "unipc": (
        lambda c: UniPCMultistepScheduler.from_config(c, use_flow_sigmas=True, prediction_type="flow_prediction"),
        1e-2,
    ),
    "dpm-solver": (
        lambda c: DPMSolverMultistepScheduler.from_config(c, use_flow_sigmas=True, prediction_type="flow_prediction"),
        1e-2,
    ),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_oracle_velocity_recovers_x0_with_each_scheduler(name):
    make, tol = SCHEDULERS[name]
    pipe = tiny_pipeline()
    target = torch.randn(2, 4, 8, 8, generator=gen(5))
    with_transformer(pipe, OracleTransformer, target=target)
    pipe.scheduler = make(pipe.scheduler.config)
    out = pipe(class_labels=[1, 2], num_inference_steps=6, guidance_scale=1.0, generator=gen(), output_type="latent")
    torch.testing.assert_close(out.images, target, rtol=0, atol=tol)


def test_official_euler_sampler_is_reproduced_by_sigmas():
    pipe = tiny_pipeline()
    noise = torch.randn(2, 4, 8, 8, generator=gen())
    labels, scale = torch.tensor([1, 2]), 1.5
    out = pipe(
        class_labels=labels,
        sigmas=official_euler_sigmas(250),
        guidance_scale=scale,
        latents=noise,
        output_type="latent",
    ).images
    assert pipe.num_timesteps == 249

    # The official ODE sampler: Euler over linspace(1, 0, 250), CFG on a [cond; uncond] batch.
    x, ts = noise.clone(), torch.linspace(1, 0, 250)
    with torch.no_grad():
        for i in range(249):
            v = pipe.transformer(torch.cat([x, x]), ts[i].expand(4), torch.cat([labels, torch.full_like(labels, 10)]))
            cond, uncond = v.sample.chunk(2)
            x = x + (ts[i + 1] - ts[i]) * (uncond + scale * (cond - uncond))
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)


# --- saving and loading ------------------------------------------------------------------------------------------


def test_save_load_keeps_id2label_and_writes_safetensors(tmp_path):
    pipe = tiny_pipeline()
    expected = pipe(class_labels=["coat"], num_inference_steps=2, generator=gen(), output_type="np").images
    pipe.save_pretrained(tmp_path)
    files = {os.path.relpath(os.path.join(d, f), tmp_path) for d, _, fs in os.walk(tmp_path) for f in fs}
    assert (
        "transformer/diffusion_pytorch_model.safetensors" in files
        and "vae/diffusion_pytorch_model.safetensors" in files
    )
    assert not any(f.endswith(".bin") for f in files)
    loaded = MPDiTPipeline.from_pretrained(tmp_path)
    assert loaded.id2label == dict(enumerate(CLASS_NAMES[:10])) and loaded.labels == pipe.labels
    loaded.set_progress_bar_config(disable=True)
    out = loaded(class_labels=["coat"], num_inference_steps=2, generator=gen(), output_type="np").images
    np.testing.assert_array_equal(out, expected)


def test_dtype_per_component_and_variant(tmp_path):
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "fp32")
    loaded = MPDiTPipeline.from_pretrained(
        tmp_path / "fp32", dtype={"transformer": torch.bfloat16, "default": torch.float32}
    )
    assert loaded.transformer.dtype == torch.bfloat16 and loaded.vae.dtype == torch.float32
    loaded.set_progress_bar_config(disable=True)
    assert loaded(class_labels=[1], num_inference_steps=2, output_type="np").images.shape == (1, 16, 16, 3)

    pipe.to(torch.float16).save_pretrained(tmp_path / "fp16", variant="fp16")
    assert (tmp_path / "fp16" / "transformer" / "diffusion_pytorch_model.fp16.safetensors").exists()
    half = MPDiTPipeline.from_pretrained(tmp_path / "fp16", variant="fp16", dtype=torch.float16)
    assert half.transformer.dtype == torch.float16
    with pytest.raises(ValueError, match="variant"):
        MPDiTPipeline.from_pretrained(tmp_path / "fp32", variant="fp16")


@pytest.mark.parametrize("name", ["/path/that/does/not/exist", "./missing", "~/missing", "some/local/folder"])
@pytest.mark.parametrize("loader", ["MPDiTPipeline", "MPDiTTransformer2DModel"])
def test_a_local_path_that_is_not_a_folder_is_named(name, loader, tmp_path, monkeypatch):
    import diffusers_mpdit

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError) as info:
        getattr(diffusers_mpdit, loader).from_pretrained(name)
    message = str(info.value)
    assert message.startswith(f"The local folder {name!r}") and "does not exist" in message and "\n" not in message


def test_a_file_is_not_a_pipeline_folder_and_a_folder_under_home_loads(tmp_path, monkeypatch):
    tiny_pipeline().save_pretrained(tmp_path / "pipe")
    index = str(tmp_path / "pipe" / "model_index.json")
    with pytest.raises(FileNotFoundError, match=re.escape(f"{index!r} is a file, not a folder")):
        MPDiTPipeline.from_pretrained(index)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert MPDiTPipeline.from_pretrained("~/pipe").transformer.config.num_classes == 10


def test_a_repo_id_still_goes_to_the_hub(hub):
    with pytest.raises(OSError) as info:
        MPDiTPipeline.from_pretrained("alice/no-such-pipeline")
    assert not isinstance(info.value, FileNotFoundError)
    assert any("alice/no-such-pipeline" in path for _, path in hub.requests)


@pytest.mark.parametrize("component", ["transformer", "vae"])
def test_a_truncated_weights_file_is_named_as_damaged(tmp_path, component):
    tiny_pipeline().save_pretrained(tmp_path)
    weights = tmp_path / component / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError) as info:
        MPDiTPipeline.from_pretrained(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{str(weights)!r} is not a readable checkpoint: the file is damaged")
    assert "\n" not in message


def test_diffusion_pipeline_with_custom_pipeline_and_trust_remote_code(tmp_path):
    tiny_pipeline().save_pretrained(tmp_path / "pipe")
    script = textwrap.dedent(
        f"""
        import torch
        from diffusers import DiffusionPipeline
        import diffusers_mpdit
        pipe = DiffusionPipeline.from_pretrained(
            {str(tmp_path / "pipe")!r}, custom_pipeline=diffusers_mpdit.CUSTOM_PIPELINE, trust_remote_code=True
        )
        assert type(pipe).__name__ == "MPDiTPipeline", type(pipe)
        pipe.set_progress_bar_config(disable=True)
        print(pipe(class_labels=["coat"], num_inference_steps=1, output_type="np").images.shape)
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "(1, 16, 16, 3)" in run.stdout
    assert os.path.isfile(diffusers_mpdit.CUSTOM_PIPELINE)


# --- bad input ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"class_labels": [1], "num_inference_steps": 0}, "`num_inference_steps` must be an integer >= 1"),
        ({"class_labels": [1], "guidance_scale": -1.0}, "`guidance_scale` must be a number >= 0"),
        ({"class_labels": [1], "guidance_interval": (0.8, 0.2)}, "`guidance_interval` must be"),
        ({"class_labels": [1], "height": 20}, r"`height` and `width` must be positive multiples of 8"),
        ({"class_labels": [1], "width": 12}, r"`height` and `width` must be positive multiples of 8"),
        ({"class_labels": [1, 2], "generator": [torch.Generator()]}, "`generator` is a list of 1 generators"),
        ({"class_labels": [1], "latents": torch.randn(1, 4, 4, 4)}, r"`latents` must have shape \(1, 4, 8, 8\)"),
        (
            {"class_labels": [1], "callback_on_step_end_tensor_inputs": ["noise"]},
            "`callback_on_step_end_tensor_inputs`",
        ),
        ({"class_labels": [11]}, r"`class_labels`: class id 11 is out of range: ids run from 0 to 9\. See"),
        ({"class_labels": [-1]}, r"`class_labels`: class id -1 is out of range"),
        ({"class_labels": [1.5]}, "`class_labels`: expected class ids"),
        ({"class_labels": None}, r"`class_labels` is required: .*for unconditional samples .*`guidance_scale=0`"),
        ({"class_labels": "robot"}, "unknown class name 'robot'"),
        ({"class_labels": [1], "output_type": "jpeg"}, "`output_type` must be one of"),
        ({"class_labels": [1], "num_images_per_prompt": 0}, "`num_images_per_prompt` must be an integer >= 1"),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match=match):
        pipe(num_inference_steps=kwargs.pop("num_inference_steps", 1), **kwargs)


def test_unconditional_pipeline():
    pipe = tiny_pipeline(num_classes=0)
    assert pipe(num_images_per_prompt=2, num_inference_steps=1, output_type="np").images.shape == (2, 16, 16, 3)
    with pytest.raises(ValueError, match="`class_labels` must be None"):
        pipe(class_labels=[1])


# --- against hand loops ------------------------------------------------------------------------------------------


def euler_by_hand(transformer, x, labels, sigmas, scales, null, interval=None):
    """Euler over the scheduler's sigmas with classifier-free guidance, `scales[i]` at step i, in two forward passes."""
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        t = torch.full((len(x),), float(sigma))
        with torch.no_grad():
            out = transformer(x, t, labels).sample
            cond = out[:, : x.shape[1]]
            if interval is None or interval[0] <= float(sigma) <= interval[1]:
                uncond = transformer(x, t, torch.full_like(labels, null)).sample[:, : x.shape[1]]
                v = uncond + scales[i] * (cond - uncond)
            else:
                v = cond
        x = x + (float(sigma_next) - float(sigma)) * v
    return x


def test_guidance_changed_by_a_callback_takes_effect_from_the_next_step():
    pipe = tiny_pipeline()
    x = torch.randn(2, 4, 8, 8, generator=gen(3))
    labels = torch.tensor([1, 6])

    def bump(p, i, t, kwargs):
        p._guidance_scale += 1.0
        return kwargs

    out = pipe(class_labels=labels, num_inference_steps=4, guidance_scale=1.5, latents=x, callback_on_step_end=bump,
               output_type="latent").images  # fmt: skip
    sigmas = pipe.scheduler.sigmas.tolist()
    expected = euler_by_hand(pipe.transformer, x, labels, sigmas, [1.5, 2.5, 3.5, 4.5], null=10)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # A scale read once at the start would have given this instead.
    once = euler_by_hand(pipe.transformer, x, labels, sigmas, [1.5] * 4, null=10)
    assert (once - out).abs().max() > 1e-3


def test_joint_model_samples_with_its_first_channels():
    pipe = tiny_pipeline(out_channels=8)  # the official "joint" variant: twice the input channels
    x = torch.randn(1, 4, 8, 8, generator=gen(4))
    labels = torch.tensor([2])
    out = pipe(class_labels=labels, num_inference_steps=3, guidance_scale=2.0, latents=x, output_type="latent").images
    expected = euler_by_hand(pipe.transformer, x, labels, pipe.scheduler.sigmas.tolist(), [2.0] * 3, null=10)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_dynamic_shifting_uses_the_finest_level_token_count():
    pipe = tiny_pipeline()
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, use_dynamic_shifting=True)
    spy = with_transformer(pipe, SpyTransformer, calls=[])
    pipe(class_labels=[1], num_inference_steps=4, guidance_scale=1.0, height=16, width=24, output_type="latent")
    # SD3's resolution-dependent shift, written out: mu is linear in the token count of the finest level (2x2
    # patches of the 8x12 latent of a 16x24 image: 4 x 6 = 24 tokens), and sigma -> e^mu / (e^mu + 1 / sigma - 1).
    tokens = (8 // 2) * (12 // 2)
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (tokens - 256)
    plain = np.linspace(1.0, 0.001, 4)
    expected = np.exp(mu) / (np.exp(mu) + 1 / plain - 1)
    np.testing.assert_allclose([float(t[0]) for _, t, _ in spy.calls], expected, rtol=1e-5)
