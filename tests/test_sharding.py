"""Sharded training: FSDP2 over gloo in two processes (tests/fsdp_worker.py) against one plain process on the same
global batch, a sharded checkpoint and its resume, and the gathered pipeline loaded without any process group."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers.training_utils import EMAModel

from diffusers_mpdit import MPDiTPipeline, MPDiTTransformer2DModel, default_scheduler
from diffusers_mpdit.training import (
    FSDP_CHECKPOINT_FILES,
    check_checkpoint,
    checkpoint_layout,
    full_state_dict,
    gathered_ema,
    is_sharded,
    load_ema_state,
    parameter_names,
    parameters_by_name,
)

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(Path(__file__).with_name("fsdp_worker.py"))
STEPS, LR = 4, 1e-3


def run(cmd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    # --standalone: a free rendezvous port, so that other torchrun tests may run beside this one.
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run([*torchrun, WORKER, "--sharded", "--out", str(out / "sharded"), "--steps", str(STEPS)])
    run([sys.executable, WORKER, "--out", str(out / "single"), "--steps", str(STEPS)])
    load = lambda name: torch.load(out / name, weights_only=False)  # noqa: E731
    return out, load("sharded/sharded.pt"), load("single/single.pt"), load("sharded/resumed.pt")


def assert_close_weights(a: dict, b: dict, atol: float):
    assert a.keys() == b.keys()
    for name in b:
        # A key bias gets a zero gradient in exact arithmetic (softmax ignores a shift shared by all keys); Adam turns
        # its rounding noise, which differs with the reduction order, into steps of up to the learning rate.
        tol = 2 * LR * STEPS if name.endswith("attn.to_k.bias") else atol
        assert torch.allclose(a[name], b[name], atol=tol, rtol=0), (name, (a[name] - b[name]).abs().max())


def test_fsdp_two_processes_train_as_one(runs):
    _, sharded, single, _ = runs
    facts = sharded["facts"]
    assert facts["world"] == 2 and facts["sharded"] and facts["ema_sharded"]
    # Each process holds about half of every block and of the root (FSDP2 pads a dim-0 shard to an equal size).
    assert facts["numel"] / 2 <= facts["local_numel"] < 0.55 * facts["numel"]
    assert not single["facts"]["sharded"]
    assert torch.allclose(torch.tensor(sharded["losses"]), torch.tensor(single["losses"]), atol=1e-5, rtol=0)
    assert_close_weights(sharded["weights"], single["weights"], 1e-5)
    assert_close_weights(sharded["ema"], single["ema"], 1e-5)
    # The EMA averages: it is neither the initial nor the final weights.
    assert max((sharded["ema"][k] - sharded["weights"][k]).abs().max() for k in single["ema"]) > 1e-4


def test_fsdp_resume_from_a_sharded_checkpoint(runs):
    out, sharded, _, resumed = runs
    checkpoint = out / "sharded" / "checkpoint-2"
    layout = checkpoint_layout(checkpoint)
    assert set(FSDP_CHECKPOINT_FILES) < set(layout)
    assert {"pytorch_model_fsdp_0/__1_0.distcp", "optimizer_0/__1_0.distcp", "random_states_1.pkl"} < set(layout)
    assert check_checkpoint(checkpoint)["global_step"] == 2
    assert resumed["facts"]["ema_sharded"]
    # A fresh model from another seed continues as the uninterrupted run: weights, optimizer, schedule and EMA.
    assert resumed["losses"] == sharded["losses"][2:]
    for part in ("weights", "ema"):
        for name, tensor in sharded[part].items():
            assert torch.equal(resumed[part][name], tensor), (part, name)


@pytest.mark.parametrize("lost", ["optimizer_0/__1_0.distcp", "pytorch_model_fsdp_0/.metadata"])
def test_fsdp_checkpoint_missing_a_shard_is_refused(runs, tmp_path, lost):
    out, *_ = runs
    damaged = tmp_path / "checkpoint-2"
    shutil.copytree(out / "sharded" / "checkpoint-2", damaged)
    (damaged / lost).unlink()
    with pytest.raises(RuntimeError, match=re.escape(f"missing {[lost]}")):
        check_checkpoint(damaged)


def test_deepspeed_lora_checkpoint_layout(tmp_path):
    # What Accelerate and DeepSpeed write for a LoRA run in two processes: no optimizer.bin, no transformer/.
    written = [
        "pytorch_model/mp_rank_00_model_states.pt",
        "transformer_lora/trainable.safetensors",
        "transformer_lora/ema.pt",
        "scheduler.bin",
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]
    for name in written:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "training_state.json").write_text('{"global_step": 6}')
    assert check_checkpoint(tmp_path)["global_step"] == 6
    (tmp_path / "random_states_1.pkl").rename(tmp_path / "random_states_2.pkl")
    with pytest.raises(RuntimeError, match=re.escape("missing ['random_states_1.pkl']")):
        check_checkpoint(tmp_path)


def test_fsdp_gathered_pipeline_loads_unsharded_and_samples(runs):
    out, _, single, _ = runs
    pipe = MPDiTPipeline.from_pretrained(out / "sharded" / "pipeline")
    assert_close_weights(pipe.transformer.state_dict(), single["ema"], 1e-5)
    reference = MPDiTTransformer2DModel.from_config(pipe.transformer.config)
    reference.load_state_dict(single["ema"])
    ref_pipe = MPDiTPipeline(reference.eval(), None, default_scheduler(), pipe.id2label)
    kwargs = {"class_labels": [0, 3], "num_inference_steps": 4, "output_type": "pt"}
    images = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    expected = ref_pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 4, 16, 16) and images.std() > 0.01
    assert torch.allclose(images, expected, atol=1e-4)


def test_helpers_on_a_model_that_is_not_sharded():
    torch.manual_seed(0)
    model = MPDiTTransformer2DModel.from_preset("MPDiT-tiny", num_classes=4)
    params = [model.final_layer.linear.weight, model.transformer_blocks[1].attn.to_q.weight]
    names = parameter_names(model, params)
    assert names == ["final_layer.linear.weight", "transformer_blocks.1.attn.to_q.weight"]
    assert parameters_by_name(model, names)[1] is params[1]
    with pytest.raises(ValueError, match="not a parameter of model"):
        parameter_names(model, [torch.zeros(3)])
    assert not is_sharded(model)
    assert full_state_dict(model).keys() == model.state_dict().keys()

    ema = EMAModel(model.parameters(), decay=0.5)
    shadow = ema.shadow_params
    with gathered_ema(ema):
        assert ema.shadow_params is shadow
    state = ema.state_dict()
    state["shadow_params"] = [torch.full_like(p, 2.0) for p in shadow]
    load_ema_state(ema, state, model.parameters())
    assert all(torch.equal(s, torch.full_like(s, 2.0)) for s in ema.shadow_params)
    state["shadow_params"] = state["shadow_params"][:-1]
    with pytest.raises(ValueError, match="holds 78 tensors; the model has 79"):
        load_ema_state(ema, state, model.parameters())
    # A model grown by a class since: the same count, one shape changed; nothing is loaded.
    state["shadow_params"] = [torch.zeros(p.shape[0] + 1, *p.shape[1:]) if i == 3 else p for i, p in enumerate(shadow)]
    with pytest.raises(ValueError, match=r"tensor 3 has shape"):
        load_ema_state(ema, state, model.parameters())
    assert all(torch.equal(s, torch.full_like(s, 2.0)) for s in ema.shadow_params)


def launch_args(config: str):
    """What `accelerate launch --config_file config examples/train_mpdit.py` resolves from the file."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", config, "examples/train_mpdit.py"])
    return _validate_launch_command(args)[0]


def test_accelerate_fsdp_config_wraps_each_block(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from accelerate.utils.launch import prepare_multi_gpu_env

    env = prepare_multi_gpu_env(launch_args(str(ROOT / "examples" / "accelerate_fsdp.yaml")))
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.state_dict_type.name == "SHARDED_STATE_DICT"
    model = MPDiTTransformer2DModel.from_preset("MPDiT-B/4x", sample_size=8, depths=(3, 2))
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    # Accelerate's units are the blocks, as `shard_transformer` shards them (the root is wrapped after them).
    assert [m for m in model.modules() if policy(m)] == list(model.transformer_blocks)


def test_accelerate_deepspeed_config_is_zero2():
    args = launch_args(str(ROOT / "examples" / "accelerate_deepspeed_zero2.yaml"))
    assert args.use_deepspeed and args.zero_stage == 2 and args.mixed_precision == "no"
    assert args.offload_optimizer_device == "none" and args.offload_param_device == "none"
    assert args.gradient_clipping == 0.0 and args.gradient_accumulation_steps == 1
