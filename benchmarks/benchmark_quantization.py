"""Memory and output error of the XL/4x transformer under each loading scheme, against float32 and bf16.

    python benchmarks/benchmark_quantization.py [--preset MPDiT-XL/4x] [--batch_size 4] [--output_json PATH (default: beside the script)]

The preset is built with the official initialisation, and its zero-initialised layers (modulation, output) are given
N(0, 0.02) weights so that every layer carries signal; it is saved once and loaded through
`MPDiTTransformer2DModel.from_pretrained` with each scheme:

- `float32`, `bf16`: `dtype=` (the FNO time embedding stays float32, `_keep_in_fp32_modules`);
- `torchao int8 weight-only`: `TorchAoConfig(Int8WeightOnlyConfig())`, bf16 activations;
- `quanto int8`, `quanto int8 + bf16`: `QuantoConfig(weights_dtype="int8")` with float32 or bf16 activations.

Memory is the bytes the weights hold, counting the int8 data and scales inside quantized tensors (diffusers'
`get_memory_footprint()` counts a quantized tensor at its outer dtype). The error is over a batch of random latents,
times and classes: relative RMS (||out - ref|| / ||ref||) and the largest absolute difference. bitsandbytes and fp8
need a CUDA GPU and are not measured here.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from timing import environment, write_result

from diffusers_mpdit import MPDiTTransformer2DModel
from diffusers_mpdit.sampling import quiet_backend_warnings


def stored_bytes(model: torch.nn.Module) -> int:
    """Bytes held by the model's parameters and buffers, looking inside tensor subclasses (torchao, Quanto)."""

    def size(tensor: torch.Tensor) -> int:
        if hasattr(tensor, "__tensor_flatten__") and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
            names, _ = tensor.__tensor_flatten__()
            return sum(size(getattr(tensor, name)) for name in names)
        return tensor.numel() * tensor.element_size()

    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += size(tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor)
    return total


def schemes() -> dict[str, dict]:
    from diffusers import QuantoConfig, TorchAoConfig
    from torchao.quantization import Int8WeightOnlyConfig

    return {
        "float32": {"dtype": torch.float32},
        "bf16": {"dtype": torch.bfloat16},
        "torchao int8 weight-only": {
            "dtype": torch.bfloat16,
            "quantization_config": TorchAoConfig(Int8WeightOnlyConfig()),
        },
        "quanto int8": {"dtype": torch.float32, "quantization_config": QuantoConfig(weights_dtype="int8")},
        "quanto int8 + bf16": {"dtype": torch.bfloat16, "quantization_config": QuantoConfig(weights_dtype="int8")},
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="MPDiT-XL/4x", help="a name of diffusers_mpdit.PRESETS")
    p.add_argument("--batch_size", type=int, default=4, help="latents in the batch the error is measured on")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights and the batch")
    p.add_argument("--output_json", help="where to write the figures (default: the .json beside this script)")
    args = p.parse_args(argv)
    quiet_backend_warnings()
    torch.manual_seed(args.seed)

    model = MPDiTTransformer2DModel.from_preset(args.preset)
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.normal_(0, 0.02)
    config = model.config
    g = torch.Generator().manual_seed(args.seed)
    size = config.sample_size
    latents = torch.randn(args.batch_size, config.in_channels, size, size, generator=g)
    timestep = torch.rand(args.batch_size, generator=g)
    labels = torch.randint(0, config.num_classes, (args.batch_size,), generator=g)

    outputs, memory = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        del model
        for name, kwargs in schemes().items():
            loaded = MPDiTTransformer2DModel.from_pretrained(folder, **kwargs)
            with torch.no_grad():
                outputs[name] = loaded(latents.to(kwargs["dtype"]), timestep, labels).sample.float()
            memory[name] = stored_bytes(loaded)
            print(f"{name}: {memory[name] / 2**20:.0f} MiB", flush=True)
            del loaded

    def error(name: str, reference: str) -> dict:
        diff = outputs[name] - outputs[reference]
        return {
            "relative_rms": float(torch.linalg.vector_norm(diff) / torch.linalg.vector_norm(outputs[reference])),
            "max_abs": float(diff.abs().max()),
        }

    rows = {
        name: {
            "memory_mib": memory[name] / 2**20,
            "memory_vs_float32": memory[name] / memory["float32"],
            "vs_float32": error(name, "float32"),
            "vs_bf16": error(name, "bf16"),
        }
        for name in outputs
    }
    print(f"\n{args.preset}, batch {args.batch_size}; output max |x| {outputs['float32'].abs().max():.2f}")
    print(
        f"{'scheme':26} {'MiB':>7} {'x fp32':>7} {'rRMS fp32':>10} {'max fp32':>9} {'rRMS bf16':>10} {'max bf16':>9}"
    )
    for name, row in rows.items():
        print(
            f"{name:26} {row['memory_mib']:7.1f} {row['memory_vs_float32']:7.2f} {row['vs_float32']['relative_rms']:10.4f}"
            f" {row['vs_float32']['max_abs']:9.4f} {row['vs_bf16']['relative_rms']:10.4f} {row['vs_bf16']['max_abs']:9.4f}"
        )
    import diffusers
    import optimum.quanto
    import torchao

    result = {
        "machine": environment(),
        "versions": {
            "diffusers": diffusers.__version__,
            "torchao": torchao.__version__,
            "optimum-quanto": optimum.quanto.__version__,
        },
        "settings": {"preset": args.preset, "batch_size": args.batch_size, "seed": args.seed},
        "schemes": rows,
    }
    write_result(__file__, result, args.output_json)
    return result


if __name__ == "__main__":
    main()
