import os
import sys
import tempfile

# Helpers such as official_reference.py and local_hub.py live beside the tests.
sys.path.insert(0, os.path.dirname(__file__))

from local_hub import LocalHub  # noqa: E402

# huggingface_hub reads these when it is imported, so they are set before anything imports it: every Hub call of the
# suite (and of the processes it starts) goes to the local server, through the LFS path, with a throwaway cache.
HUB = LocalHub(tokens={"hf_alice_write": "alice", "hf_bob_write": "bob"}).start()
os.environ.update(
    HF_ENDPOINT=HUB.url,
    HF_HUB_DISABLE_XET="1",
    HF_HOME=tempfile.mkdtemp(prefix="mpdit-tests-hf-home-"),
    HF_HUB_DISABLE_TELEMETRY="1",
    HF_HUB_DISABLE_PROGRESS_BARS="1",
)
os.environ.pop("HF_TOKEN", None)

import pytest  # noqa: E402
import torch  # noqa: E402

# Under pytest-xdist each worker, and every process it starts, gets one thread: two workers on a 2-core machine, not
# four threads fighting; and a test comparing its own float32 results with a subprocess's bit for bit needs the two
# to split their sums alike.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


@pytest.fixture
def hub():
    return HUB


@pytest.fixture
def tiny_model():
    from diffusers_mpdit import MPDiTTransformer2DModel

    torch.manual_seed(0)
    model = MPDiTTransformer2DModel.from_preset("MPDiT-tiny")
    # Zero-initialised modulation and output would hide most mistakes: give every weight a value.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def tiny_inputs(batch_size=2, channels=4, height=16, width=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch_size, channels, height, width, generator=g),
        "timestep": torch.rand(batch_size, generator=g),
        "class_labels": torch.randint(0, 11, (batch_size,), generator=g),
    }


def tiny_vae(latents_mean=(0.5, -0.25, 0.1, 0.0), latents_std=(2.0, 1.5, 0.5, 1.0)):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        latents_mean=latents_mean,
        latents_std=latents_std,
        scaling_factor=1.0,
    ).eval()


def tiny_pipeline(with_vae=True, id2label=None, **transformer_overrides):
    """A tiny latent (or pixel-space) pipeline with live weights and named classes."""
    from diffusers_mpdit import MPDiTPipeline, MPDiTTransformer2DModel, default_scheduler

    torch.manual_seed(0)
    overrides = {"sample_size": 8, **transformer_overrides}
    transformer = MPDiTTransformer2DModel.from_preset("MPDiT-tiny", **overrides)
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    if id2label is None:
        id2label = {i: name for i, name in enumerate(CLASS_NAMES[: transformer.config.num_classes])}
    pipe = MPDiTPipeline(transformer.eval(), tiny_vae() if with_vae else None, default_scheduler(), id2label)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# The bundled demo model's classes, in order.
FASHION_MNIST = [
    "T-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]

CLASS_NAMES = [
    "T-shirt, top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker, trainer",
    "bag",
    "ankle boot, boot",
    "trainer",
]


def run_in_process(main, argv, capsys):
    """A front end's `main(argv)` in this process: (exit status, stdout, stderr). A subprocess per bad-input case
    costs seconds of imports; one case per front end still runs as a subprocess, for what only that shows (nothing
    else printed, e.g. by a library's logging)."""
    try:
        code = main([str(a) for a in argv]) or 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
        if not isinstance(exit_.code, int) and exit_.code is not None:
            print(exit_.code, file=sys.stderr)  # `raise SystemExit("error: ...")` prints its message, then exits 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err
