"""The `mpdit` console command, run as installed (generate, labels; convert is in test_convert.py)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FASHION_MNIST, run_in_process
from PIL import Image

from diffusers_mpdit import BUNDLED_MODEL, MPDiTPipeline
from diffusers_mpdit.cli import main as cli_main
from diffusers_mpdit.sampling import MIN_CELL

MPDIT = str(Path(sys.executable).with_name("mpdit"))


def mpdit(*args, cwd=None):
    return subprocess.run([MPDIT, *args], capture_output=True, text=True, cwd=cwd)


def test_labels_lists_the_bundled_models_classes():
    run = mpdit("labels")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [f"{i}\t{name}" for i, name in enumerate(FASHION_MNIST)]
    assert mpdit("labels", BUNDLED_MODEL).stdout == run.stdout
    # A missing local path is named as such, not sent to the Hub as a repo id.
    missing = mpdit("labels", "./no-such-model")
    assert missing.returncode == 2 and "no such folder" in missing.stderr, missing.stderr


def test_generate_writes_a_labelled_grid_of_the_pipelines_images(tmp_path):
    out = tmp_path / "grid.png"
    run = mpdit(
        "generate", "--class", "sandal", "7", "--num-images", "2", "--steps", "3", "--seed", "5", "-o", str(out)
    )
    assert run.returncode == 0, run.stderr
    assert "2 classes x 2 images" in run.stdout and "sampling" in run.stderr  # the progress bar
    assert not list(tmp_path.glob(".grid*"))  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    grid = np.asarray(Image.open(out).convert("L"))
    pipe = MPDiTPipeline.from_pretrained(BUNDLED_MODEL)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        class_labels=[5, 5, 7, 7],
        num_inference_steps=3,
        generator=[torch.Generator().manual_seed(5 + i) for i in range(4)],
    ).images
    # Without --guidance the model's saved defaults apply, and the summary line says which.
    interval = pipe.config.default_guidance_interval
    used = f"guidance {pipe.config.default_guidance_scale:g}" + (
        " for t in [{:g}, {:g}]".format(*interval) if interval else ""
    )
    assert f"{used}, seed 5" in run.stdout
    cell = MIN_CELL + 4  # 32 px upscaled x4, and the gap
    assert grid.shape[0] == 2 * cell
    label_width = grid.shape[1] - 2 * cell
    for i, image in enumerate(expected):
        row, col = divmod(i, 2)
        top, left = row * cell, label_width + col * cell
        want = np.asarray(image.convert("L").resize((MIN_CELL, MIN_CELL), Image.NEAREST)).astype(int)
        # The command runs with its own thread count: equal up to a grey level of float rounding.
        assert np.abs(grid[top : top + MIN_CELL, left : left + MIN_CELL] - want).max() <= 1
    # The row labels are drawn in the left strip.
    assert (grid[:cell, :label_width] < 128).any() and (grid[cell:, :label_width] < 128).any()


def test_generate_defaults_to_every_class_and_any_scheduler(tmp_path):
    out = tmp_path / "all.jpg"
    run = mpdit("generate", "--num-images", "1", "--steps", "2", "--scheduler", "heun", "-o", str(out))
    assert run.returncode == 0, run.stderr
    assert "10 classes x 1 images" in run.stdout and "heun" in run.stdout
    assert Image.open(out).height == 10 * (MIN_CELL + 4)


def test_generate_runs_the_official_sde_and_says_so(tmp_path):
    from test_samplers import hand_sde

    out = tmp_path / "sde.png"
    run = mpdit(
        "generate", "--class", "bag", "--num-images", "1", "--scheduler", "sde", "--steps", "4", "--guidance", "2",
        "--guidance-interval", "0", "1", "--diffusion-form", "sigma", "--seed", "3", "-o", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "(32x32, sde (sigma, norm 1, last step 0.04), 4 steps, guidance 2 for t in [0, 1], seed 3)" in run.stdout
    # The grid's image is the official SDE loop's, written out by hand (bag is class 8, image 0 uses seed 3).
    pipe = MPDiTPipeline.from_pretrained(BUNDLED_MODEL)
    x = hand_sde(pipe, torch.tensor([8]), [3], 4, 2.0, form="sigma", shape=(1, 32, 32))
    want = ((x[0, 0] / 2 + 0.5).clamp(0, 1) * 255).round().numpy()
    cell = np.asarray(Image.open(out).convert("L")).astype(int)
    width = cell.shape[1]
    image = cell[:MIN_CELL, width - MIN_CELL - 4 : width - 4][::4, ::4]  # the one cell, at 1x
    assert np.abs(image - want).max() <= 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--class", "cot"], "--class: unknown class name 'cot'; closest: 'coat' (see `mpdit labels`)"),
        (["--class", "10"], "--class: class id 10 is out of range: ids run from 0 to 9"),
        (["--steps", "0"], "--steps must be an integer >= 1 for the euler sampler; got 0"),
        (["--scheduler", "ode", "--steps", "1"], "--steps must be an integer >= 2 for the ode sampler"),
        (["--guidance", "nan"], "argument --guidance: expected a finite number, got 'nan'"),
        (["--guidance-interval", "0.8", "0.2"], "--guidance-interval must be (low, high) with 0 <= low <= high <= 1"),
        (
            ["--scheduler", "ddim"],
            "--scheduler must be one of euler, euler-stochastic, heun, unipc, dpm-solver, ode, sde",
        ),
        (
            ["--scheduler", "sde", "--steps", "3", "--last-step-size", "0.5"],
            "--last-step-size must be a number in (0, 0.5)",
        ),
        (["--diffusion-form", "linear"], "--diffusion-form must be one of constant, SBDM, sigma, decreasing"),
        (["--model", "/no/such/model"], "model '/no/such/model': no such folder"),
        (["-o", "grid.gif"], "-o 'grid.gif': the file name must end in one of .png, .jpg, .jpeg, .webp"),
        (["-o", "/no/such/folder/grid.png"], "the folder '/no/such/folder' does not exist"),
    ],
)
def test_bad_input_is_one_line_naming_the_allowed_values(tmp_path, capsys, monkeypatch, args, message):
    if "-o" not in args:
        args = [*args, "-o", str(tmp_path / "grid.png")]
    if args[:2] == ["--class", "cot"]:  # one case as a user runs it: nothing else may reach stderr
        run = mpdit("generate", "--steps", "1", *args, cwd=tmp_path)
        code, stderr = run.returncode, run.stderr
    else:
        monkeypatch.chdir(tmp_path)
        code, _, stderr = run_in_process(cli_main, ["generate", "--steps", "1", *args], capsys)
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and message in stderr, stderr
    assert not list(tmp_path.iterdir())


def test_a_folder_that_is_not_a_pipeline_is_a_clear_error(tmp_path):
    run = mpdit("labels", str(tmp_path))
    assert run.returncode == 2 and "no file named model_index.json" in run.stderr and "Traceback" not in run.stderr


def test_the_bundled_model_card_commands_run(tmp_path):
    card = (Path(BUNDLED_MODEL) / "README.md").read_text()
    commands = [
        line
        for block in re.findall(r"```bash\n(.*?)```", card, flags=re.S)
        for line in block.splitlines()
        if line.startswith("mpdit ")
    ]
    assert len(commands) == 2
    for command in commands:
        run = mpdit(*shlex.split(command)[1:], cwd=tmp_path)
        assert run.returncode == 0, run.stderr
    assert Image.open(tmp_path / "grid.png").height == 2 * (MIN_CELL + 4)


def test_generate_grid_does_not_depend_on_the_batch_size(tmp_path):
    # Image i's noise comes from seed + i whatever batch it is computed in.
    grids = {}
    for batch_size, batches in (("1", 4), ("3", 2), ("16", 1)):
        out = tmp_path / f"grid-{batch_size}.png"
        run = mpdit("generate", "--class", "coat", "bag", "--num-images", "2", "--steps", "3", "--seed", "9",
                    "--batch-size", batch_size, "-o", str(out))  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert batches == 1 or f"batch {batches}/{batches}" in run.stderr  # the images really went in that many calls
        grids[batch_size] = np.asarray(Image.open(out)).astype(int)
    # Batches of 1, 3 and 16 images: equal up to a grey level of float rounding.
    assert np.abs(grids["1"] - grids["16"]).max() <= 1 and np.abs(grids["3"] - grids["16"]).max() <= 1


def greyscale_images(root, count=5):
    """`count` random 28x28 greyscale PNGs in two class folders, as Fashion-MNIST's are; returns them by path."""
    rng = np.random.default_rng(1)
    images = {}
    for i in range(count):
        path = root / ("coat" if i % 2 else "bag") / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        array = rng.integers(0, 256, (28, 28), dtype=np.uint8)
        Image.fromarray(array).save(path)
        images[str(path)] = array
    return [images[p] for p in sorted(images)]


def test_reference_writes_a_folder_or_a_dataset_as_an_adm_batch(tmp_path):
    import datasets

    expected = greyscale_images(tmp_path / "real")
    # Padded 28 -> 32 with black borders, as the bundled model's training data; greyscale repeated to RGB.
    padded = np.stack([np.repeat(np.pad(a, 2)[..., None], 3, -1) for a in expected])
    run = mpdit("reference", str(tmp_path / "real"), "-o", str(tmp_path / "ref.npz"), "--resolution", "32",
                "--preprocessing", "pad")  # fmt: skip
    assert run.returncode == 0 and "wrote" in run.stdout and "5 images of 32x32" in run.stdout, run.stderr
    with np.load(tmp_path / "ref.npz") as data:
        np.testing.assert_array_equal(data["arr_0"], padded)
        assert "arr_1" not in data

    # A `datasets` dataset (the parquet layout examples/prepare_fashion_mnist.py writes), labels kept as arr_1.
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["bag", "coat"])})
    rows = {"image": [Image.fromarray(a) for a in expected], "label": [0, 1, 0, 1, 0]}
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "parquet" / "test.parquet"))
    run = mpdit("reference", str(tmp_path / "parquet"), "-o", str(tmp_path / "ds.npz"),
                "--resolution", "32", "--preprocessing", "pad", "--max-images", "4")  # fmt: skip
    assert run.returncode == 0, run.stderr
    with np.load(tmp_path / "ds.npz") as data:
        np.testing.assert_array_equal(data["arr_0"], padded[:4])
        np.testing.assert_array_equal(data["arr_1"], [0, 1, 0, 1])


@pytest.mark.parametrize(
    "args, message",
    [
        (["-o", "ref.png"], "-o 'ref.png': must end in .npz"),
        (["--preprocessing", "pad"], "--preprocessing pad needs --resolution"),
        (["--resolution", "0"], "argument --resolution: expected an integer >= 1, got 0"),
    ],
)
def test_reference_refuses_bad_input_in_one_line(tmp_path, capsys, monkeypatch, args, message):
    greyscale_images(tmp_path / "real", 2)
    if "-o" not in args:
        args = [*args, "-o", "ref.npz"]
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_in_process(cli_main, ["reference", "real", *args], capsys)
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and message in stderr, stderr
    assert sorted(os.listdir(tmp_path)) == ["real"]


def test_convert_names_the_overwrite_flag(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "x.pt").write_bytes(b"")
    run = mpdit("convert", "--checkpoint", str(tmp_path / "x.pt"), "--output", str(tmp_path / "out"))
    assert (
        run.returncode == 2 and f"--output '{tmp_path / 'out'}' exists; pass --overwrite to replace it" in run.stderr
    )
    assert "overwrite=True" not in run.stderr
