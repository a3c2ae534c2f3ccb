"""LoRA fine-tuning: which weights train (the library), and examples/train_mpdit.py's LoRA mode end to end."""

import copy
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_in_process, tiny_pipeline
from huggingface_hub import hf_hub_download
from PIL import Image
from safetensors.torch import load_file
from test_training import launch, launch_and_kill, train_args

from diffusers_mpdit import MPDiTPipeline
from diffusers_mpdit.models.new_classes import add_classes
from diffusers_mpdit.training import add_lora, class_label_map, flow_matching_loss, optimizer_groups

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "examples" / "train_mpdit.py")
# One class the tiny pipeline knows ("coat", id 4), two it lacks.
DATA_CLASSES = ["coat", "yak", "zebra"]


def test_class_label_map_keeps_known_names_and_appends_new_ones():
    base = {0: "cat", 1: "dog, puppy", 2: "owl"}
    assert class_label_map(base, 3, {0: "zebra", 1: "puppy", 2: "Cat", 3: "yak"}) == ([3, 1, 0, 4], ["zebra", "yak"])
    assert class_label_map(None, 2, {0: "a", 1: "b"}) == ([0, 1], [])
    with pytest.raises(ValueError, match="the model has 3 classes, the data 1, and with no names to match"):
        class_label_map(None, 3, {0: "a"})
    # A whole id2label entry matches; a name of two classes and a new name with a comma are refused.
    assert class_label_map(base, 3, {0: "dog, puppy"}) == ([1], [])
    with pytest.raises(ValueError, match="'owl' names several of the model's classes: 2 \\(owl\\), 3 \\(owl\\)"):
        class_label_map({**base, 3: "owl"}, 4, {0: "owl"})
    with pytest.raises(ValueError, match="a new class name cannot hold a comma"):
        class_label_map(base, 3, {0: "zebra, striped"})


def test_lora_steps_lower_the_loss_and_leave_the_frozen_weights_bit_identical(tiny_model):
    base = copy.deepcopy(tiny_model)
    model = tiny_model.train()
    new_ids = add_classes(model, 2)
    trainable = add_lora(model, rank=4, alpha=8, new_class_ids=new_ids)
    lora_count = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    # Per block: four projections of 32 -> 32 at rank 4 (A and B); plus the class table (its gradient is masked).
    assert lora_count == len(model.transformer_blocks) * 4 * 2 * 4 * 32
    assert {id(p) for p in trainable} == {id(p) for n, p in model.named_parameters() if "lora_" in n} | {
        id(model.class_embed.embedding_table.weight)
    }
    optimizer = torch.optim.AdamW(optimizer_groups(model, weight_decay=0.1), lr=3e-2)
    g = torch.Generator().manual_seed(0)
    data, noise = torch.randn(4, 4, 16, 16, generator=g), torch.randn(4, 4, 16, 16, generator=g)
    times, labels = torch.rand(4, generator=g), torch.tensor([10, 11, 3, 10])
    losses = []
    for _ in range(30):
        loss = flow_matching_loss(model, data, noise, times, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses  # measured: 2.08 -> 1.75
    table, old = model.class_embed.embedding_table.weight.detach(), base.class_embed.embedding_table.weight
    assert torch.equal(table[:10], old[:10]) and torch.equal(table[12], old[10])  # old classes and the null class
    assert not torch.equal(table[10:12], old[10:11].expand(2, -1))  # the new rows learned
    model.unload_lora()  # the base layers back under their own names
    frozen = {k: v for k, v in model.state_dict().items() if "class_embed" not in k}
    assert frozen.keys() == {k for k in base.state_dict() if "class_embed" not in k}
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in frozen.items())


@pytest.fixture(scope="module")
def lora_setup(tmp_path_factory):
    """A tiny pretrained pixel-space pipeline folder, and an imagefolder of one of its classes and two new ones."""
    root = tmp_path_factory.mktemp("lora")
    tiny_pipeline(with_vae=False, in_channels=3, sample_size=16).save_pretrained(root / "base")
    rng = np.random.default_rng(0)
    for c, name in enumerate(DATA_CLASSES):
        (root / "data" / name).mkdir(parents=True)
        for i in range(8):
            arr = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
            arr[..., c] = 255
            Image.fromarray(arr).save(root / "data" / name / f"{i}.png")
    return root


def lora_flags(setup, out, steps, **extra):
    flags = train_args(setup / "data", out, steps, checkpointing_steps=1, validation_steps=8, ema_decay=0.9, **extra)
    return flags + ["--pretrained_model_name_or_path", str(setup / "base"), "--lora_rank", "4", "--lora_alpha", "8"]


def test_lora_run_resumes_bit_for_bit_after_sigkill_and_its_lora_loads_by_name(lora_setup, tmp_path, hub):
    steps = 16
    straight = tmp_path / "straight"
    launch(TRAIN, lora_flags(lora_setup, straight, steps) + ["--push_to_hub", "--hub_model_id", "alice/tiny-lora",
                                                            "--hub_token", "hf_alice_write"])  # fmt: skip
    assert sorted(os.listdir(straight / "samples")) == ["final.png", "step-0000008.png", "step-0000016.png"]
    checkpoint = straight / "checkpoint-3" / "transformer_lora"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["ema.pt", "trainable.safetensors"]
    trainable = load_file(str(checkpoint / "trainable.safetensors"))
    assert all("lora_" in k for k in trainable if k != "class_embed.embedding_table.weight")
    assert len(trainable) == 2 * 4 * 4 + 1  # A and B of four projections in four blocks, and the class table

    # The EMA of the trainable weights, with diffusers' constant decay: e1 = w1, e_k = d e_(k-1) + (1 - d) w_k.
    raw = [
        load_file(str(straight / f"checkpoint-{s}" / "transformer_lora" / "trainable.safetensors")) for s in (1, 2, 3)
    ]
    ema = torch.load(checkpoint / "ema.pt", weights_only=True)["shadow_params"]
    # The EMA lists the parameters in the model's order (safetensors sorts its keys): rebuild that order.
    model = MPDiTPipeline.from_pretrained(lora_setup / "base").transformer
    add_lora(model, 4, 8, new_class_ids=add_classes(model, 2))
    order = [name for name, p in model.named_parameters() if p.requires_grad]
    assert len(ema) == len(order) and set(order) == set(trainable)
    for shadow, key in zip(ema, order):
        expected = raw[0][key]
        for w in raw[1:]:
            expected = 0.9 * expected + 0.1 * w[key]
        torch.testing.assert_close(shadow, expected, rtol=1e-6, atol=1e-7, msg=key)

    killed = tmp_path / "killed"
    launch_and_kill(TRAIN, lora_flags(lora_setup, killed, steps), killed / "checkpoint-5")
    assert not (killed / "pytorch_lora_weights.safetensors").exists(), "the run finished before it could be killed"
    resumed = launch(TRAIN, lora_flags(lora_setup, killed, steps, resume_from_checkpoint="latest"))
    assert "Resumed from" in resumed.stderr
    for name in ("checkpoint-16/transformer_lora/trainable.safetensors", "pytorch_lora_weights.safetensors"):
        a, b = load_file(str(killed / name)), load_file(str(straight / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

    # The new classes' rows learned (their labels reached the model as ids 10 and 11): they left the null row.
    null_row = MPDiTPipeline.from_pretrained(lora_setup / "base").transformer.class_embed.embedding_table.weight[-1]
    rows = load_file(str(straight / "pytorch_lora_weights.safetensors"))["transformer.class_embed.new_class_rows"]
    assert rows.shape == (2, null_row.numel()) and all(not torch.allclose(row, null_row, atol=1e-4) for row in rows)

    # The LoRA from the Hub, loaded as a user would: new classes by name, the old ones as before.
    pipe = MPDiTPipeline.from_pretrained(lora_setup / "base")
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=2, output_type="latent", generator=torch.Generator().manual_seed(0))
    before = pipe(["coat", "bag"], **kwargs).images
    pipe.load_lora_weights("alice/tiny-lora")
    assert pipe.get_label_ids(["yak", "zebra", "coat"]) == [10, 11, 4]
    assert pipe(["zebra", "yak"], num_inference_steps=2).images[0].size == (16, 16)
    pipe.unload_lora_weights()
    kwargs["generator"] = torch.Generator().manual_seed(0)
    assert torch.equal(pipe(["coat", "bag"], **kwargs).images, before)
    card = open(hf_hub_download("alice/tiny-lora", "README.md", token="hf_alice_write")).read()
    assert "| new classes | yak, zebra |" in card and "rank 4, alpha 8" in card
    assert 'pipe.load_lora_weights("alice/tiny-lora")' in card and "| steps | 16 |" in card


@pytest.fixture(scope="module")
def train_script():
    spec = importlib.util.spec_from_file_location("train_mpdit_lora_checks", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lora_rank", "4"], "--lora_rank needs --pretrained_model_name_or_path"),
        (["--lora_alpha", "4"], "--lora_alpha and --lora_target_modules need --lora_rank"),
        (
            ["--lora_rank", "0", "--pretrained_model_name_or_path", "x"],
            "argument --lora_rank: expected an integer >= 1, got 0",
        ),
        (
            ["--class_matching", "id", "--pretrained_model_name_or_path", "BASE"],
            "the model has 10 classes, the data 3",
        ),
    ],
)
def test_bad_lora_flags_are_one_line(train_script, lora_setup, tmp_path, capsys, extra, message):
    extra = [str(lora_setup / "base") if a == "BASE" else a for a in extra]
    argv = ["--train_data_dir", lora_setup / "data", "--output_dir", tmp_path / "out", *extra]
    code, _, err = run_in_process(train_script.main, argv, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_prepare_digits_writes_a_stratified_labelled_split(tmp_path):
    import sys

    from datasets import load_dataset
    from sklearn.datasets import load_digits

    sys.path.insert(0, str(ROOT / "examples"))
    import prepare_digits

    prepare_digits.main(["--output_dir", str(tmp_path / "digits")])
    train, test = (load_dataset(str(tmp_path / "digits"), split=s) for s in ("train", "test"))
    digits = load_digits()
    assert len(train) + len(test) == len(digits.target) == 1797
    assert train.features["label"].names == [f"digit {d}" for d in range(10)]
    counts = np.bincount(digits.target, minlength=10)
    assert np.array_equal(np.bincount(test["label"], minlength=10), np.round(counts * 0.2).astype(int))
    image = np.asarray(test[0]["image"])
    assert image.shape == (28, 28) and image[:2].max() == 0 and image.max() > 200  # black border, bright strokes
    # Each written image is one of the scans, scaled: its 3x3 block means match that scan (values 0-16 -> 0-255).
    scans = digits.images * (255 / 16)
    blocks = np.asarray(train[0]["image"], dtype=float)[2:26, 2:26].reshape(8, 3, 8, 3).mean((1, 3))
    assert np.abs(scans - blocks).max(axis=(1, 2)).min() < 48  # measured: 38; the next-closest scan 59, transposed 200
