"""MPDiTTransformer2DModel: presets, interface, sizes, options and bad input."""

import pytest
import torch
from conftest import tiny_inputs
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from diffusers_mpdit import PRESETS, MPDiTTransformer2DModel

# Trainable parameters of the official code at S = 32 (spec section 1).
OFFICIAL_TRAINABLE = {
    "MPDiT-B/4x": 104.607,
    "MPDiT-L/4x": 331.442,
    "MPDiT-XL/4x": 480.839,
    "MPDiTv2-B": 108.348,
    "MPDiTv2-L": 338.003,
    "MPDiTv2-XL": 489.105,
}


@pytest.mark.parametrize("name", list(OFFICIAL_TRAINABLE))
def test_preset_parameter_counts_equal_official(name):
    with torch.device("meta"):
        model = MPDiTTransformer2DModel.from_preset(name)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert round(trainable / 1e6, 3) == OFFICIAL_TRAINABLE[name]
    # Position tables are computed, not stored: nothing else is in the state dict.
    assert sum(v.numel() for v in model.state_dict().values()) == trainable


def test_presets_cover_the_official_names_and_a_tiny_one():
    assert set(OFFICIAL_TRAINABLE) | {"MPDiT-tiny"} == set(PRESETS)
    with torch.device("meta"):
        xl = MPDiTTransformer2DModel.from_preset("MPDiTv2-XL", num_classes=10, in_channels=3)
    assert list(xl.config.patch_sizes) == [8, 4, 2] and list(xl.config.depths) == [14, 8, 6]
    assert xl.config.num_classes == 10 and xl.config.in_channels == 3
    with pytest.raises(ValueError, match="Unknown MPDiT preset `name`='DiT-XL/2'; choose one of MPDiT-B/4x"):
        MPDiTTransformer2DModel.from_preset("DiT-XL/2")


def test_forward_returns_transformer2d_output_and_tuple(tiny_model):
    inputs = tiny_inputs()
    with torch.no_grad():
        out = tiny_model(**inputs)
        tup = tiny_model(**inputs, return_dict=False)
    assert isinstance(out, Transformer2DModelOutput) and isinstance(tup, tuple) and len(tup) == 1
    assert out.sample.shape == (2, 4, 16, 16)
    torch.testing.assert_close(out.sample, tup[0], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(tiny_model(**inputs).sample, out.sample, rtol=0, atol=0)  # deterministic


@pytest.mark.parametrize("size", [(16, 16), (32, 32), (16, 24), (8, 40), (4, 4)])
def test_any_multiple_of_the_coarsest_patch_works(tiny_model, size):
    inputs = tiny_inputs(height=size[0], width=size[1])
    with torch.no_grad():
        out = tiny_model(**inputs).sample
    assert out.shape == (2, 4, *size) and torch.isfinite(out).all()


def test_position_tables_are_cached_per_grid(tiny_model):
    tiny_model._pos_embed_cache.clear()
    with torch.no_grad():
        tiny_model(**tiny_inputs(height=16, width=24))
        tiny_model(**tiny_inputs(height=16, width=24))
    keys = sorted(k[:2] for k in tiny_model._pos_embed_cache)
    assert keys == [(4, 6), (8, 12)]
    assert not any(name.startswith("_pos") for name in tiny_model.state_dict())


def test_batch_elements_are_independent(tiny_model):
    inputs = tiny_inputs(batch_size=3)
    with torch.no_grad():
        batched = tiny_model(**inputs).sample
        single = tiny_model(inputs["hidden_states"][1:2], inputs["timestep"][1:2], inputs["class_labels"][1:2]).sample
    torch.testing.assert_close(batched[1:2], single, rtol=1e-5, atol=1e-5)


def test_scalar_timestep_and_labels_broadcast(tiny_model):
    x = tiny_inputs()["hidden_states"]
    with torch.no_grad():
        a = tiny_model(x, 0.3, 5).sample
        b = tiny_model(x, torch.tensor([0.3, 0.3]), torch.tensor([5, 5])).sample
        c = tiny_model(x, torch.tensor(0.3), torch.tensor([5])).sample
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_timestep_and_class_change_the_output(tiny_model):
    x = tiny_inputs()["hidden_states"]
    with torch.no_grad():
        base = tiny_model(x, 0.3, 5).sample
        assert not torch.allclose(base, tiny_model(x, 0.7, 5).sample)
        assert not torch.allclose(base, tiny_model(x, 0.3, 6).sample)


def test_no_labels_means_null_class(tiny_model):
    x = tiny_inputs()["hidden_states"]
    with torch.no_grad():
        torch.testing.assert_close(tiny_model(x, 0.5).sample, tiny_model(x, 0.5, 10).sample, rtol=0, atol=0)
    assert tiny_model.null_class_id == 10


def test_unconditional_model_has_no_class_tokens():
    model = MPDiTTransformer2DModel.from_preset("MPDiT-tiny", num_classes=0).eval()
    assert model.class_embed is None and model.null_class_id is None
    with torch.no_grad():
        out = model(torch.randn(2, 4, 16, 16), torch.rand(2)).sample
    assert out.shape == (2, 4, 16, 16)
    with pytest.raises(ValueError, match="`class_labels` must be None: this model is unconditional"):
        model(torch.randn(2, 4, 16, 16), torch.rand(2), torch.tensor([0, 1]))


@pytest.mark.parametrize(
    "overrides, in_channels, out_channels",
    [
        ({"time_embedding_type": "mlp"}, 4, 4),
        ({"skip_connections": False}, 4, 4),
        ({"out_channels": 8}, 4, 8),  # "joint"
        ({"in_channels": 1}, 1, 1),
        ({"in_channels": 3, "num_classes": 123, "num_class_tokens": 1}, 3, 3),
        ({"patch_sizes": (8, 4, 2), "depths": (1, 1, 1)}, 4, 4),
        ({"patch_sizes": (2,), "depths": (3,)}, 4, 4),  # isotropic: one level
        ({"patch_sizes": (4, 1), "depths": (1, 1)}, 4, 4),
        ({"mlp_ratio": 2.0}, 4, 4),
        ({"modulation": "per_block"}, 4, 4),
    ],
)
def test_options(overrides, in_channels, out_channels):
    model = MPDiTTransformer2DModel.from_preset("MPDiT-tiny", **overrides).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 16, 16), torch.rand(2), torch.tensor([0, 1])).sample
    assert out.shape == (2, out_channels, 16, 16)
    if overrides.get("skip_connections") is False:
        assert len(model.skip_embeds) == 0
    if "patch_sizes" in overrides:
        assert len(model.upsamplers) == len(overrides["patch_sizes"]) - 1


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda m: m(torch.randn(2, 3, 16, 16), 0.5, 1),
            r"`hidden_states` must have shape \(batch, 4, height, width\)",
        ),
        (lambda m: m(torch.randn(2, 4, 16), 0.5, 1), r"`hidden_states` must have shape"),
        (lambda m: m(torch.randn(2, 4, 16, 18), 0.5, 1), r"multiples of the coarsest patch size 4, got 16x18"),
        (lambda m: m(torch.randn(2, 4, 16, 16), 0.5, 11), r"`class_labels` must be in \[0, 10\]"),
        (lambda m: m(torch.randn(2, 4, 16, 16), 0.5, torch.tensor([0, -1])), r"`class_labels` must be in \[0, 10\]"),
        (lambda m: m(torch.randn(2, 4, 16, 16), 0.5, torch.tensor([0.0, 1.0])), r"`class_labels` must hold integer"),
        (
            lambda m: m(torch.randn(2, 4, 16, 16), torch.rand(3), 1),
            r"`timestep` must be a scalar or have shape \(2,\)",
        ),
        (lambda m: m(torch.randn(2, 4, 16, 16), 0.5, torch.tensor([1, 2, 3])), r"`class_labels` must be a scalar"),
    ],
)
def test_bad_input_names_the_argument(tiny_model, call, match):
    with pytest.raises(ValueError, match=match):
        call(tiny_model)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"patch_sizes": (4, 2), "depths": (1,)}, "`patch_sizes` and `depths` must be non-empty and of equal length"),
        ({"patch_sizes": (2, 4), "depths": (1, 1)}, "`patch_sizes` must be positive and each a larger multiple"),
        ({"patch_sizes": (6, 4), "depths": (1, 1)}, "`patch_sizes` must be positive and each a larger multiple"),
        ({"depths": (0, 1)}, "`depths` must all be at least 1"),
        ({"time_embedding_type": "sinusoidal"}, "`time_embedding_type` must be one of"),
        ({"num_classes": -1}, "`num_classes` must be >= 0"),
        ({"num_class_tokens": 0}, "`num_class_tokens` must be >= 1"),
        ({"attention_head_dim": 3, "num_attention_heads": 2}, "must be divisible by 4"),
        ({"fno_modes": 9, "fno_grid_size": 8}, "`fno_modes` must be at most"),
        ({"modulation": "adaln"}, "`modulation` must be one of"),
    ],
)
def test_bad_config_names_the_argument(overrides, match):
    with pytest.raises(ValueError, match=match):
        MPDiTTransformer2DModel.from_preset("MPDiT-tiny", **overrides)


def test_per_block_modulation_is_dits_adaln_in_every_block():
    torch.manual_seed(0)
    shared = MPDiTTransformer2DModel.from_preset("MPDiT-tiny").eval()
    with torch.no_grad():
        for p in shared.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    per_block = MPDiTTransformer2DModel.from_preset("MPDiT-tiny", modulation="per_block").eval()
    # Fresh: every block's adaLN and the final layer's start at zero (adaLN-Zero), and there is no shared one.
    assert per_block.shared_modulation is None
    names = {n for n, _ in per_block.named_parameters()}
    assert {"transformer_blocks.0.modulation.1.weight", "final_layer.modulation.1.weight"} <= names
    assert all(b.modulation[1].weight.abs().sum() == 0 for b in per_block.transformer_blocks)
    depth, dim = sum(per_block.config.depths), per_block.hidden_size
    extra = depth * (6 * dim * dim + 6 * dim) + (2 * dim * dim + 2 * dim) - (6 * dim * dim + 6 * dim)
    assert per_block.num_parameters() == shared.num_parameters() + extra

    # Given the shared weights in every block, and rows 3D..5D (shift_mlp, scale_mlp) in the final layer, it is the
    # shared model.
    state = {k: v for k, v in shared.state_dict().items() if not k.startswith("shared_modulation")}
    weight, bias = shared.shared_modulation[1].weight, shared.shared_modulation[1].bias
    for i in range(depth):
        state[f"transformer_blocks.{i}.modulation.1.weight"], state[f"transformer_blocks.{i}.modulation.1.bias"] = (
            weight,
            bias,
        )
    state["final_layer.modulation.1.weight"], state["final_layer.modulation.1.bias"] = (
        weight[3 * dim : 5 * dim],
        bias[3 * dim : 5 * dim],
    )
    per_block.load_state_dict(state, strict=True)
    inputs = tiny_inputs()
    with torch.no_grad():
        torch.testing.assert_close(per_block(**inputs).sample, shared(**inputs).sample, rtol=1e-5, atol=1e-6)
        # Its own weights, not the shared copy: perturbing one block's adaLN changes the output.
        per_block.transformer_blocks[1].modulation[1].bias.add_(0.5)
        assert (per_block(**inputs).sample - shared(**inputs).sample).abs().max() > 1e-3


def test_per_block_models_have_no_official_layout():
    from diffusers_mpdit.convert import ConversionError, diffusers_to_official

    model = MPDiTTransformer2DModel.from_preset("MPDiT-tiny", modulation="per_block")
    with pytest.raises(ConversionError, match="one shared modulation"):
        diffusers_to_official(model.state_dict(), model.config)


# --- loading errors ----------------------------------------------------------------------------------------------


def test_a_folder_under_home_loads_and_a_repo_id_still_goes_to_the_hub(tiny_model, tmp_path, monkeypatch, hub):
    tiny_model.save_pretrained(tmp_path / "model")
    monkeypatch.setenv("HOME", str(tmp_path))
    loaded = MPDiTTransformer2DModel.from_pretrained("~/model")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), tiny_model.state_dict().values()))
    with pytest.raises(OSError) as info:
        MPDiTTransformer2DModel.from_pretrained("alice/no-such-model")
    assert not isinstance(info.value, FileNotFoundError)
    assert any("alice/no-such-model" in path for _, path in hub.requests)


@pytest.mark.parametrize(
    "save_kwargs, pattern",
    [
        ({}, "diffusion_pytorch_model.safetensors"),
        ({"safe_serialization": False}, "diffusion_pytorch_model.bin"),
        ({"max_shard_size": "100KB"}, "diffusion_pytorch_model-00001-of-*.safetensors"),
    ],
    ids=["safetensors", "bin", "sharded"],
)
def test_a_truncated_weights_file_is_named_as_damaged(tiny_model, tmp_path, save_kwargs, pattern):
    tiny_model.save_pretrained(tmp_path / "transformer", **save_kwargs)
    (weights,) = (tmp_path / "transformer").glob(pattern)
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    for folder, kwargs in [(tmp_path / "transformer", {}), (tmp_path, {"subfolder": "transformer"})]:
        with pytest.raises(OSError) as info:
            MPDiTTransformer2DModel.from_pretrained(
                folder, use_safetensors=save_kwargs.get("safe_serialization", True), **kwargs
            )
        message = str(info.value)
        assert message.startswith(f"{str(weights)!r} is not a readable checkpoint: the file is damaged")
        assert "\n" not in message
