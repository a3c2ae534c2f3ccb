"""MPDiT against diffusers' DiTTransformer2DModel: parameters, multiply-adds, forward and training-step time.

    python benchmarks/benchmark_model.py                     # everything, CPU, fp32
    python benchmarks/benchmark_model.py --sections forward --device cuda --dtype bfloat16 --compile

Every ratio is measured side by side in one run: the two models alternate, the medians of the repeats are compared,
and min, median and max are printed. Writes `benchmark_model.json` beside this script.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from diffusers import DiTTransformer2DModel
from timing import describe, environment, spread, time_alternating, write_result
from torch.utils.flop_counter import FlopCounterMode

from diffusers_mpdit import BUNDLED_MODEL, MPDiTTransformer2DModel

# Spec section 1 (trainable parameters, millions) and section 8 (GMACs per 256-px image, attention included).
OFFICIAL_TRAINABLE_M = {
    "MPDiT-B/4x": 104.607,
    "MPDiT-L/4x": 331.442,
    "MPDiT-XL/4x": 480.839,
    "MPDiTv2-B": 108.348,
    "MPDiTv2-L": 338.003,
    "MPDiTv2-XL": 489.105,
}
OFFICIAL_GMACS = {"MPDiT-B/4x": 16.17, "MPDiT-XL/4x": 56.43}
DIT_CONFIGS = {
    "DiT-B/2": {"num_attention_heads": 12, "attention_head_dim": 64, "num_layers": 12},
    "DiT-L/2": {"num_attention_heads": 16, "attention_head_dim": 64, "num_layers": 24},
    "DiT-XL/2": {"num_attention_heads": 16, "attention_head_dim": 72, "num_layers": 28},
}


def build_dit(name: str) -> DiTTransformer2DModel:
    return DiTTransformer2DModel(
        in_channels=4, out_channels=8, sample_size=32, patch_size=2, num_embeds_ada_norm=1000, **DIT_CONFIGS[name]
    )


def _sdpa_flops(q_shape, k_shape, v_shape, *args, **kwargs) -> int:
    b, h, s_q, d = q_shape
    s_k, d_v = k_shape[-2], v_shape[-1]
    return 2 * b * h * s_q * s_k * d + 2 * b * h * s_q * s_k * d_v


def count_gmacs(model: torch.nn.Module, is_dit: bool) -> float:
    """Multiply-adds (the DiT papers' "GFLOPs") of one 256-px image, SDPA included (FlopCounterMode skips it on CPU)."""
    aten = torch.ops.aten
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
    x, t, y = torch.randn(1, 4, 32, 32), torch.tensor([0.5]), torch.tensor([1])
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        if is_dit:
            model(x, timestep=t * 1000, class_labels=y)
        else:
            model(x, t, y)
    return counter.get_total_flops() / 2 / 1e9


def section_params() -> dict:
    print("\n## Parameters (trainable, millions; the official code at 256 px)\n")
    print("| preset | ours | official | equal |\n| --- | --- | --- | --- |")
    result = {}
    for name, official in OFFICIAL_TRAINABLE_M.items():
        with torch.device("meta"):
            model = MPDiTTransformer2DModel.from_preset(name)
        ours = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
        print(f"| {name} | {ours:.3f} | {official:.3f} | {'yes' if round(ours, 3) == official else 'NO'} |")
        result[name] = {"millions": ours, "official": official}
    bundled = MPDiTTransformer2DModel.from_pretrained(BUNDLED_MODEL, subfolder="transformer")
    result["bundled"] = {"millions": sum(p.numel() for p in bundled.parameters() if p.requires_grad) / 1e6}
    print(f"| bundled Fashion-MNIST model | {result['bundled']['millions']:.3f} | | |")
    return result


def section_flops() -> dict:
    print("\n## Multiply-adds per 256-px image (GMACs, attention included)\n")
    print("| model | GMACs | official | difference | vs DiT |\n| --- | --- | --- | --- | --- |")
    dit, result = {}, {}
    for name in DIT_CONFIGS:
        dit[name] = count_gmacs(build_dit(name).eval(), is_dit=True)
        print(f"| diffusers {name} | {dit[name]:.2f} | | | 1.000 |")
        result[name] = {"gmacs": dit[name]}
    for name in OFFICIAL_TRAINABLE_M:
        torch.manual_seed(0)
        gmacs = count_gmacs(MPDiTTransformer2DModel.from_preset(name).eval(), is_dit=False)
        official = OFFICIAL_GMACS.get(name)
        diff = f"{100 * (gmacs - official) / official:+.2f}%" if official else ""
        baseline = "DiT-" + name.split("-")[1].split("/")[0] + "/2"
        print(f"| {name} | {gmacs:.2f} | {official or ''} | {diff} | {gmacs / dit[baseline]:.3f} x {baseline} |")
        result[name] = {"gmacs": gmacs, "official": official, "ratio": gmacs / dit[baseline], "baseline": baseline}
    return result


def compare(label: str, fns: dict[str, callable], repeats: int, sync) -> dict:
    times = time_alternating(fns, repeats, sync)
    (a, ta), (b, tb) = times.items()
    ratio = statistics.median(ta) / statistics.median(tb)
    print(f"| {label} | {describe(ta)} | {describe(tb)} | {ratio:.3f} |")
    return {"seconds": {name: spread(ts) for name, ts in times.items()}, "ratio": ratio}


def section_forward(args, device, dtype, sync) -> dict:
    print(f"\n## Forward pass, batch {args.batch_size}, {device.type}, {str(dtype)[6:]}, compile={args.compile}\n")
    print("| comparison | MPDiT: median (min, max) | DiT: median (min, max) | ratio of medians |")
    print("| --- | --- | --- | --- |")
    pairs = [("MPDiT-XL/4x", "DiT-XL/2")] + ([("MPDiT-B/4x", "DiT-B/2")] if args.also_b else [])
    result = {}
    for mpdit_name, dit_name in pairs:
        models = {mpdit_name: MPDiTTransformer2DModel.from_preset(mpdit_name), dit_name: build_dit(dit_name)}
        fns = {name: _forward_fn(model, args, device, dtype) for name, model in models.items()}
        result[f"{mpdit_name} / {dit_name}"] = compare(f"{mpdit_name} / {dit_name}", fns, args.repeats, sync)
        del models, fns
    return result


def _forward_fn(model, args, device, dtype):
    model = model.to(device).eval()
    if dtype != torch.float32:
        model = model.to(dtype)
    is_dit = isinstance(model, DiTTransformer2DModel)
    if args.compile:
        model = torch.compile(model)
    x = torch.randn(args.batch_size, 4, 32, 32, device=device, dtype=dtype)
    t = torch.rand(args.batch_size, device=device)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)

    @torch.no_grad()
    def run():
        if is_dit:
            model(x, timestep=t * 1000, class_labels=y)
        else:
            model(x, t, y)

    return run


def section_train(args, device, dtype, sync) -> dict:
    print(f"\n## Training step (forward + backward + AdamW), batch {args.train_batch_size}, {device.type}, fp32\n")
    print("| comparison | MPDiT: median (min, max) | DiT: median (min, max) | ratio of medians |")
    print("| --- | --- | --- | --- |")
    torch.manual_seed(0)
    mpdit = MPDiTTransformer2DModel.from_preset("MPDiT-B/4x").to(device).train()
    dit = build_dit("DiT-B/2").to(device).train()
    bs = args.train_batch_size
    x = torch.randn(bs, 4, 32, 32, device=device)
    target = torch.randn(bs, 4, 32, 32, device=device)
    t = torch.rand(bs, device=device)
    y = torch.randint(0, 1000, (bs,), device=device)

    def step(model, opt, forward):
        def fn():
            opt.zero_grad(set_to_none=True)
            out = forward(model)
            torch.nn.functional.mse_loss(out[:, :4], target).backward()
            opt.step()

        return fn

    opt_m = torch.optim.AdamW(mpdit.parameters(), lr=1e-4)
    opt_d = torch.optim.AdamW(dit.parameters(), lr=1e-4)
    return compare(
        "MPDiT-B/4x / DiT-B/2",
        {
            "MPDiT-B/4x": step(mpdit, opt_m, lambda m: m(x, t, y).sample),
            "DiT-B/2": step(dit, opt_d, lambda m: m(x, timestep=t * 1000, class_labels=y).sample),
        },
        args.repeats,
        sync,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sections", default="params,flops,forward,train", help="comma-separated: params, flops, forward, train"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="weights' dtype (default float32)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile both models (forward section)")
    parser.add_argument("--batch_size", type=int, default=2, help="forward batch")
    parser.add_argument("--train_batch_size", type=int, default=4, help="training-step batch (default 4)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions, after a warm-up (default 5)")
    parser.add_argument("--also_b", action="store_true", help="also time MPDiT-B/4x against DiT-B/2 in the forward")
    parser.add_argument("--output_json", help="where to write the result (default: beside this script)")
    args = parser.parse_args()

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    sections = args.sections.split(",")
    result = {"args": vars(args), "environment": environment(args.device)}
    if "params" in sections:
        result["params"] = section_params()
    if "flops" in sections:
        result["flops"] = section_flops()
    if "forward" in sections:
        result["forward"] = section_forward(args, device, dtype, sync)
    if "train" in sections:
        result["train"] = section_train(args, device, dtype, sync)
    write_result(__file__, result, args.output_json)


if __name__ == "__main__":
    main()
