"""Caches: diffusers' cache API on MPDiT, the level cache, and the refusals.

Every comparison is against the uncached model: a pipeline without a cache, or the level's blocks run by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_pipeline
from diffusers.hooks import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    SeaCacheConfig,
    TaylorSeerCacheConfig,
    TextKVCacheConfig,
)
from diffusers.hooks._helpers import TransformerBlockRegistry
from diffusers.models.cache_utils import CacheMixin
from test_space import load_app

from diffusers_mpdit import LevelCacheConfig
from diffusers_mpdit.caches import parse_cache
from diffusers_mpdit.models.transformer_mpdit import MPDiTBlock
from diffusers_mpdit.sampling import SamplingConfig

STEPS = 7


@pytest.fixture
def pipe():
    # Pixel space and deeper levels than MPDiT-tiny's, so that a level has blocks between its head and tail.
    return tiny_pipeline(with_vae=False, depths=(3, 3), sample_size=16)


def sample(pipe, labels=(1, 2), steps=STEPS, **kwargs):
    generator = [torch.Generator().manual_seed(10 + i) for i in range(len(labels))]
    return pipe(list(labels), num_inference_steps=steps, generator=generator, output_type="latent", **kwargs).images


def count_block_runs(model):
    """Counts each block's real computation: its MLP runs only when the block's own forward does."""
    counts = [0] * len(model.transformer_blocks)
    for i, block in enumerate(model.transformer_blocks):
        block.ff.register_forward_hook(lambda *_, i=i: counts.__setitem__(i, counts[i] + 1))
    return counts


def record_level(model, level=0):
    """(input, conditioning, output) of every call of a level, as the model saw them."""
    calls = []
    model.levels[level].register_forward_hook(
        lambda module, args, output: calls.append((args[0].clone(), args[1].clone(), output.clone()))
    )
    return calls


def run_blocks_by_hand(model, level, hidden_states, conditioning):
    with torch.no_grad():
        for block in model._level_blocks()[level]:
            hidden_states = block(hidden_states, conditioning)
    return hidden_states


def test_cache_api(pipe):
    model = pipe.transformer
    assert isinstance(model, CacheMixin)
    metadata = TransformerBlockRegistry.get(MPDiTBlock)
    assert metadata.return_hidden_states_index == 0 and metadata.return_encoder_hidden_states_index is None
    seen = []
    model.register_forward_pre_hook(lambda *_: seen.append(pipe.current_timestep.item()))
    assert pipe.current_timestep is None
    sample(pipe)
    assert pipe.current_timestep is None
    assert seen == pipe.scheduler.timesteps.tolist()


def test_contexts_follow_the_batch_layout(pipe):
    names = []
    original = pipe.transformer.cache_context

    def recording(name, **kwargs):
        names.append((name, kwargs["step_index"]))
        return original(name, **kwargs)

    pipe.transformer.cache_context = recording
    sample(pipe, guidance_scale=2.0, guidance_interval=(0.0, 0.6))
    pipe.scheduler.set_timesteps(STEPS)
    flow_t = (pipe.scheduler.timesteps / 1000).tolist()
    assert names == [("cond_uncond" if t <= 0.6 else "cond", i) for i, t in enumerate(flow_t)]
    assert {"cond", "cond_uncond"} == {n for n, _ in names}


NEVER_SKIP = [
    LevelCacheConfig(threshold=0.0),
    LevelCacheConfig(every=1),
    FirstBlockCacheConfig(threshold=0.0),
    PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=1),
]


@pytest.mark.parametrize("config", NEVER_SKIP, ids=lambda c: repr(c).split("(")[0] + str(vars(c).get("threshold", "")))
def test_a_cache_that_never_skips_gives_the_uncached_output(pipe, config):
    expected = sample(pipe, guidance_scale=2.0, guidance_interval=(0.0, 0.6))
    if isinstance(config, PyramidAttentionBroadcastConfig):
        config.current_timestep_callback = lambda: pipe.current_timestep
    pipe.transformer.enable_cache(config)
    assert torch.equal(sample(pipe, guidance_scale=2.0, guidance_interval=(0.0, 0.6)), expected)
    pipe.transformer.disable_cache()
    assert not pipe.transformer.is_cache_enabled
    assert torch.equal(sample(pipe, guidance_scale=2.0, guidance_interval=(0.0, 0.6)), expected)


@pytest.mark.parametrize("every,warmup", [(2, 0), (3, 0), (3, 2)])
def test_fixed_schedule_block_counts(pipe, every, warmup):
    model = pipe.transformer
    model.enable_cache(LevelCacheConfig(every=every, warmup_steps=warmup))
    counts = count_block_runs(model)
    sample(pipe, guidance_scale=2.0, guidance_interval=(0.0, 1.0))  # one context for the whole call
    # Recomputed calls: the warmup ones, then every `every`-th call after the last recompute.
    recomputes, last = 0, None
    for call in range(STEPS):
        if call < warmup or last is None or call - last >= every:
            recomputes, last = recomputes + 1, call
    assert recomputes < STEPS
    assert counts == [recomputes] * 3 + [STEPS] * 3


def test_first_block_cache_runs_per_level_and_skips(pipe):
    model = pipe.transformer
    expected = sample(pipe)
    model.enable_cache(FirstBlockCacheConfig(threshold=10.0))  # any change is small: skip whenever it can
    hooked = [sorted(b._diffusers_hook.hooks) for b in model.transformer_blocks]
    assert hooked[0] == hooked[3] == ["fbc_leader_block_hook"]  # each level's first block leads
    counts = count_block_runs(model)
    output = sample(pipe)
    # One context for the whole call (guided at every step): heads run each step, the rest of each level once.
    assert counts == [STEPS, 1, 1, STEPS, 1, 1]
    assert output.shape == expected.shape and not torch.equal(output, expected)


def test_reused_tensors_are_what_the_uncached_level_computed(pipe):
    model = pipe.transformer
    model.enable_cache(LevelCacheConfig(every=3))
    calls = record_level(model)
    sample(pipe, guidance_scale=2.0, guidance_interval=(0.0, 1.0))
    assert len(calls) == STEPS
    for step, (inputs, conditioning, output) in enumerate(calls):
        if step % 3 == 0:
            cached = step
            torch.testing.assert_close(output, run_blocks_by_hand(model, 0, inputs, conditioning), rtol=0, atol=1e-6)
        else:
            cached_in, _, cached_out = calls[cached]
            torch.testing.assert_close(output, inputs + (cached_out - cached_in), rtol=0, atol=1e-6)
            assert not torch.allclose(inputs, cached_in)  # the input moved on: the reuse is real


def test_adaptive_schedule_follows_its_signal(pipe):
    model = pipe.transformer
    calls = record_level(model)
    sample(pipe)

    # The adaptive rule, by hand, on the uncached level's inputs: recompute when the input (or the modulation) has
    # moved by more than the threshold since the last recompute.
    def change(a, b):
        return ((a - b).abs().mean() / b.abs().mean()).item()

    changes = [
        max(change(calls[i][0], calls[i - 1][0]), change(calls[i][1], calls[i - 1][1])) for i in range(1, STEPS)
    ]
    threshold = sorted(changes)[len(changes) // 2]
    calls.clear()
    model.enable_cache(LevelCacheConfig(threshold=threshold))
    counts = count_block_runs(model)
    sample(pipe)
    recomputed, last = [0], 0
    for step in range(1, STEPS):
        moved = max(change(calls[step][0], calls[last][0]), change(calls[step][1], calls[last][1]))
        if moved > threshold:
            recomputed.append(step)
            last = step
    assert 1 < len(recomputed) < STEPS
    assert counts[:3] == [len(recomputed)] * 3
    for step in recomputed:
        inputs, conditioning, output = calls[step]
        torch.testing.assert_close(output, run_blocks_by_hand(model, 0, inputs, conditioning), rtol=0, atol=1e-6)


def test_unconditional_reuse_never_mixes_the_halves(pipe):
    model = pipe.transformer
    model.enable_cache(LevelCacheConfig(every=1, uncond_every=3))
    calls = record_level(model)
    sample(pipe, labels=(1, 2), guidance_scale=2.0, guidance_interval=(0.0, 1.0))
    half = 2
    for step, (inputs, conditioning, output) in enumerate(calls):
        assert inputs.shape[0] == 2 * half
        cond = run_blocks_by_hand(model, 0, inputs[:half], conditioning[:half])
        torch.testing.assert_close(output[:half], cond, rtol=0, atol=1e-6)  # the conditional half: every step
        if step % 3 == 0:
            full = step
            uncond = run_blocks_by_hand(model, 0, inputs[half:], conditioning[half:])
            torch.testing.assert_close(output[half:], uncond, rtol=0, atol=1e-6)
        else:
            # The unconditional half: its own residual from its last recompute, never the conditional one's.
            cached_in, _, cached_out = calls[full]
            expected = inputs[half:] + (cached_out[half:] - cached_in[half:])
            torch.testing.assert_close(output[half:], expected, rtol=0, atol=1e-6)


def test_a_second_call_starts_cold(pipe):
    model = pipe.transformer
    model.enable_cache(LevelCacheConfig(every=2))
    counts = count_block_runs(model)
    first = sample(pipe)
    first_counts = list(counts)
    second = sample(pipe)
    assert torch.equal(first, second)
    assert [c - f for c, f in zip(counts, first_counts)] == first_counts


def test_images_of_a_batch_do_not_share_state(pipe):
    pipe.transformer.enable_cache(LevelCacheConfig(every=3))
    together = sample(pipe, labels=(1, 2, 3))
    alone = sample(pipe, labels=(1,))
    torch.testing.assert_close(together[:1], alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "config",
    [
        TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=1, taylor_factors_dtype=torch.float32),
        PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 1001)
        ),
    ],
    ids=["taylorseer", "pab"],
)
def test_attention_caches_run_through_guided_batches_of_one(pipe, config):
    # At a batch of one, a cached (1, ...) attention output would broadcast silently into a (2, ...) guided batch:
    # the reset at the guidance interval's edge makes the first guided step recompute instead.
    expected = sample(pipe, labels=(1,), guidance_scale=2.0, guidance_interval=(0.0, 0.6))
    if isinstance(config, PyramidAttentionBroadcastConfig):
        config.current_timestep_callback = lambda: pipe.current_timestep
    pipe.transformer.enable_cache(config)
    output = sample(pipe, labels=(1,), guidance_scale=2.0, guidance_interval=(0.0, 0.6))
    assert output.shape == expected.shape
    error = (output - expected).abs().max().item()
    assert 0 < error < 0.1 * expected.abs().max().item()


REFUSED = [
    MagCacheConfig(mag_ratios=[1.0] * STEPS, num_inference_steps=STEPS),
    FasterCacheConfig(),
    SeaCacheConfig(),
    TextKVCacheConfig(),
]


@pytest.mark.parametrize("config", REFUSED, ids=lambda c: type(c).__name__)
def test_refused_caches_name_themselves(pipe, config):
    with pytest.raises(ValueError) as error:
        pipe.transformer.enable_cache(config)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{type(config).__name__} is not supported")
    assert not pipe.transformer.is_cache_enabled
    assert not any(getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks for m in pipe.transformer.modules())


def test_level_cache_config_errors(pipe):
    with pytest.raises(ValueError, match="`levels` must be non-empty, from \\(0,\\)"):
        pipe.transformer.enable_cache(LevelCacheConfig(levels=(1,)))
    with pytest.raises(ValueError, match="`every` .* or `threshold`"):
        LevelCacheConfig(every=2, threshold=0.1)
    with pytest.raises(ValueError, match="`every` must be an integer >= 1"):
        LevelCacheConfig(every=0)
    with pytest.raises(ValueError, match="already enabled"):
        pipe.transformer.enable_cache(LevelCacheConfig())
        pipe.transformer.enable_cache(LevelCacheConfig())
    single = tiny_pipeline(with_vae=False, patch_sizes=(2,), depths=(2,))
    with pytest.raises(ValueError, match="single level"):
        single.transformer.enable_cache(LevelCacheConfig())


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("level:3", LevelCacheConfig(every=3)),
        ("level:3,uncond=6,warmup=2", LevelCacheConfig(every=3, uncond_every=6, warmup_steps=2)),
        ("level-adaptive:0.05", LevelCacheConfig(threshold=0.05)),
        ("fbc:0.1", FirstBlockCacheConfig(threshold=0.1)),
    ],
)
def test_cache_specs(pipe, spec, expected):
    parsed = parse_cache(spec)
    assert str(parsed) == spec
    assert parsed.make_config(pipe) == expected


def test_cache_spec_front_end_pieces(pipe):
    taylor = parse_cache("taylorseer:4").make_config(pipe)
    assert taylor.cache_interval == 4 and taylor.taylor_factors_dtype == torch.float32
    pab = parse_cache("pab:2").make_config(pipe)
    assert pab.spatial_attention_block_skip_range == 2
    pipe._current_timestep = torch.tensor(500.0)
    assert pab.current_timestep_callback() == 500
    for bad, why in [("fast:2", "unknown cache"), ("level", "missing its setting"), ("level:", "an integer"),
                     ("level:0", ">= 1"), ("fbc:-1", ">= 0"), ("fbc:0.1,uncond=2", "unknown option"),
                     ("level:2,uncond=0", "uncond must be >= 1")]:  # fmt: skip
        with pytest.raises(ValueError, match=f"--cache '{bad}'.*{why}.*give one of level:K"):
            parse_cache(bad, "--cache")
    settings = SamplingConfig(cache="level:3,warmup=1").validate().settings(pipe)
    assert settings["cache"] == "level:3,warmup=1"
    assert "cache" not in SamplingConfig().settings(pipe)
    assert SamplingConfig.from_settings(settings).cache == "level:3,warmup=1"
    with pytest.raises(ValueError, match="--cache 'nope:1'"):
        SamplingConfig(cache="nope:1").validate({"cache": "--cache"})
    assert math.isclose(parse_cache("level-adaptive:0.05").value, 0.05)


def test_front_ends_enable_the_cache_through_the_sampling_configuration(tmp_path, capsys):
    from conftest import run_in_process, tiny_pipeline

    from diffusers_mpdit.cli import main as cli_main
    from diffusers_mpdit.sampling import load_pipeline

    saved = tiny_pipeline(with_vae=False, depths=(3, 3), sample_size=16)
    saved.save_pretrained(tmp_path / "model")
    loaded = load_pipeline(str(tmp_path / "model"), "cpu", cache="level:2,uncond=2")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.transformer._cache_config == LevelCacheConfig(every=2, uncond_every=2)
    saved.transformer.enable_cache(LevelCacheConfig(every=2, uncond_every=2))
    assert torch.equal(sample(loaded), sample(saved))
    with pytest.raises(ValueError, match="^cache 'mag:1'"):
        load_pipeline(str(tmp_path / "model"), "cpu", cache="mag:1")

    out = tmp_path / "grid.png"
    argv = ["generate", "--model", tmp_path / "model", "--steps", "3", "-o", out]
    code, _, err = run_in_process(cli_main, [*argv, "--cache", "fbc:0.1"], capsys)
    assert code == 0 and out.is_file(), err
    code, _, err = run_in_process(cli_main, [*argv, "--cache", "level:two"], capsys)
    assert code == 2 and "--cache 'level:two': the setting must be an integer" in err
    assert len(err.strip().splitlines()) == 1

    app = load_app()
    pipe = app.load(str(tmp_path / "model"), "cpu", cache="level:3")
    assert isinstance(pipe.transformer._cache_config, LevelCacheConfig)
    assert "with the cache `level:3`" in app.describe_model(pipe, str(tmp_path / "model"), cache="level:3")


def test_caches_run_around_compiled_blocks_and_in_a_compiled_model(pipe):
    import torch._dynamo

    model = pipe.transformer
    model.enable_cache(LevelCacheConfig(every=2))
    expected = sample(pipe)
    torch._dynamo.reset()
    try:
        # The eager backend traces as inductor would, without its compile time.
        pipe.transformer = torch.compile(model, backend="eager")
        torch.testing.assert_close(sample(pipe), expected, rtol=0, atol=1e-6)
        pipe.transformer = model
        model.compile_repeated_blocks(backend="eager", fullgraph=True)
        torch.testing.assert_close(sample(pipe), expected, rtol=0, atol=1e-6)
    finally:
        torch._dynamo.reset()
