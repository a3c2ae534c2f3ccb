"""Half-precision and quantized loading through diffusers' own paths: `_keep_in_fp32_modules`, `TorchAoConfig` (int8
weight-only), `QuantoConfig` (int8), for the model and for the pipeline (`PipelineQuantizationConfig`).

The bound, documented in docs/model.md: on the tiny model, the transformer's output under each scheme differs from
float32 by at most 3% in relative RMS (`||out - ref|| / ||ref||`); bf16 weights alone give about 1%.
"""

import numpy as np
import pytest
import torch
from conftest import tiny_inputs, tiny_pipeline
from torch import nn

from diffusers_mpdit import MPDiTPipeline, MPDiTTransformer2DModel

RELATIVE_RMS_BOUND = 0.03


def relative_rms(out, ref):
    return (torch.linalg.vector_norm(out.float() - ref) / torch.linalg.vector_norm(ref)).item()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny pipeline with live weights, saved; and the float32 transformer output and images to compare with."""
    folder = tmp_path_factory.mktemp("quant") / "pipe"
    pipe = tiny_pipeline()
    pipe.save_pretrained(folder)
    with torch.no_grad():
        velocity = pipe.transformer(**tiny_inputs()).sample
    return folder, velocity, generate(pipe)


def generate(pipe):
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        class_labels=["coat", "bag"],
        num_inference_steps=4,
        output_type="np",
        generator=torch.Generator().manual_seed(2),
    )
    return out.images


def run(model):
    inputs = tiny_inputs()
    inputs["hidden_states"] = inputs["hidden_states"].to(model.dtype)
    with torch.no_grad():
        return model(**inputs).sample


def time_embedding_is_float32_and_plain(model, but=()):
    """Every weight of the FNO time embedding (but the modules named in `but`) is an ordinary float32 tensor: not
    cast, not quantized."""
    for name, param in model.time_embed.named_parameters():
        if name.split(".")[0] in but:
            continue
        assert param.dtype == torch.float32, name
        assert type(param.data) in (torch.Tensor, nn.Parameter), (name, type(param.data))


def test_a_half_precision_load_keeps_the_time_embedding_float32(saved):
    folder, reference, _ = saved
    for dtype in (torch.bfloat16, torch.float16):
        model = MPDiTTransformer2DModel.from_pretrained(folder, subfolder="transformer", dtype=dtype)
        time_embedding_is_float32_and_plain(model)
        assert model.transformer_blocks[0].attn.to_q.weight.dtype == dtype
        out = run(model)
        assert out.dtype == dtype
        assert relative_rms(out, reference) < RELATIVE_RMS_BOUND


def quantization_configs():
    """(name, config, dtype, check that the blocks' Linears really are quantized)."""
    configs = []
    try:
        from diffusers import TorchAoConfig
        from torchao.quantization import Int8WeightOnlyConfig

        def torchao_quantized(linear):
            return type(linear.weight).__module__.startswith("torchao")

        configs.append(
            pytest.param(
                "torchao",
                lambda: TorchAoConfig(Int8WeightOnlyConfig()),
                torch.bfloat16,
                torchao_quantized,
                id="torchao-int8wo",
            )
        )
    except ImportError:
        configs.append(
            pytest.param(None, None, None, None, id="torchao-int8wo", marks=pytest.mark.skip("torchao absent"))
        )
    try:
        from diffusers import QuantoConfig
        from optimum.quanto import QLinear

        configs.append(
            pytest.param(
                "quanto",
                lambda: QuantoConfig(weights_dtype="int8"),
                torch.float32,
                lambda linear: isinstance(linear, QLinear),
                id="quanto-int8",
            )
        )
    except ImportError:
        configs.append(
            pytest.param(None, None, None, None, id="quanto-int8", marks=pytest.mark.skip("optimum-quanto absent"))
        )
    return configs


@pytest.mark.parametrize("backend, make_config, dtype, is_quantized", quantization_configs())
def test_quantized_model_from_pretrained(saved, backend, make_config, dtype, is_quantized):
    folder, reference, _ = saved
    model = MPDiTTransformer2DModel.from_pretrained(
        folder, subfolder="transformer", quantization_config=make_config(), dtype=dtype
    )
    assert is_quantized(model.transformer_blocks[0].attn.to_q) and is_quantized(model.transformer_blocks[-1].ff.net[2])
    # The one-input lift (which torchao cannot pack) and the rest of the FNO stay float32 and unquantized; Quanto
    # matches leaf names only, so it quantizes the FNO's last projection, an ordinary width x width Linear.
    time_embedding_is_float32_and_plain(model, but=("proj",) if backend == "quanto" else ())
    assert type(model.time_embed.lift) is nn.Linear
    error = relative_rms(run(model), reference)
    assert 0 < error < RELATIVE_RMS_BOUND, error


@pytest.mark.parametrize("backend, make_config, dtype, is_quantized", quantization_configs())
def test_quantized_pipeline_from_pretrained(saved, backend, make_config, dtype, is_quantized):
    from diffusers import PipelineQuantizationConfig

    folder, _, reference_images = saved
    pipe = MPDiTPipeline.from_pretrained(
        folder,
        quantization_config=PipelineQuantizationConfig(quant_mapping={"transformer": make_config()}),
        dtype={"transformer": dtype, "default": torch.float32},
    )
    assert is_quantized(pipe.transformer.transformer_blocks[0].attn.to_q)
    assert pipe.vae.dtype == torch.float32 and type(pipe.vae.decoder.conv_in.weight.data) is torch.Tensor
    images = generate(pipe)
    # Images on a 0..1 scale; the same noise, so only the quantization error separates them.
    assert 0 < np.abs(images - reference_images).mean() < 0.005
