"""The official samplers (ODE through FlowMatchEuler, SDE through FlowMatchEulerMaruyamaScheduler), guidance below 1,
and the sampling configuration every front end shares. Expected values come from hand-written loops of the formulas."""

import hashlib
import math

import numpy as np
import pytest
import torch
from conftest import tiny_pipeline
from diffusers import FlowMatchEulerDiscreteScheduler

from diffusers_mpdit import FlowMatchEulerMaruyamaScheduler, SamplingConfig
from diffusers_mpdit.sampling import (
    add_sampling_arguments,
    fid_class_labels,
    image_generator,
    upscale_nearest,
)

NULL = 10  # the tiny models' null class


def velocity(pipe, x, t, labels, scale, interval=None):
    """The guided velocity, by the formula, with two separate forward passes."""
    t_batch = torch.full((x.shape[0],), float(t))
    with torch.no_grad():
        cond = pipe.transformer(x, t_batch, labels).sample
        if scale == 1 or (interval is not None and not interval[0] <= t <= interval[1]):
            return cond
        uncond = pipe.transformer(x, t_batch, torch.full_like(labels, NULL)).sample
    return uncond + scale * (cond - uncond)


def diffusion(form, t, norm):
    return {
        "constant": norm,
        "SBDM": norm * t / (1 - t),
        "sigma": norm * t,
        "decreasing": 0.25 * (norm * math.cos(math.pi * (1 - t)) + 1) ** 2,
        "increasing-decreasing": norm * math.sin(math.pi * (1 - t)) ** 2,
    }[form]


def per_image_normal(generators, shape):
    return torch.cat([torch.randn((1, *shape), generator=g) for g in generators])


def hand_sde(pipe, labels, seeds, n, scale, form="SBDM", norm=1.0, h=0.04, interval=None, shape=(4, 8, 8)):
    """Euler-Maruyama over linspace(1 - h, h, n), then a noiseless drift step to 0 (the official loop)."""
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    x = per_image_normal(generators, shape)
    ts = torch.linspace(1 - h, h, n)
    for i in range(n):
        t = float(ts[i])
        v = velocity(pipe, x, t, labels, scale, interval)
        score = -((1 - t) * v + x) / t
        w = diffusion(form, t, norm)
        drift = v - w * score
        if i < n - 1:
            dt = float(ts[i + 1]) - t
            x = x + dt * drift + math.sqrt(2 * w) * math.sqrt(abs(dt)) * per_image_normal(generators, shape)
        else:
            x = x + (0 - t) * drift
    return x


def hand_ode(pipe, labels, seeds, n, scale, interval=None, shape=(4, 8, 8)):
    """Euler over linspace(1, 0, n): n - 1 steps (the official loop)."""
    x = per_image_normal([torch.Generator().manual_seed(s) for s in seeds], shape)
    ts = torch.linspace(1, 0, n)
    for i in range(n - 1):
        x = x + float(ts[i + 1] - ts[i]) * velocity(pipe, x, float(ts[i]), labels, scale, interval)
    return x


# --- FlowMatchEulerMaruyamaScheduler ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "form, norm, h", [("SBDM", 1.0, 0.04), ("constant", 0.5, 0.1), ("sigma", 2.0, 0.04), ("decreasing", 1.0, 0.2),
                      ("increasing-decreasing", 1.0, 0.04)]
)  # fmt: skip
def test_sde_through_the_pipeline_with_cfg_is_the_official_loop(form, norm, h):
    pipe = tiny_pipeline()
    pipe.scheduler = FlowMatchEulerMaruyamaScheduler.from_config(
        pipe.scheduler.config, diffusion_form=form, diffusion_norm=norm, last_step_size=h
    )
    labels, seeds, n = torch.tensor([1, 2, 7]), [5, 6, 7], 6
    out = pipe(
        class_labels=labels,
        num_inference_steps=n,
        guidance_scale=1.5,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        output_type="latent",
    ).images
    assert pipe.num_timesteps == n  # n model evaluations, as in the official loop
    expected = hand_sde(pipe, labels, seeds, n, 1.5, form, norm, h)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_sde_one_generator_draws_like_randn_tensor_and_other_seeds_differ():
    pipe = tiny_pipeline()
    pipe.scheduler = FlowMatchEulerMaruyamaScheduler()
    run = {"class_labels": [3, 4], "num_inference_steps": 4, "guidance_scale": 1.0, "output_type": "latent"}
    out = pipe(**run, generator=torch.Generator().manual_seed(0)).images
    # One generator for the whole batch: the initial latents, then one (2, 4, 8, 8) normal per noisy step.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ts = torch.linspace(0.96, 0.04, 4)
    for i in range(4):
        t = float(ts[i])
        v = velocity(pipe, x, t, torch.tensor([3, 4]), 1.0)
        w = t / (1 - t)
        drift = v + w * ((1 - t) * v + x) / t
        dt = float(ts[i + 1]) - t if i < 3 else -t
        x = x + dt * drift + (math.sqrt(2 * w * abs(dt)) * torch.randn(2, 4, 8, 8, generator=g) if i < 3 else 0)
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)
    other = pipe(**run, generator=torch.Generator().manual_seed(1)).images
    assert (other - out).abs().max() > 0.1


def test_sde_grid_config_round_trip_and_swap(tmp_path):
    scheduler = FlowMatchEulerMaruyamaScheduler.from_config(
        FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True).config, last_step_size=0.1
    )
    scheduler.set_timesteps(5)
    np.testing.assert_allclose(scheduler.timesteps.numpy(), np.linspace(900, 100, 5), rtol=1e-6)
    np.testing.assert_allclose(scheduler.sigmas.numpy(), [0.9, 0.7, 0.5, 0.3, 0.1, 0.0], rtol=1e-6, atol=1e-7)
    assert scheduler.order == 1 and len(scheduler) == 1000
    scheduler.save_pretrained(tmp_path)
    loaded = FlowMatchEulerMaruyamaScheduler.from_pretrained(tmp_path)
    assert (loaded.config.diffusion_form, loaded.config.diffusion_norm, loaded.config.last_step_size) == (
        "SBDM",
        1.0,
        0.1,
    )
    # Custom sigmas, as diffusers' flow schedulers take them: the same grid gives the same timesteps.
    loaded.set_timesteps(sigmas=[0.9, 0.7, 0.5, 0.3, 0.1])
    torch.testing.assert_close(loaded.timesteps, scheduler.timesteps)
    loaded.set_timesteps(timesteps=[900.0, 500.0])
    assert loaded.sigmas.tolist() == pytest.approx([0.9, 0.5, 0.0])


def test_sde_swaps_in_from_a_dynamic_shift_config():
    # from_config keeps the Euler config's `use_dynamic_shifting`; the pipeline must not pass `mu` to a scheduler
    # whose set_timesteps does not take it.
    pipe = tiny_pipeline()
    pipe.scheduler = FlowMatchEulerMaruyamaScheduler.from_config(
        FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config
    )
    assert pipe.scheduler.config.use_dynamic_shifting
    out = pipe(class_labels=[1], num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
    assert np.isfinite(out.images).all()


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: FlowMatchEulerMaruyamaScheduler(diffusion_form="linear"), "`diffusion_form` must be one of constant"),
        (lambda: FlowMatchEulerMaruyamaScheduler(last_step_size=0.5), r"`last_step_size` must be a number in \(0, 0.5\)"),
        (lambda: FlowMatchEulerMaruyamaScheduler(last_step_size=0), r"in \(0, 0.5\)"),
        (lambda: FlowMatchEulerMaruyamaScheduler().set_timesteps(1), "`num_inference_steps` must be >= 2"),
        (lambda: FlowMatchEulerMaruyamaScheduler().set_timesteps(sigmas=[1.0, 0.5]), r"strictly decreasing .* \(0, 1\)"),
        (lambda: FlowMatchEulerMaruyamaScheduler().set_timesteps(sigmas=[0.5, 0.6]), "strictly decreasing"),
        (lambda: FlowMatchEulerMaruyamaScheduler().set_timesteps(3, sigmas=[0.5, 0.4]), "must equal the number"),
    ],
)  # fmt: skip
def test_sde_bad_settings_name_the_argument(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_sde_with_retrieve_timesteps_sigmas():
    pipe = tiny_pipeline()
    pipe.scheduler = FlowMatchEulerMaruyamaScheduler()
    grid = np.linspace(0.96, 0.04, 5)
    run = {"class_labels": [2], "guidance_scale": 2.0, "output_type": "latent"}
    by_sigmas = pipe(**run, sigmas=grid, generator=[torch.Generator().manual_seed(3)]).images
    by_steps = pipe(**run, num_inference_steps=5, generator=[torch.Generator().manual_seed(3)]).images
    torch.testing.assert_close(by_sigmas, by_steps, rtol=1e-5, atol=1e-6)


# --- guidance below 1 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [0.0, 0.5])
def test_guidance_below_one_is_applied_by_the_formula(scale):
    pipe = tiny_pipeline()
    pipe.scheduler = SamplingConfig(scheduler="ode").make_scheduler(pipe.scheduler.config)
    labels = torch.tensor([1, 4])
    call = SamplingConfig(scheduler="ode", steps=5, guidance_scale=scale).call_kwargs(pipe)
    out = pipe(class_labels=labels, generator=[image_generator(0, i) for i in range(2)], output_type="latent", **call)
    torch.testing.assert_close(out.images, hand_ode(pipe, labels, [0, 1], 5, scale), rtol=1e-5, atol=1e-5)
    if scale == 0:
        # s = 0 is the unconditional prediction: the labels make no difference.
        other = pipe(
            class_labels=[7, 2], generator=[image_generator(0, i) for i in range(2)], output_type="latent", **call
        )
        torch.testing.assert_close(out.images, other.images, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), True])
def test_negative_or_non_finite_guidance_is_refused(bad):
    with pytest.raises(ValueError, match="`guidance_scale` must be a number >= 0"):
        tiny_pipeline()(class_labels=[1], num_inference_steps=1, guidance_scale=bad)


# --- the sampling configuration ----------------------------------------------------------------------------------


def test_ode_sampler_counts_time_points_like_the_official_script():
    pipe = tiny_pipeline()
    config = SamplingConfig(scheduler="ode", steps=7, guidance_scale=1.5, guidance_interval=(0.0, 0.6), seed=11)
    pipe.scheduler = config.make_scheduler(FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    labels = torch.tensor([0, 9])
    out = pipe(
        class_labels=labels, generator=config.generators(range(2)), output_type="latent", **config.call_kwargs(pipe)
    )
    assert pipe.num_timesteps == 6  # 7 points, 6 Euler steps, whatever the base config's shift
    expected = hand_ode(pipe, labels, [11, 12], 7, 1.5, (0.0, 0.6))
    torch.testing.assert_close(out.images, expected, rtol=1e-5, atol=1e-5)


def test_sde_sampler_from_the_configuration():
    pipe = tiny_pipeline()
    config = SamplingConfig(scheduler="sde", steps=5, guidance_scale=2.0, seed=4, diffusion_form="sigma",
                            diffusion_norm=0.5, last_step_size=0.1)  # fmt: skip
    pipe.scheduler = config.make_scheduler(pipe.scheduler.config)
    labels = torch.tensor([3])
    out = pipe(class_labels=labels, generator=config.generators([0]), output_type="latent", **config.call_kwargs(pipe))
    expected = hand_sde(pipe, labels, [4], 5, 2.0, "sigma", 0.5, 0.1)
    torch.testing.assert_close(out.images, expected, rtol=1e-5, atol=1e-5)


def test_per_image_seed_rule():
    config = SamplingConfig(seed=123)
    for index, generator in zip([0, 5, 9], config.generators([0, 5, 9])):
        torch.testing.assert_close(
            torch.randn(8, generator=generator), torch.randn(8, generator=torch.Generator().manual_seed(123 + index))
        )
    with pytest.raises(ValueError, match=r"`seed` must be at most 2\*\*32 - 10"):
        SamplingConfig(seed=2**32 - 5).check_image_count(10)


def test_settings_resolve_the_models_saved_defaults(tmp_path):
    pipe = tiny_pipeline()
    pipe.register_to_config(default_guidance_scale=2.5, default_guidance_interval=[0.0, 0.6])
    settings = SamplingConfig(scheduler="sde", steps=9).settings(pipe)
    assert settings == {
        "scheduler": "sde", "steps": 9, "guidance_scale": 2.5, "guidance_interval": [0.0, 0.6], "seed": 0,
        "dtype": "float32", "diffusion_form": "SBDM", "diffusion_norm": 1.0, "last_step_size": 0.04,
    }  # fmt: skip
    assert SamplingConfig(guidance_scale=1.0, guidance_interval=(0, 1)).settings(pipe)["guidance_interval"] == [0, 1]
    assert SamplingConfig.from_settings(settings) == SamplingConfig(
        scheduler="sde", steps=9, guidance_scale=2.5, guidance_interval=(0.0, 0.6)
    )
    text = SamplingConfig(scheduler="sde", steps=9).describe(pipe)
    assert text == "sde (SBDM, norm 1, last step 0.04), 9 steps, guidance 2.5 for t in [0, 0.6], seed 0"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--scheduler", "ddim"], "--scheduler must be one of euler, euler-stochastic, heun, unipc, dpm-solver, ode, sde"),
        (["--scheduler", "ode", "--steps", "1"], "--steps must be an integer >= 2 for the ode sampler"),
        (["--scheduler", "sde", "--steps", "1"], "--steps must be an integer >= 2 for the sde sampler"),
        (["--steps", "0"], "--steps must be an integer >= 1 for the euler sampler"),
        (["--guidance", "-1"], "--guidance must be a number >= 0"),
        (["--guidance-interval", "0.8", "0.2"], "--guidance-interval must be (low, high) with 0 <= low <= high <= 1"),
        (["--diffusion-form", "linear"], "--diffusion-form must be one of constant, SBDM, sigma"),
        (["--last-step-size", "0.5"], "--last-step-size must be a number in (0, 0.5)"),
        (["--dtype", "int8"], "--dtype must be one of float32, bfloat16, float16"),
        (["--seed", "-1"], "--seed must be an integer in [0, 2**32)"),
    ],
)  # fmt: skip
def test_front_end_errors_name_the_flag(flags, message, capsys):
    import argparse

    parser = add_sampling_arguments(argparse.ArgumentParser(prog="front"), "dash")
    args = parser.parse_args(flags)
    with pytest.raises(SystemExit):
        SamplingConfig.from_args(args, parser)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err, err


def test_underscore_flags_and_excluded_fields():
    import argparse

    parser = add_sampling_arguments(argparse.ArgumentParser(), "underscore", exclude=("device",))
    args = parser.parse_args(["--num_inference_steps", "250", "--scheduler", "ode", "--guidance_interval", "0", "1"])
    config = SamplingConfig.from_args(args, parser)
    assert config == SamplingConfig(scheduler="ode", steps=250, guidance_interval=(0.0, 1.0))
    with pytest.raises(SystemExit):
        parser.parse_args(["--device", "cpu"])


def test_random_labels_hash_the_seed_and_index():
    labels = fid_class_labels(2000, 7, "random", seed=3)
    expected = [
        int.from_bytes(hashlib.sha256(f"mpdit-label,3,{i}".encode()).digest()[:8], "little") % 7 for i in range(2000)
    ]
    assert labels.tolist() == expected
    # Uniform: chi-square with 6 degrees of freedom, below its 99.9% point.
    counts = np.bincount(labels, minlength=7)
    assert ((counts - 2000 / 7) ** 2 / (2000 / 7)).sum() < 22.5
    # Image i's label does not depend on how many images there are, and the seed changes it.
    assert fid_class_labels(10, 7, "random", seed=3).tolist() == expected[:10]
    assert fid_class_labels(10, 7, "random", seed=4).tolist() != expected[:10]
    assert fid_class_labels(5, 3).tolist() == [0, 1, 2, 0, 1]


def test_upscale_nearest_is_an_integer_factor():
    from PIL import Image

    image = Image.fromarray(np.arange(6, dtype=np.uint8).reshape(2, 3))
    big = upscale_nearest(image, 10)
    assert big.size == (12, 8)  # factor 4: the longer side 3 -> 12 >= 10
    np.testing.assert_array_equal(np.asarray(big), np.kron(np.asarray(image), np.ones((4, 4), dtype=np.uint8)))
    assert upscale_nearest(image, 2) is image
