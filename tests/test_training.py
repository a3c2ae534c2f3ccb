"""Training: the shared helpers, and the real scripts run through `accelerate launch` and `torchrun`."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_vae
from PIL import Image
from safetensors.torch import load_file

from diffusers_mpdit import MPDiTPipeline
from diffusers_mpdit.training import (
    LatentCacheDataset,
    center_crop_arr,
    drop_class_labels,
    flow_matching_loss,
    image_to_tensor,
    pad_to,
    sample_flow_times,
    step_generator,
)
from diffusers_mpdit.training.latent_cache import ChannelStatistics

ROOT = Path(__file__).resolve().parents[1]
TRAIN, EXTRACT = str(ROOT / "examples" / "train_mpdit.py"), str(ROOT / "examples" / "extract_latents.py")
CLASSES = ["circle", "square", "stripes"]


# --- helpers -----------------------------------------------------------------------------------------------------


def test_flow_times_follow_the_official_logit_normal():
    t = sample_flow_times(200_000, generator=step_generator(0, 1))
    logits = torch.log(t / (1 - t))
    assert abs(logits.mean().item()) < 0.01 and abs(logits.std().item() - 1.0) < 0.01
    u = sample_flow_times(200_000, "uniform", generator=step_generator(0, 2))
    assert abs(u.mean().item() - 0.5) < 0.01 and 0 <= u.min() and u.max() <= 1
    with pytest.raises(ValueError, match="`weighting_scheme` must be one of"):
        sample_flow_times(4, "cosmap")


def test_label_dropout_rate_and_null_class():
    labels = torch.arange(100_000) % 7
    dropped = drop_class_labels(labels, 7, 0.1, generator=step_generator(0))
    rate = (dropped == 7).float().mean().item()
    assert abs(rate - 0.1) < 0.005
    assert torch.equal(dropped[dropped != 7], labels[dropped != 7])


def test_step_generator_depends_on_its_keys_only():
    a = torch.randn(4, generator=step_generator(3, 10, 0))
    assert torch.equal(a, torch.randn(4, generator=step_generator(3, 10, 0)))
    assert not torch.equal(a, torch.randn(4, generator=step_generator(3, 10, 1)))


def test_flow_matching_loss_is_the_velocity_mse(tiny_model):
    g = torch.Generator().manual_seed(0)
    x0, noise, t = (
        torch.randn(3, 4, 16, 16, generator=g),
        torch.randn(3, 4, 16, 16, generator=g),
        torch.rand(3, generator=g),
    )
    labels = torch.tensor([1, 2, 10])
    loss = flow_matching_loss(tiny_model, x0, noise, t, labels)
    tt = t.view(-1, 1, 1, 1)
    with torch.no_grad():
        v = tiny_model((1 - tt) * x0 + tt * noise, t, labels).sample
    torch.testing.assert_close(loss, ((v - (noise - x0)) ** 2).mean())


def test_adm_center_crop_and_tensors():
    image = Image.fromarray(np.arange(300 * 500 * 3, dtype=np.uint32).reshape(300, 500, 3).astype(np.uint8))
    cropped = center_crop_arr(image, 64)
    assert cropped.size == (64, 64)
    tensor = image_to_tensor(cropped, 3)
    assert tensor.shape == (3, 64, 64) and tensor.min() >= -1 and tensor.max() <= 1
    grey = image_to_tensor(pad_to(Image.new("L", (28, 28), 255), 32), 1)
    assert grey.shape == (1, 32, 32) and grey[0, 0, 0] == -1 and grey[0, 16, 16] == 1


def test_channel_statistics_of_posterior_samples():
    g = torch.Generator().manual_seed(0)
    mean, std = torch.randn(64, 4, 8, 8, generator=g) * 2 + 1, torch.rand(64, 4, 8, 8, generator=g)
    stats = ChannelStatistics(4)
    stats.update(mean[:40], std[:40])
    stats.update(mean[40:], std[40:])
    mu, sigma = stats.result()
    samples = mean[None] + std[None] * torch.randn(400, *mean.shape, generator=g)
    torch.testing.assert_close(
        torch.tensor(mu), samples.mean((0, 1, 3, 4)).double(), atol=0.02, rtol=0, check_dtype=False
    )
    torch.testing.assert_close(
        torch.tensor(sigma), samples.std((0, 1, 3, 4)).double(), atol=0.02, rtol=0, check_dtype=False
    )


# --- the scripts -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """24 labelled 20x20 images in three class folders (an imagefolder)."""
    root = tmp_path_factory.mktemp("data") / "shapes"
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(8):
            arr = (rng.random((20, 20, 3)) * 255).astype(np.uint8)
            arr[..., c] = 255
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae") / "vae"
    tiny_vae(latents_mean=None, latents_std=None).save_pretrained(path)
    return path


def train_args(data, out, steps, **extra):
    args = {
        "train_data_dir": data,
        "output_dir": out,
        "preset": "MPDiT-tiny",
        "resolution": 16,
        "train_batch_size": 4,
        "max_train_steps": steps,
        "checkpointing_steps": 2,
        "validation_steps": 0,
        "validation_inference_steps": 2,
        "report_to": "none",
        "seed": 3,
        **extra,
    }
    flags = []
    for key, value in args.items():
        if value is True:
            flags.append(f"--{key}")
        elif value is not None and value is not False:
            flags += [f"--{key}", str(value)]
    return flags


def launch(script, flags, launcher="accelerate", nproc=1, check=True, **popen):
    if launcher == "accelerate":
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1"]
        cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", script]
    elif launcher == "torchrun":
        # --standalone: a free rendezvous port, so that other torchrun tests may run beside this one.
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), script]
    else:
        cmd = [sys.executable, script]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if popen:
        return subprocess.Popen(cmd + flags, env=env, **popen)
    run = subprocess.run(cmd + flags, env=env, capture_output=True, text=True)
    if check:
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return run


def launch_and_kill(script, flags, marker: Path) -> None:
    """Runs the script until `marker` exists (a checkpoint), then kills it with SIGKILL."""
    process = launch(script, flags, launcher="python", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def weights(path):
    return load_file(str(Path(path) / "diffusion_pytorch_model.safetensors"))


def assert_same_weights(a, b, atol=0.0):
    a, b = weights(a), weights(b)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


def checkpoints(out):
    # By step number: as strings, checkpoint-100 would sort before checkpoint-98.
    names = [p.name for p in Path(out).iterdir() if p.name.startswith("checkpoint-")]
    return sorted(names, key=lambda name: int(name.split("-")[1]))


def test_accelerate_launch_checkpoints_pruning_samples_and_final_pipeline(image_folder, tmp_path):
    out = tmp_path / "run"
    launch(TRAIN, train_args(image_folder, out, 6, checkpoints_total_limit=2, validation_steps=3, random_flip=True))
    assert checkpoints(out) == ["checkpoint-4", "checkpoint-6"]
    expected = {"transformer", "transformer_ema", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"}
    assert set(os.listdir(out / "checkpoint-6")) >= expected | {"training_state.json"}
    assert not [p for p in os.listdir(out) if p.startswith(".tmp")]
    assert sorted(os.listdir(out / "samples")) == ["final.png", "step-0000003.png", "step-0000006.png"]
    # Labelled like `mpdit generate`'s grids: a row per class (3), --validation_images_per_class (4) 16-px images
    # each, upscaled x8 to 128 px with 4 px gaps, after a column of class names.
    final = np.asarray(Image.open(out / "samples" / "final.png").convert("L"))
    assert final.shape[0] == 3 * (128 + 4) and final.shape[1] > 4 * (128 + 4)
    label_width = final.shape[1] - 4 * (128 + 4)
    assert (final[:, :label_width] < 128).any()  # the names are written
    cell = final[:128, label_width : label_width + 128]
    assert np.array_equal(cell, np.kron(cell[::8, ::8], np.ones((8, 8), dtype=cell.dtype)))  # nearest, x8

    # The final pipeline carries the EMA weights (the checkpoint's EMA), the labels and the pixel-space setup.
    pipe = MPDiTPipeline.from_pretrained(out)
    assert pipe.vae is None and pipe.id2label == dict(enumerate(CLASSES))
    assert_same_weights(out / "transformer", out / "checkpoint-6" / "transformer_ema")
    pipe.set_progress_bar_config(disable=True)
    assert pipe(class_labels="square", num_inference_steps=2).images[0].size == (16, 16)
    from diffusers_mpdit import MPDiTTransformer2DModel

    assert MPDiTTransformer2DModel.from_pretrained(out, subfolder="checkpoint-4/transformer").config.num_classes == 3

    # Resuming from a named checkpoint continues to the same end.
    resumed = launch(TRAIN, train_args(image_folder, out, 8, resume_from_checkpoint=out / "checkpoint-6"))
    log = resumed.stderr + resumed.stdout
    assert "Resumed from" in log
    # EMAModel keeps its state in the config; loading it must not report those keys as unexpected.
    assert "but are not expected" not in log
    # 8 steps at the default EMA decay of 0.9999: the saved weights are still the initialisation, and the log says so.
    assert "--ema_decay 0.9999 averages over about 10,000 steps" in log
    assert checkpoints(out) == ["checkpoint-4", "checkpoint-6", "checkpoint-8"]


def test_sigkill_then_resume_equals_an_uninterrupted_run(image_folder, tmp_path):
    steps = 40
    flags = {"checkpointing_steps": 4, "random_flip": True, "gradient_accumulation_steps": 2, "train_batch_size": 2}
    launch(TRAIN, train_args(image_folder, tmp_path / "straight", steps, **flags))

    out = tmp_path / "killed"
    launch_and_kill(TRAIN, train_args(image_folder, out, steps, **flags), out / "checkpoint-8")
    assert not (out / "model_index.json").exists(), "the run finished before it could be killed"
    last = checkpoints(out)[-1]
    # A crash during a save leaves only a temporary folder, which "latest" never picks.
    (out / ".tmp-checkpoint-999").mkdir()

    resumed = launch(TRAIN, train_args(image_folder, out, steps, resume_from_checkpoint="latest", **flags))
    assert f"Resumed from {out / last} at step {last.split('-')[1]}" in resumed.stderr
    assert_same_weights(
        out / f"checkpoint-{steps}" / "transformer", tmp_path / "straight" / f"checkpoint-{steps}" / "transformer"
    )
    assert_same_weights(out / "transformer", tmp_path / "straight" / "transformer")


def test_two_processes_equal_one_with_the_same_global_batch(image_folder, tmp_path):
    one = launch(TRAIN, train_args(image_folder, tmp_path / "one", 6, random_flip=True))
    flags = {"random_flip": True, "train_batch_size": 2}
    two = launch(TRAIN, train_args(image_folder, tmp_path / "two", 4, **flags), launcher="torchrun", nproc=2)
    assert "DistributedType.MULTI_CPU" in two.stderr and "[RANK 1]" in two.stderr
    assert "DistributedType.MULTI_CPU" not in one.stderr
    # Resuming under DistributedDataParallel, too.
    resumed = launch(
        TRAIN,
        train_args(image_folder, tmp_path / "two", 6, resume_from_checkpoint="latest", **flags),
        launcher="torchrun",
        nproc=2,
    )
    assert "at step 4" in resumed.stderr
    # Only the order of floating-point reductions differs.
    for step in (4, 6):
        assert_same_weights(
            tmp_path / "one" / f"checkpoint-{step}" / "transformer",
            tmp_path / "two" / f"checkpoint-{step}" / "transformer",
            atol=1e-5,
        )


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(image_folder, tmp_path):
    out = tmp_path / "diverged"
    run = launch(
        TRAIN,
        train_args(image_folder, out, 10, checkpointing_steps=1, learning_rate=1e30),
        launcher="python",
        check=False,
    )
    assert run.returncode != 0
    message = [line for line in run.stderr.splitlines() if "Non-finite loss" in line][-1]
    step = int(message.split(" at step ")[1].split(":")[0])
    assert f"The last good checkpoint is {out / f'checkpoint-{step - 1}'}" in message
    assert checkpoints(out)[-1] == f"checkpoint-{step - 1}"
    from diffusers_mpdit import MPDiTTransformer2DModel

    model = MPDiTTransformer2DModel.from_pretrained(out / f"checkpoint-{step - 1}" / "transformer")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_max_train_minutes_stops_checkpoints_and_adds_up_over_a_resume(image_folder, tmp_path):
    out = tmp_path / "timed"
    budget = 0.02  # 1.2 s of steps: a few steps of the tiny model, far fewer than max_train_steps
    run = launch(TRAIN, train_args(image_folder, out, 10_000, checkpointing_steps=10_000, max_train_minutes=budget))
    assert "--max_train_minutes 0.02 reached" in run.stderr
    (last,) = checkpoints(out)
    state = json.loads((out / last / "training_state.json").read_text())
    assert 60 * budget <= state["train_seconds"] < 60 * budget + 30 and state["global_step"] < 10_000
    assert last == f"checkpoint-{state['global_step']}" and (out / "model_index.json").is_file()
    umask = os.umask(0)
    os.umask(umask)
    weights_mode = (out / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_mode & 0o777
    assert weights_mode == 0o666 & ~umask  # the pipeline's weights are readable like any output, not 0600
    # The time already spent counts: resuming with the same budget stops at once, a larger one goes on.
    resume = {"checkpointing_steps": 10_000, "resume_from_checkpoint": "latest"}
    again = launch(TRAIN, train_args(image_folder, out, 10_000, max_train_minutes=budget, **resume))
    assert "was already spent" in again.stderr and checkpoints(out) == [last]
    launch(TRAIN, train_args(image_folder, out, 10_000, max_train_minutes=2 * budget, **resume))
    earlier, final = checkpoints(out)  # only the stop saves a checkpoint
    assert earlier == last
    later = json.loads((out / final / "training_state.json").read_text())
    assert later["global_step"] > state["global_step"] and later["train_seconds"] >= 2 * 60 * budget


def test_damaged_checkpoint_is_a_clear_error(image_folder, tmp_path):
    out = tmp_path / "run"
    launch(TRAIN, train_args(image_folder, out, 2), launcher="python")
    (out / "checkpoint-2" / "optimizer.bin").unlink()
    run = launch(
        TRAIN, train_args(image_folder, out, 4, resume_from_checkpoint="latest"), launcher="python", check=False
    )
    assert run.returncode != 0 and "is damaged or incomplete: missing ['optimizer.bin']" in run.stderr


def test_latent_cache_extracted_on_two_processes_then_trained_on(image_folder, vae_dir, tmp_path):
    flags = ["--train_data_dir", str(image_folder), "--pretrained_vae", str(vae_dir), "--resolution", "16"]
    flags += ["--batch_size", "5", "--shard_size", "6"]
    launch(EXTRACT, flags + ["--output_dir", str(tmp_path / "one")], launcher="python")
    launch(EXTRACT, flags + ["--output_dir", str(tmp_path / "two")], launcher="torchrun", nproc=2)
    one, two = LatentCacheDataset(tmp_path / "one"), LatentCacheDataset(tmp_path / "two")
    assert len(two) == 24 and any("rank001" in s for s in two.index["shards"])
    torch.testing.assert_close(two.mean, one.mean)
    np.testing.assert_allclose(two.index["latents_std"], one.index["latents_std"], rtol=1e-6)
    assert two.id2label == dict(enumerate(CLASSES)) and two.labels.tolist() == [i // 8 for i in range(24)]

    out = tmp_path / "trained"
    launch(
        TRAIN,
        train_args(None, out, 2, latents_dir=tmp_path / "two", resolution=None, random_flip=True),
        launcher="python",
    )
    pipe = MPDiTPipeline.from_pretrained(out)
    assert list(pipe.vae.config.latents_mean) == pytest.approx(one.index["latents_mean"])
    assert pipe.vae.config.scaling_factor == 1.0 and pipe.transformer.config.sample_size == 8
    pipe.set_progress_bar_config(disable=True)
    assert pipe(class_labels=[0], num_inference_steps=2).images[0].size == (16, 16)


def test_on_the_fly_vae_and_a_datasets_dataset_with_push_to_hub(image_folder, vae_dir, tmp_path, hub):
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    images = sorted(image_folder.glob("*/*.png"))
    table = Dataset.from_dict(
        {"img": [str(p) for p in images], "cls": [CLASSES.index(p.parent.name) for p in images]},
        features=Features({"img": ImageFeature(), "cls": Value("int64")}),
    )
    (tmp_path / "parquet").mkdir()
    table.to_parquet(str(tmp_path / "parquet" / "train.parquet"))

    out = tmp_path / "vae-run"
    flags = train_args(None, out, 2, dataset_name=tmp_path / "parquet", image_column="img", label_column="cls")
    flags += ["--pretrained_vae", str(vae_dir), "--push_to_hub", "--hub_model_id", "alice/trained-tiny"]
    flags += ["--hub_token", "hf_alice_write"]
    launch(TRAIN, flags, launcher="python")
    pipe = MPDiTPipeline.from_pretrained("alice/trained-tiny")
    assert (
        pipe.vae is not None and pipe.transformer.config.num_classes == 3 and pipe.id2label == {0: "0", 1: "1", 2: "2"}
    )
    from huggingface_hub import HfApi, hf_hub_download

    files = HfApi(token="hf_alice_write").list_repo_files("alice/trained-tiny")
    assert "samples/final.png" in files
    card = open(hf_hub_download("alice/trained-tiny", "README.md", token="hf_alice_write")).read()
    assert "| steps | 2 |" in card and "![samples](samples/final.png)" in card and "logit_normal" in card

    bad = launch(
        TRAIN, train_args(None, tmp_path / "bad", 2, dataset_name=tmp_path / "parquet"), launcher="python", check=False
    )
    assert bad.returncode != 0 and "`image_column` 'image' is not a column of the dataset" in bad.stderr


def test_steps_per_epoch_and_bad_arguments(image_folder, tmp_path):
    run = launch(
        TRAIN, train_args(image_folder, tmp_path / "x", 2, train_batch_size=32), launcher="python", check=False
    )
    assert run.returncode != 0 and "24 samples do not fill one step of 32" in run.stderr
    run = launch(TRAIN, ["--output_dir", str(tmp_path / "y")], launcher="python", check=False)
    assert run.returncode == 2 and "exactly one of --train_data_dir, --dataset_name, --latents_dir" in run.stderr


def test_tensorboard_bf16_checkpointing_and_workers(image_folder, tmp_path):
    out = tmp_path / "knobs"
    flags = train_args(
        image_folder,
        out,
        3,
        report_to="tensorboard",
        mixed_precision="bf16",
        gradient_checkpointing=True,
        dataloader_num_workers=1,
        lr_scheduler="constant_with_warmup",
        lr_warmup_steps=2,
        max_grad_norm=1.0,
    )
    launch(TRAIN, flags)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((out / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert {"loss", "lr", "steps_per_sec", "images_per_sec"} <= set(events.Tags()["scalars"])
    assert [round(e.value, 6) for e in events.Scalars("lr")] == [0.0001, 0.0002, 0.0002]  # warm-up, then constant
    assert MPDiTPipeline.from_pretrained(out).transformer.dtype == torch.float32


def test_prepare_fashion_mnist_writes_a_labelled_parquet_dataset(tmp_path):
    import gzip

    from datasets import load_dataset

    def write_idx(path, array):
        header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
        with gzip.open(path, "wb") as f:
            f.write(header + array.astype(np.uint8).tobytes())

    rng = np.random.default_rng(0)
    source = tmp_path / "idx"
    source.mkdir()
    pixels = {}
    for prefix, n in (("train", 12), ("t10k", 5)):
        pixels[prefix] = rng.integers(0, 256, (n, 28, 28))
        write_idx(source / f"{prefix}-images-idx3-ubyte.gz", pixels[prefix])
        write_idx(source / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    script = str(ROOT / "examples" / "prepare_fashion_mnist.py")
    launch(script, ["--source_dir", str(source), "--output_dir", str(tmp_path / "out")], launcher="python")
    train = load_dataset(str(tmp_path / "out"), split="train")
    assert len(train) == 12 and train.features["label"].names[7] == "sneaker"
    assert train[3]["image"].size == (28, 28) and train[3]["label"] == 3
    np.testing.assert_array_equal(np.stack([np.array(train[i]["image"]) for i in range(12)]), pixels["train"])
    assert len(load_dataset(str(tmp_path / "out"), split="test")) == 5


def tensorboard_scalars(out, tag="loss"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((Path(out) / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    return [e.value for e in sorted(events.Scalars(tag), key=lambda e: e.step)]


def test_training_overfits_a_handful_of_images(image_folder, tmp_path):
    # Four images, the same four every step: in 80 steps the velocity loss must fall to under half where it starts.
    out = tmp_path / "overfit"
    flags = train_args(image_folder, out, 80, max_train_samples=4, report_to="tensorboard", learning_rate=2e-3,
                       checkpointing_steps=1000, class_dropout_prob=0.0)  # fmt: skip
    launch(TRAIN, flags, launcher="python")
    losses = tensorboard_scalars(out)
    assert len(losses) == 80
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < first / 2, (first, last)  # measured: 1.28 -> 0.50


def test_ema_after_three_steps_is_the_constant_decay_average(image_folder, tmp_path):
    out, decay = tmp_path / "ema", 0.9
    launch(TRAIN, train_args(image_folder, out, 3, checkpointing_steps=1, ema_decay=decay), launcher="python")
    raw = [weights(out / f"checkpoint-{step}" / "transformer") for step in (1, 2, 3)]
    ema = weights(out / "checkpoint-3" / "transformer_ema")
    # diffusers' EMAModel copies the weights at the first step; after that the decay is constant:
    # e1 = w1, e2 = d e1 + (1 - d) w2, e3 = d e2 + (1 - d) w3.
    for key in ema:
        expected = raw[0][key]
        for w in raw[1:]:
            expected = decay * expected + (1 - decay) * w[key]
        torch.testing.assert_close(ema[key], expected, rtol=1e-6, atol=1e-7, msg=key)
    assert any((raw[2][k] - ema[k]).abs().max() > 1e-6 for k in ema)  # it is an average, not the last weights


def test_compile_and_bf16_runs_follow_the_eager_float32_loss(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    losses = {}
    for name, extra in {"eager": {}, "compile": {"compile": True}, "bf16": {"mixed_precision": "bf16"}}.items():
        out = tmp_path / name
        flags = train_args(image_folder, out, 3, report_to="tensorboard", checkpointing_steps=1000, **extra)
        launch(TRAIN, flags, launcher="python")
        losses[name] = np.array(tensorboard_scalars(out))
    assert len(losses["eager"]) == 3
    # Inductor reorders float32 arithmetic; bf16 autocast keeps 8 mantissa bits.
    np.testing.assert_allclose(losses["compile"], losses["eager"], rtol=1e-3)
    np.testing.assert_allclose(losses["bf16"], losses["eager"], rtol=0.03)
    # Neither flag was a no-op: inductor compiled kernels, and bf16 arithmetic moved the losses.
    assert any((tmp_path / "inductor").rglob("*.py"))
    assert not np.array_equal(losses["bf16"], losses["eager"])


def test_lr_schedule_steps_stops_a_schedule_part_way(image_folder, tmp_path):
    out = tmp_path / "schedule"
    flags = train_args(image_folder, out, 3, report_to="tensorboard", lr_scheduler="linear", learning_rate=1e-3,
                       lr_schedule_steps=10, checkpointing_steps=1000)  # fmt: skip
    launch(TRAIN, flags, launcher="python")
    # A linear decay laid out over 10 steps, logged after each of the first three: 1e-3 * (10 - step) / 10.
    np.testing.assert_allclose(tensorboard_scalars(out, "lr"), [9e-4, 8e-4, 7e-4], rtol=1e-6)


@pytest.fixture(scope="module")
def train_script():
    """examples/train_mpdit.py as a module, to check its arguments in-process (a subprocess per case costs seconds)."""
    spec = importlib.util.spec_from_file_location("train_mpdit", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("text") / "notes"
    (root / "a").mkdir(parents=True)
    (root / "a" / "one.txt").write_text("not an image")
    return root


@pytest.mark.parametrize(
    "flags, message",
    [
        # Each value once passed parsing and failed late, as a traceback, or (the first) started a 750,000-step run.
        ({"max_train_steps": 0}, "argument --max_train_steps: expected an integer >= 1, got 0"),
        ({"resolution": 30}, "--resolution must be a multiple of 4 (the coarsest patch), got 30; e.g. 28 or 32"),
        ({"train_data_dir": "/no/such/folder"}, "--train_data_dir '/no/such/folder' is not a folder"),
        ({"train_data_dir": "TEXT"}, "holds no images in class subfolders"),
        ({"preset": "MPDiT-XXL"}, "argument --preset: invalid choice: 'MPDiT-XXL'"),
        ({"learning_rate": -1}, "argument --learning_rate: expected a finite number > 0, got '-1'"),
        ({"ema_decay": 1}, "argument --ema_decay: expected a finite number in [0, 1), got '1'"),
        ({"validation_classes": "sqare"}, "--validation_classes: unknown class name 'sqare'"),
        ({"validation_classes": "3"}, "--validation_classes: class id 3 is out of range: ids run from 0 to 2"),
        ({"model_config": '{"depth": [2, 2]}'}, "--model_config: ['depth'] are not MPDiTTransformer2DModel config"),
        ({"resume_from_checkpoint": "/no/ckpt"}, "--resume_from_checkpoint: checkpoint '/no/ckpt' is not a folder"),
        ({"lr_scheduler": "cosine_annealing"}, "argument --lr_scheduler: invalid choice: 'cosine_annealing'"),
        ({"report_to": "tensorbord"}, "argument --report_to: invalid choice: 'tensorbord'"),
        ({"validation_inference_steps": 0}, "argument --validation_inference_steps: expected an integer >= 1"),
        ({"validation_guidance_scale": -1}, "argument --validation_guidance_scale: expected a finite number >= 0"),
        ({"seed": 2**32}, "argument --seed: expected an integer in [0, 4294967295], got 4294967296"),
        ({"lr_schedule_steps": 0}, "argument --lr_schedule_steps: expected an integer >= 1, got 0"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else "",
)
def test_bad_values_are_one_line_naming_the_flag_before_anything_is_created(
    train_script, image_folder, text_folder, tmp_path, capsys, flags, message
):
    flags = {k: (text_folder if v == "TEXT" else v) for k, v in flags.items()}
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        train_script.parse_args(train_args(flags.pop("train_data_dir", image_folder), out, 2, **flags))
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert not out.exists()


def test_a_vae_factor_enters_the_resolution_check(train_script, image_folder, vae_dir, tmp_path, capsys):
    # The tiny VAE halves the side once (factor 2), and the coarsest patch is 4: sides must be multiples of 8.
    with pytest.raises(SystemExit):
        train_script.parse_args(train_args(image_folder, tmp_path / "out", 2, pretrained_vae=vae_dir, resolution=12))
    assert "--resolution must be a multiple of 8 (the VAE's factor 2 x the coarsest patch 4), got 12" in (
        capsys.readouterr().err
    )
    train_script.parse_args(train_args(image_folder, tmp_path / "out", 2, pretrained_vae=vae_dir, resolution=16))


def test_an_unreadable_image_is_named_or_skipped_and_counted(image_folder, vae_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(image_folder, data)
    bad = data / "circle" / "3.png"
    bad.write_bytes(bad.read_bytes()[:100])  # a truncated PNG
    # One step of the whole data set: the bad image is met whatever the order.
    run = launch(TRAIN, train_args(data, tmp_path / "stop", 1, train_batch_size=24), launcher="python", check=False)
    last = run.stderr.strip().splitlines()[-1]
    assert run.returncode != 0 and last.startswith(f"error: unreadable image {bad}: "), run.stderr[-3000:]
    assert "--skip_unreadable_images" in last

    run = launch(TRAIN, train_args(data, tmp_path / "skip", 1, skip_unreadable_images=True, train_batch_size=23))
    log = run.stdout + run.stderr
    assert f"skipped unreadable image {bad}" in log and "skipped 1 unreadable images of 24; training on 23" in log
    assert "23 samples, 23 per step" in log

    # Latent extraction stops at it too, and an earlier cache in the output folder survives the failed run.
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "latents_index.json").write_text("{}")
    flags = ["--train_data_dir", data, "--pretrained_vae", vae_dir, "--resolution", 16, "--output_dir", cache]
    run = launch(EXTRACT, [str(f) for f in flags], launcher="python", check=False)
    assert run.returncode != 0 and run.stderr.strip().splitlines()[-1].startswith(f"error: unreadable image {bad}")
    assert os.listdir(cache) == ["latents_index.json"] and not list(tmp_path.glob(".tmp-*"))


def test_a_datasets_dataset_with_an_unknown_validation_class_creates_nothing(image_folder, tmp_path):
    import datasets

    folder = datasets.load_dataset("imagefolder", data_dir=str(image_folder), split="train")
    folder.to_parquet(str(tmp_path / "parquet" / "train.parquet"))
    out = tmp_path / "out"
    flags = train_args(None, out, 1, dataset_name=tmp_path / "parquet", validation_classes="hexagon")
    run = launch(TRAIN, flags, launcher="python", check=False)
    assert run.returncode != 0 and run.stderr.strip().splitlines()[-1].startswith(
        "error: --validation_classes: unknown class name 'hexagon'"
    ), run.stderr[-2000:]
    assert not out.exists()


def test_ema_horizon_warning():
    from diffusers_mpdit.training import ema_warning

    # 0.9999 ** 40 = 0.996 of the initialisation remains; 0.9 ** 40 = 0.015 does not show.
    assert "still 100% the random initialisation" in ema_warning(0.9999, 40)
    assert "still 41% the random" in ema_warning(0.999, 900)  # 0.999 ** 900 = 0.406
    assert ema_warning(0.9, 40) is None and ema_warning(0.999, 2400) is None  # 0.999 ** 2400 = 0.091


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--resolution", "15"], "--resolution must be a multiple of the VAE's factor 2, got 15"),
        (["--train_data_dir", "/no/such"], "--train_data_dir '/no/such' is not a folder"),
        (["--batch_size", "0"], "argument --batch_size: expected an integer >= 1, got 0"),
        (["--pretrained_vae", "/no/vae"], "--pretrained_vae '/no/vae': cannot read its config"),
    ],
)
def test_extract_latents_checks_its_arguments_before_replacing_the_cache(
    image_folder, vae_dir, tmp_path, capsys, flags, message
):
    spec = importlib.util.spec_from_file_location("extract_latents", EXTRACT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "latents_index.json").write_text("{}")  # an earlier cache, which a refused run must leave alone
    base = ["--train_data_dir", str(image_folder), "--pretrained_vae", str(vae_dir), "--resolution", "16"]
    with pytest.raises(SystemExit):
        module.parse_args([*base, "--output_dir", str(cache), *flags])
    stderr = capsys.readouterr().err
    assert message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert os.listdir(cache) == ["latents_index.json"]
