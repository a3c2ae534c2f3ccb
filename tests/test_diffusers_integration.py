"""What diffusers users expect of a model: save/load, attention backends, fusion, checkpointing, offload, compile."""

import json
import os

import pytest
import torch
from conftest import tiny_inputs
from diffusers.training_utils import EMAModel
from torch.overrides import TorchFunctionMode

from diffusers_mpdit import MPDiTTransformer2DModel
from diffusers_mpdit.models import MPDiTAttnProcessor


def run(model, inputs=None):
    with torch.no_grad():
        return model(**(inputs or tiny_inputs())).sample


def test_save_load_round_trip_in_safetensors(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "transformer_mpdit.py",
    ]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "MPDiTTransformer2DModel" and config["patch_sizes"] == [4, 2]
    loaded = MPDiTTransformer2DModel.from_pretrained(tmp_path)
    assert not loaded.training
    torch.testing.assert_close(run(loaded), run(tiny_model), rtol=0, atol=0)


def test_variant_and_dtype(tiny_model, tmp_path):
    tiny_model.to(torch.float16).save_pretrained(tmp_path, variant="fp16")
    assert (tmp_path / "diffusion_pytorch_model.fp16.safetensors").exists()
    with pytest.raises(OSError):
        MPDiTTransformer2DModel.from_pretrained(tmp_path)
    loaded = MPDiTTransformer2DModel.from_pretrained(tmp_path, variant="fp16", dtype=torch.float16)
    assert loaded.dtype == torch.float16
    # The same values; the time embedding (`_keep_in_fp32_modules`) comes back upcast to float32.
    saved, back = tiny_model.state_dict(), loaded.state_dict()
    assert {k for k, v in back.items() if v.dtype == torch.float32} == {k for k in back if k.startswith("time_embed.")}
    torch.testing.assert_close({k: v.half() for k, v in back.items()}, saved, rtol=0, atol=0)
    loaded = MPDiTTransformer2DModel.from_pretrained(tmp_path, variant="fp16", dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16


def test_device_map_auto_loads(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    loaded = MPDiTTransformer2DModel.from_pretrained(tmp_path, device_map="auto")
    torch.testing.assert_close(run(loaded), run(tiny_model), rtol=0, atol=0)


def test_attention_processors(tiny_model):
    processors = tiny_model.attn_processors
    assert len(processors) == sum(tiny_model.config.depths)
    assert all(isinstance(p, MPDiTAttnProcessor) for p in processors.values())
    tiny_model.set_attn_processor({k: MPDiTAttnProcessor() for k in processors})
    with pytest.raises(ValueError, match="number of processors"):
        tiny_model.set_attn_processor({k: MPDiTAttnProcessor() for k in list(processors)[:1]})


class _RecordOps(TorchFunctionMode):
    def __init__(self, *funcs):
        super().__init__()
        self.funcs, self.calls = funcs, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.funcs:
            self.calls.append((func.__name__, [a.dtype for a in args if isinstance(a, torch.Tensor)]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", ["native", "_native_math", "_native_flash", "flex"])
def test_every_attention_backend_that_runs_on_cpu_gives_the_default_output(tiny_model, backend, monkeypatch):
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    expected = run(tiny_model)
    with _RecordOps(torch.nn.functional.scaled_dot_product_attention) as rec:
        run(tiny_model)
    assert len(rec.calls) == sum(tiny_model.config.depths)  # native SDPA by default
    # Count the calls of the chosen backend's kernel, so that a processor ignoring the setting fails.
    name = AttentionBackendName(backend)
    kernel, calls = _AttentionBackendRegistry._backends[name], []

    def counted(*args, **kwargs):
        calls.append(1)
        return kernel(*args, **kwargs)

    monkeypatch.setitem(_AttentionBackendRegistry._backends, name, counted)
    tiny_model.set_attention_backend(backend)
    try:
        assert all(p._attention_backend == backend for p in tiny_model.attn_processors.values())
        torch.testing.assert_close(run(tiny_model), expected, rtol=1e-5, atol=1e-5)
        assert len(calls) == sum(tiny_model.config.depths)
    finally:
        tiny_model.reset_attention_backend()
        _AttentionBackendRegistry._active_backend = "native"  # reset_attention_backend leaves the global set


def test_attention_by_hand_equals_the_processor(tiny_model):
    # Softmax(q k^T / sqrt(d)) v per head over all tokens, written out, against the module's dispatch processor.
    attn = tiny_model.transformer_blocks[0].attn
    x = torch.randn(2, 20, tiny_model.hidden_size)
    heads = tiny_model.config.num_attention_heads
    q, k, v = (f(x).unflatten(-1, (heads, -1)).transpose(1, 2) for f in (attn.to_q, attn.to_k, attn.to_v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    expected = attn.to_out[0]((weights @ v).transpose(1, 2).flatten(2))
    with torch.no_grad():
        torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)


def test_unknown_attention_backend_is_refused(tiny_model):
    with pytest.raises(ValueError, match="must be one of"):
        tiny_model.set_attention_backend("no-such-backend")


def test_xformers_without_cuda_is_a_clear_error(tiny_model):
    with pytest.raises((ModuleNotFoundError, ValueError), match="xformers|cuda"):
        tiny_model.enable_xformers_memory_efficient_attention()


def test_fused_qkv_projections_give_the_same_output(tiny_model):
    expected = run(tiny_model)
    tiny_model.fuse_qkv_projections()
    attn = tiny_model.transformer_blocks[0].attn
    assert attn.fused_projections and attn.to_qkv.weight.shape == (96, 32)
    torch.testing.assert_close(run(tiny_model), expected, rtol=1e-6, atol=1e-6)
    tiny_model.unfuse_qkv_projections()
    assert not hasattr(attn, "to_qkv")
    torch.testing.assert_close(run(tiny_model), expected, rtol=0, atol=0)


def _loss_and_grads(model, inputs):
    model.zero_grad()
    loss = model(**inputs).sample.square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_identical_gradients(tiny_model):
    tiny_model.train()
    inputs = tiny_inputs()
    loss, grads = _loss_and_grads(tiny_model, inputs)
    tiny_model.enable_gradient_checkpointing()
    assert tiny_model.is_gradient_checkpointing
    flagged = {type(m).__name__ for m in tiny_model.modules() if getattr(m, "gradient_checkpointing", False)}
    assert flagged == {"MPDiTTransformer2DModel", "MPDiTLevel"}  # the levels run the blocks
    loss_ckpt, grads_ckpt = _loss_and_grads(tiny_model, inputs)
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)
    assert grads.keys() == grads_ckpt.keys() and len(grads) == len(list(tiny_model.parameters()))
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=0, atol=0)
    tiny_model.disable_gradient_checkpointing()
    assert not tiny_model.is_gradient_checkpointing


def test_train_mode_is_deterministic_and_ema_steps(tiny_model):
    tiny_model.train()
    inputs = tiny_inputs()
    torch.testing.assert_close(tiny_model(**inputs).sample, tiny_model(**inputs).sample, rtol=0, atol=0)
    ema = EMAModel(tiny_model.parameters(), decay=0.9)
    _loss_and_grads(tiny_model, inputs)
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.sub_(0.1 * p.grad)
    ema.step(tiny_model.parameters())
    assert ema.optimization_step == 1


def test_layerwise_casting(tiny_model):
    expected = run(tiny_model)
    tiny_model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    assert tiny_model.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    assert tiny_model.time_embed.lift.weight.dtype == torch.float32  # sensitive layers stay as they are
    assert tiny_model.patch_embed.proj.weight.dtype == torch.float32
    out = run(tiny_model)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - expected).abs().mean() < 0.1 * expected.abs().mean()


@pytest.mark.parametrize("offload_type", ["block_level", "leaf_level"])
def test_group_offloading(tiny_model, offload_type):
    expected = run(tiny_model)
    kwargs = {"num_blocks_per_group": 1} if offload_type == "block_level" else {}
    tiny_model.enable_group_offload(torch.device("cpu"), torch.device("cpu"), offload_type=offload_type, **kwargs)
    torch.testing.assert_close(run(tiny_model), expected, rtol=0, atol=0)


def test_compile_fullgraph_without_recompiles(tiny_model):
    torch._dynamo.reset()
    expected = run(tiny_model)
    compiled = torch.compile(tiny_model, fullgraph=True, backend="aot_eager")
    with torch._dynamo.config.patch(error_on_recompile=True):
        first = run(compiled)
        run(compiled, tiny_inputs(seed=1))
        torch.testing.assert_close(run(compiled), first, rtol=0, atol=0)
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)


def test_compile_repeated_blocks(tiny_model):
    torch._dynamo.reset()
    expected = run(tiny_model)
    tiny_model.compile_repeated_blocks(fullgraph=True, backend="aot_eager")
    # The first call compiles the block once per level: each level has its own sequence length.
    torch.testing.assert_close(run(tiny_model), expected, rtol=1e-5, atol=1e-5)
    with torch._dynamo.config.patch(error_on_recompile=True):
        run(tiny_model)
        run(tiny_model, tiny_inputs(seed=1))


def test_inductor_compile_matches_eager(tiny_model):
    torch._dynamo.reset()
    expected = run(tiny_model)
    compiled = torch.compile(tiny_model, backend="inductor")
    torch.testing.assert_close(run(compiled), expected, rtol=1e-4, atol=1e-4)
    torch._dynamo.reset()


def test_bf16_forward_keeps_the_fft_in_float32(tiny_model):
    expected = run(tiny_model)
    inputs = tiny_inputs()
    fft_ops = (torch.fft.rfft, torch.fft.irfft)
    with _RecordOps(*fft_ops) as rec, torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast_out = tiny_model(**inputs).sample
    assert rec.calls and all(dtypes[0] in (torch.float32, torch.complex64) for _, dtypes in rec.calls)
    # bf16 carries 8 bits of mantissa: the autocast output within 2% of the float32 one's range.
    assert (autocast_out.float() - expected).abs().max() < 0.02 * expected.abs().max()

    tiny_model.to(torch.bfloat16)
    inputs["hidden_states"] = inputs["hidden_states"].bfloat16()
    with _RecordOps(*fft_ops) as rec:
        out = run(tiny_model, inputs)
    assert out.dtype == torch.bfloat16
    assert rec.calls and all(dtypes[0] in (torch.float32, torch.complex64) for _, dtypes in rec.calls)
    assert (out.float() - expected).abs().max() < 0.05 * expected.abs().max()
