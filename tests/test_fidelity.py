"""Pins every detail of the specification that could drift, and checks the whole model against the reference."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_inputs
from diffusers.models.embeddings import get_2d_sincos_pos_embed
from official_reference import OfficialMPDiT, mae_2d_sincos, randomize_
from torch import nn
from torch.overrides import TorchFunctionMode

from diffusers_mpdit import MPDiTTransformer2DModel
from diffusers_mpdit.convert import diffusers_to_official, official_to_diffusers
from diffusers_mpdit.models.embeddings import FNOTimestepEmbedding, get_2d_sincos_pos_embed_grid
from diffusers_mpdit.models.transformer_mpdit import shuffle_tokens, unpatchify

REFERENCE_VARIANTS = {
    "two-level": {},
    "three-level": {"levels": 3, "depths": (2, 1, 1)},
    "mlp-time-no-skip-joint": {"time_embed": "mlp", "skip": False, "joint": True},
    "three-level-joint-mlp": {"levels": 3, "depths": (1, 1, 2), "time_embed": "mlp", "joint": True},
    "more-classes-tokens": {"num_classes": 37, "class_tokens": 3, "in_channels": 3},
}


def converted_pair(variant, seed=0):
    torch.manual_seed(seed)
    reference = randomize_(OfficialMPDiT(**REFERENCE_VARIANTS[variant]), seed).eval()
    config, state_dict = official_to_diffusers(reference.state_dict(), num_attention_heads=4)
    model = MPDiTTransformer2DModel(**config).eval()
    model.load_state_dict(state_dict, strict=True)
    return reference, model


@pytest.mark.parametrize("variant", list(REFERENCE_VARIANTS))
def test_converted_weights_reproduce_reference_forward(variant):
    reference, model = converted_pair(variant)
    channels = REFERENCE_VARIANTS[variant].get("in_channels", 4)
    num_classes = REFERENCE_VARIANTS[variant].get("num_classes", 10)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(3, channels, 32, 32, generator=g), torch.rand(3, generator=g)
    y = torch.tensor([0, num_classes // 2, num_classes])  # num_classes is the null class
    with torch.no_grad():
        expected, actual = reference(x, t, y), model(x, t, y).sample
        assert expected.abs().max() > 0.1  # a live output, not a zero-initialised one
        torch.testing.assert_close(actual, expected, rtol=0, atol=2e-6)

        # In float64 every float32 rounding difference disappears: only a structural difference would remain. The
        # official tables are stored in float32, so give the reference exact ones for this comparison.
        reference.double()
        model.double()
        for name in reference.pos_names:
            table = getattr(reference, name)
            side = math.isqrt(table.shape[1])
            table.copy_(get_2d_sincos_pos_embed_grid(table.shape[2], side, side)[None])
        expected, actual = reference(x.double(), t.double(), y), model(x.double(), t.double(), y).sample
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant", list(REFERENCE_VARIANTS))
def test_round_trip_official_ours_official_is_bit_identical(variant):
    reference, _ = converted_pair(variant)
    official = reference.state_dict()
    config, ours = official_to_diffusers(official, num_attention_heads=4)
    back = diffusers_to_official(ours, config)
    assert back.keys() == official.keys()
    for key, value in official.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key


def test_pixel_shuffle_order_matches_spec():
    b, h, w, d, f = 2, 2, 3, 5, 2
    tokens = torch.randn(b, h * w, d * f * f)
    out = shuffle_tokens(tokens, h, w, f)
    assert out.shape == (b, h * f * w * f, d)
    for y in range(h):
        for x in range(w):
            for c in range(d):
                for i in range(f):
                    for j in range(f):
                        new = (y * f + i) * (w * f) + (x * f + j)
                        assert out[0, new, c] == tokens[0, y * w + x, (c * f + i) * f + j]
    # ... which is torch's pixel_shuffle on the feature map.
    fmap = tokens.transpose(1, 2).reshape(b, d * f * f, h, w)
    torch.testing.assert_close(out, F.pixel_shuffle(fmap, f).flatten(2).transpose(1, 2), rtol=0, atol=0)


def test_unpatchify_order_matches_spec():
    b, h, w, p, c = 2, 3, 2, 2, 4
    tokens = torch.randn(b, h * w, p * p * c)
    out = unpatchify(tokens, h, w, p)
    assert out.shape == (b, c, h * p, w * p)
    for y in range(h):
        for x in range(w):
            for pp in range(p):
                for q in range(p):
                    for ch in range(c):
                        assert out[1, ch, y * p + pp, x * p + q] == tokens[1, y * w + x, (pp * p + q) * c + ch]


def test_sincos_first_half_encodes_columns_second_half_rows():
    dim, h, w = 16, 3, 5
    table = get_2d_sincos_pos_embed_grid(dim, h, w)
    omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim / 4))

    def one_axis(pos):
        return np.concatenate([np.sin(pos * omega), np.cos(pos * omega)])

    for y in range(h):
        for x in range(w):
            row = table[y * w + x].numpy()
            np.testing.assert_allclose(row[: dim // 2], one_axis(x), atol=1e-15)
            np.testing.assert_allclose(row[dim // 2 :], one_axis(y), atol=1e-15)


@pytest.mark.parametrize("side", [4, 8, 16, 32])
def test_sincos_square_tables_equal_mae_and_diffusers_with_base_size(side):
    ours = get_2d_sincos_pos_embed_grid(64, side, side)
    np.testing.assert_allclose(ours.numpy(), mae_2d_sincos(64, side), rtol=0, atol=1e-13)
    diffusers_table = get_2d_sincos_pos_embed(64, side, base_size=side, output_type="pt")
    torch.testing.assert_close(ours.float(), diffusers_table.float(), rtol=0, atol=1e-6)


def test_larger_grids_extend_the_training_table():
    # Positions are integer indices, not rescaled: the top-left corner of a larger grid is the smaller grid.
    small, large = get_2d_sincos_pos_embed_grid(32, 8, 8), get_2d_sincos_pos_embed_grid(32, 16, 24)
    torch.testing.assert_close(large.reshape(16, 24, 32)[:8, :8].reshape(64, 32), small, rtol=0, atol=0)


def fno_float64_numpy(t, lift_w, lift_b, spectral, pointwise, proj_w, proj_b, grid_size, modes):
    """Section 3, written with numpy's FFT in float64."""
    out = []
    for ti in t:
        x = np.linspace(-1, 1, grid_size) + ti  # (G,)
        x = lift_w[:, 0][:, None] * x[None, :] + lift_b[:, None]  # (W, G)
        for i, ((wr, wi), (cw, cb)) in enumerate(zip(spectral, pointwise)):
            spectrum = np.fft.rfft(x, axis=-1)  # (W, G//2+1)
            mixed = np.zeros((wr.shape[1], grid_size // 2 + 1), dtype=np.complex128)
            for o in range(wr.shape[1]):
                for k in range(modes):
                    mixed[o, k] = np.sum(spectrum[:, k] * (wr[:, o, k] + 1j * wi[:, o, k]))
            x = np.fft.irfft(mixed, n=grid_size, axis=-1) + (cw[:, :, 0] @ x + cb[:, None])
            if i < len(spectral) - 1:
                x = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))  # exact GELU
        out.append(proj_w @ x.mean(axis=-1) + proj_b)
    return np.stack(out)


def test_fno_time_embedding_matches_float64_implementation_of_section_3():
    torch.manual_seed(0)
    fno = FNOTimestepEmbedding(embed_dim=24, width=32, modes=16, grid_size=32)
    with torch.no_grad():
        for conv in fno.pointwise_convs:
            conv.weight.normal_(0, 0.2)
        for spectral in fno.spectral_convs:
            spectral.weight_real.mul_(0.05)
            spectral.weight_imag.mul_(0.05)
    t = torch.tensor([0.0, 0.1234, 0.5, 0.999, 1.0])
    n = lambda p: p.detach().double().numpy()  # noqa: E731
    expected = fno_float64_numpy(
        t.double().numpy(),
        n(fno.lift.weight),
        n(fno.lift.bias),
        [(n(s.weight_real), n(s.weight_imag)) for s in fno.spectral_convs],
        [(n(c.weight), n(c.bias)) for c in fno.pointwise_convs],
        n(fno.proj.weight),
        n(fno.proj.bias),
        32,
        16,
    )
    with torch.no_grad():
        actual = fno(t).double().numpy()
        assert np.abs(expected).max() > 0.1
        np.testing.assert_allclose(actual, expected, rtol=0, atol=2e-5 * np.abs(expected).max())
        np.testing.assert_allclose(fno.double()(t.double()).numpy(), expected, rtol=0, atol=1e-10)


def test_exactly_one_modulation_linear_and_blocks_own_none():
    with torch.device("meta"):
        model = MPDiTTransformer2DModel.from_preset("MPDiTv2-XL")
    dim = model.hidden_size
    modulation = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == 6 * dim]
    assert modulation == ["shared_modulation.1"]
    for block in model.transformer_blocks:
        names = {name.split(".")[0] for name, _ in block.named_parameters()}
        assert names == {"attn", "ff"}
    assert [name for name, _ in model.final_layer.named_parameters()] == ["linear.weight", "linear.bias"]


class _RecordGelu(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.gelu:
            self.calls.append(kwargs.get("approximate", args[1] if len(args) > 1 else "none"))
        return func(*args, **kwargs)


def test_gelu_variants_exact_in_fno_tanh_in_mlp_and_upsampler(tiny_model):
    t = torch.rand(2)
    with _RecordGelu() as rec, torch.no_grad():
        tiny_model.time_embed(t)
    assert rec.calls == ["none", "none"]  # after the first and second Fourier layers only

    with _RecordGelu() as rec, torch.no_grad():
        tiny_model.upsamplers[0](torch.randn(2, 4 + 16, 32), 4, 4, 4)
    assert rec.calls == ["tanh"]

    with _RecordGelu() as rec, torch.no_grad():
        tiny_model.transformer_blocks[0](torch.randn(2, 20, 32), torch.randn(2, 6, 1, 32))
    assert rec.calls == ["tanh"]


def _capture_inputs(module):
    seen = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    return seen, handle


def test_no_positions_on_class_tokens_and_refine_applies_to_them(tiny_model):
    inputs = tiny_inputs()
    m = tiny_model.config.num_class_tokens
    first_block, first_fine_block = tiny_model.transformer_blocks[0], tiny_model.transformer_blocks[2]
    seen_first, h1 = _capture_inputs(first_block)
    seen_fine, h2 = _capture_inputs(first_fine_block)
    seen_up, h3 = _capture_inputs(tiny_model.upsamplers[0])
    with torch.no_grad():
        tiny_model(**inputs)
        class_tokens = tiny_model.class_embed(inputs["class_labels"])
        upsampler = tiny_model.upsamplers[0]
        refined = upsampler.refine(upsampler.norm(seen_up[0][:, :m]))
    for h in (h1, h2, h3):
        h.remove()
    # Level 0: the class tokens enter the first block exactly as embedded.
    torch.testing.assert_close(seen_first[0][:, :m], class_tokens, rtol=0, atol=0)
    # Level 1: they went through LayerNorm + refine, and got neither a position nor a skip.
    torch.testing.assert_close(seen_fine[0][:, :m], refined, rtol=0, atol=0)
    assert not torch.allclose(seen_up[0][:, :m], seen_fine[0][:, :m])


def test_official_initialisation():
    torch.manual_seed(0)
    model = MPDiTTransformer2DModel.from_preset("MPDiT-B/4x", depths=(1, 1))
    dim = model.hidden_size
    assert torch.count_nonzero(model.shared_modulation[1].weight) == 0
    assert torch.count_nonzero(model.final_layer.linear.weight) == 0
    assert torch.count_nonzero(model.final_layer.linear.bias) == 0
    # Attention q/k/v are drawn as one (3D, D) Xavier matrix, as the official fused qkv Linear.
    attn = model.transformer_blocks[0].attn
    qkv = torch.cat([attn.to_q.weight, attn.to_k.weight, attn.to_v.weight])
    bound = math.sqrt(6 / (dim + 3 * dim))
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.99 * bound
    proj = model.transformer_blocks[0].ff.net[0].proj.weight
    assert proj.abs().max() <= math.sqrt(6 / (dim + 4 * dim))
    conv = model.patch_embed.proj.weight
    assert conv.abs().max() <= math.sqrt(6 / (dim + conv[0].numel()))
    for name, p in model.named_parameters():
        if name.endswith("bias") and "pointwise_convs" not in name:
            assert torch.count_nonzero(p) == 0, name
    assert abs(model.class_embed.embedding_table.weight.std().item() - 0.02) < 1e-3
    assert abs(model.time_embed.spectral_convs[0].weight_real.std().item() - 1.0) < 0.05
    mlp = MPDiTTransformer2DModel.from_preset("MPDiT-B/4x", depths=(1, 1), time_embedding_type="mlp")
    assert abs(mlp.time_embed.timestep_embedder.linear_1.weight.std().item() - 0.02) < 2e-3
