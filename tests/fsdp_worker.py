"""A few training steps of MPDiT-tiny on a fixed global batch, for tests/test_sharding.py.

`--sharded`, under `torchrun --nproc_per_node 2`: FSDP2 over gloo through diffusers_mpdit.training's sharding helpers,
each process training on its half of the batch; a sharded checkpoint (Accelerate's FSDP2 writers, as
`accelerator.save_state` calls them under FSDP, and the EMA gathered); the final weights gathered and saved as a
pipeline; then a fresh model resumed from the checkpoint. Without `--sharded`: the same steps in one plain process.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from diffusers_mpdit import MPDiTPipeline, MPDiTTransformer2DModel, default_scheduler
from diffusers_mpdit.training import (
    check_checkpoint,
    flow_matching_loss,
    full_state_dict,
    gathered_ema,
    is_sharded,
    load_ema,
    load_ema_state,
    sample_flow_times,
    save_ema,
    shard_transformer,
    step_generator,
)

GLOBAL_BATCH, SHAPE, NUM_CLASSES = 4, (4, 16, 16), 4


def build(seed: int, sharded: bool):
    torch.manual_seed(seed)
    model = MPDiTTransformer2DModel.from_preset("MPDiT-tiny", num_classes=NUM_CLASSES)
    with torch.no_grad():  # away from the zero-initialised output, so that every weight gets a gradient
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.train()
    if sharded:
        shard_transformer(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    # Warm-up, so that a resume that lost the schedule's position gives other learning rates.
    lr_scheduler = get_scheduler("linear", optimizer, num_warmup_steps=3, num_training_steps=10)
    ema = EMAModel(
        model.parameters(), decay=0.8, min_decay=0.8, model_cls=MPDiTTransformer2DModel, model_config=model.config
    )
    return model, optimizer, lr_scheduler, ema


def train_step(model, optimizer, lr_scheduler, ema, step: int, rank: int, world: int) -> float:
    rows = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    g = step_generator(0, step, 0)
    data = torch.randn((GLOBAL_BATCH, *SHAPE), generator=g)[rows]
    noise = torch.randn((GLOBAL_BATCH, *SHAPE), generator=g)[rows]
    times = sample_flow_times(GLOBAL_BATCH, generator=g)[rows]
    labels = torch.randint(0, NUM_CLASSES + 1, (GLOBAL_BATCH,), generator=g)[rows]  # the null class too
    loss = flow_matching_loss(model, data, noise, times, labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(model.parameters()), 0.5)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    ema.step(model.parameters())
    value = loss.detach().clone()
    if world > 1:
        dist.all_reduce(value)
    return value.item() / world


def ema_weights(model, ema) -> dict[str, torch.Tensor]:
    copy = MPDiTTransformer2DModel.from_config(model.config)
    ema.copy_to(copy.parameters())
    return {k: v.clone() for k, v in copy.state_dict().items()}


def finish(model, ema, is_main: bool) -> dict | None:
    weights = full_state_dict(model)
    with gathered_ema(ema):
        return {"weights": weights, "ema": ema_weights(model, ema)} if is_main else None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--checkpoint_step", type=int, default=2)
    p.add_argument("--sharded", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    if args.sharded:
        from accelerate import Accelerator
        from accelerate.checkpointing import load_accelerator_state, save_accelerator_state
        from accelerate.utils import (
            FullyShardedDataParallelPlugin,
            load_fsdp_model,
            load_fsdp_optimizer,
            save_fsdp_model,
            save_fsdp_optimizer,
        )

        accelerator = Accelerator(cpu=True)  # joins torchrun's gloo group
        plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="SHARDED_STATE_DICT")
        rank, world, is_main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    else:
        rank, world, is_main = 0, 1, True

    model, optimizer, lr_scheduler, ema = build(0, args.sharded)
    facts = {
        "world": world,
        "sharded": is_sharded(model),
        "ema_sharded": is_sharded(ema.shadow_params),
        "local_numel": sum((p.to_local() if args.sharded else p).numel() for p in model.parameters()),
        "numel": sum(p.numel() for p in model.parameters()),
    }
    checkpoint = out / f"checkpoint-{args.checkpoint_step}"
    losses = []
    for step in range(args.steps):
        losses.append(train_step(model, optimizer, lr_scheduler, ema, step, rank, world))
        if args.sharded and step + 1 == args.checkpoint_step:
            save_fsdp_model(plugin, accelerator, model, checkpoint)
            save_fsdp_optimizer(plugin, accelerator, optimizer, model, checkpoint)
            save_ema(ema, checkpoint / "transformer_ema", is_main)
            save_accelerator_state(str(checkpoint), [], [], [lr_scheduler], [], rank, step=0)
            if is_main:
                (checkpoint / "training_state.json").write_text(json.dumps({"global_step": step + 1}))
            accelerator.wait_for_everyone()
    result = finish(model, ema, is_main)

    if is_main:
        result |= {"losses": losses, "facts": facts}
        # The gathered EMA weights, saved as a pipeline that loads without any process group.
        transformer = MPDiTTransformer2DModel.from_config(model.config)
        transformer.load_state_dict(result["ema"])
        pipe = MPDiTPipeline(transformer.eval(), None, default_scheduler(), {i: f"c{i}" for i in range(NUM_CLASSES)})
        pipe.save_pretrained(out / "pipeline")
        torch.save(result, out / ("sharded.pt" if args.sharded else "single.pt"))
    if not args.sharded:
        return

    # Resume: a fresh model from another seed, its optimizer, schedule and EMA all loaded from the checkpoint.
    state = check_checkpoint(checkpoint)
    model, optimizer, lr_scheduler, ema = build(1, True)
    load_fsdp_model(plugin, accelerator, model, checkpoint)
    load_fsdp_optimizer(plugin, accelerator, optimizer, model, checkpoint)
    load_ema_state(
        ema, load_ema(checkpoint / "transformer_ema", MPDiTTransformer2DModel).state_dict(), model.parameters()
    )
    load_accelerator_state(str(checkpoint), [], [], [lr_scheduler], [], rank)
    resumed_facts = {"ema_sharded": is_sharded(ema.shadow_params)}
    resumed_losses = [
        train_step(model, optimizer, lr_scheduler, ema, step, rank, world)
        for step in range(state["global_step"], args.steps)
    ]
    resumed = finish(model, ema, is_main)
    if is_main:
        torch.save(resumed | {"losses": resumed_losses, "facts": resumed_facts}, out / "resumed.pt")
    accelerator.wait_for_everyone()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
