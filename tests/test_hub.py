"""The Hub, offline: model cards from hub_cards/, push_to_hub and from_pretrained against a local Hub server."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_pipeline
from huggingface_hub import HfApi, hf_hub_download

from diffusers_mpdit.data import imagenet1k_id2label
from diffusers_mpdit.loaders.hub import TEMPLATES, card_template_for, render_model_card

ALICE, BOB = "hf_alice_write", "hf_bob_write"

DEMO_VALUES = {
    "title": "MPDiT demo",
    "dataset": "zalando-datasets/fashion_mnist",
    "data_description": "70,000 28x28 greyscale images, 10 classes",
    "class_names": ["T-shirt", "trouser"],
    "training": "examples/train_mpdit.py",
    "train_command": "accelerate launch examples/train_mpdit.py ...",
    "steps": 8,
    "guidance_scale": 1.5,
    "guidance_interval": None,
    "example_classes": ["sneaker", "bag"],
    "results": "| metric | value |\n| --- | --- |\n| A_gen | 0.97 |",
}


def card_values(template, repo_id):
    base = {"repo_id": repo_id, "weights": "EMA weights"}
    if template == "mpdit-demo":
        return {**base, **DEMO_VALUES, "patch_sizes": [4, 2], "depths": [2, 2], "width": 32, "parameters": "0.1M"}
    if template == "mpdit-trained":
        return {
            **card_values("mpdit", repo_id),
            "dataset": "my/data",
            "num_samples": 24,
            "steps": 10,
            "recipe": "AdamW lr 0.0002",
            "sample_grid": "samples/final.png",
        }
    if template == "mpdit":
        return {
            **base,
            "title": "custom",
            "license": "apache-2.0",
            "datasets": ["my/data"],
            "patch_sizes": [4, 2],
            "depths": [2, 2],
            "width": 32,
            "parameters": "0.1M",
            "num_classes": 10,
            "resolution": "16x16",
            "pixel_space": False,
            "description": "A test model.",
            "example_classes": ["coat", 3],
        }
    return base


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_card_has_front_matter_usage_results_and_citation(template):
    card = render_model_card(template, **card_values(template, "org/model"))
    meta = yaml.safe_load(str(card).split("---")[1])
    assert meta["library_name"] == "diffusers" and meta["license"] and meta["pipeline_tag"]
    assert "mpdit" in meta["tags"] and meta["datasets"]
    assert python_blocks(card.text) and 'MPDiTPipeline.from_pretrained("org/model")' in card.text
    assert "@inproceedings{dao2026mpdit" in card.text
    if template != "mpdit":
        assert "## Results" in card.text


def test_missing_card_value_is_named():
    with pytest.raises(ValueError, match="'repo_id' is undefined"):
        render_model_card("mpdit-xl-256", weights="EMA weights")
    with pytest.raises(ValueError, match="'results' is undefined"):
        render_model_card(
            "mpdit-demo", **{k: v for k, v in card_values("mpdit-demo", "a/b").items() if k != "results"}
        )
    with pytest.raises(ValueError, match="Unknown model-card `template`"):
        render_model_card("dit")


def imagenet_pipeline(**overrides):
    return tiny_pipeline(num_classes=1000, id2label=imagenet1k_id2label(), **overrides)


def test_card_chosen_by_configuration():
    assert card_template_for(tiny_pipeline()) == "mpdit"
    pipe = imagenet_pipeline()
    assert card_template_for(pipe) == "mpdit"  # tiny, whatever its classes
    with torch.device("meta"):
        from diffusers_mpdit import MPDiTTransformer2DModel

        pipe.transformer = MPDiTTransformer2DModel.from_preset("MPDiT-XL/4x", sample_size=64)
    assert card_template_for(pipe) == "mpdit-xl-512"


def test_card_usage_snippets_run_against_pushed_tiny_models(hub, tmp_path):
    """Every card's code, as a user would copy it, runs end to end in a fresh process against the local Hub."""
    pipelines = {
        "imagenet": imagenet_pipeline(),
        "demo": tiny_pipeline(with_vae=False, in_channels=1, sample_size=16),
        "custom": tiny_pipeline(),
    }
    scripts = []
    for template in TEMPLATES:
        pipe = pipelines[
            {"mpdit-demo": "demo", "mpdit": "custom", "mpdit-trained": "custom"}.get(template, "imagenet")
        ]
        repo_id = f"alice/snippet-{template}"
        pipe.push_to_hub(repo_id, token=ALICE, card_template=template, card_values=card_values(template, repo_id))
        readme = hf_hub_download(repo_id, "README.md", token=ALICE)
        scripts += python_blocks(open(readme).read())
    assert len(scripts) >= len(TEMPLATES) + 3
    runner = (
        "import sys\nfor code in sys.argv[1:]:\n    exec(compile(code, '<card>', 'exec'), {'__name__': '__main__'})\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", runner, *scripts],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HF_TOKEN": ALICE},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert {"golden_retriever.png", "sample.png"} <= {p.name for p in tmp_path.iterdir()}


def test_push_to_hub_and_pull_in_a_fresh_process(hub, tmp_path):
    pipe = tiny_pipeline()
    expected = pipe(class_labels=["coat", "bag"], num_inference_steps=3, generator=torch.Generator().manual_seed(7))
    np.save(tmp_path / "expected.npy", np.stack([np.array(im) for im in expected.images]))

    info = pipe.push_to_hub("round-trip", token=ALICE)  # a bare name lands in the token owner's namespace
    assert "alice/round-trip" in info.commit_url
    files = set(HfApi(token=ALICE).list_repo_files("alice/round-trip"))
    assert {"README.md", "model_index.json", "transformer/diffusion_pytorch_model.safetensors"} <= files
    assert not any(f.endswith(".bin") for f in files)
    readme = open(hf_hub_download("alice/round-trip", "README.md", token=ALICE)).read()
    assert "library_name: diffusers" in readme and 'MPDiTPipeline.from_pretrained("alice/round-trip")' in readme
    index = json.load(open(hf_hub_download("alice/round-trip", "model_index.json", token=ALICE)))
    assert index["transformer"] == ["transformer_mpdit", "MPDiTTransformer2DModel"]  # diffusers' remote-code form
    assert "transformer/transformer_mpdit.py" in files

    script = textwrap.dedent(
        f"""
        import numpy as np, torch
        from diffusers_mpdit import MPDiTPipeline
        pipe = MPDiTPipeline.from_pretrained("alice/round-trip")
        pipe.set_progress_bar_config(disable=True)
        out = pipe(class_labels=["coat", "bag"], num_inference_steps=3, generator=torch.Generator().manual_seed(7))
        np.save({str(tmp_path / "pulled.npy")!r}, np.stack([np.array(im) for im in out.images]))
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "pulled.npy"), np.load(tmp_path / "expected.npy"))
    assert ("GET", "/api/models/alice/round-trip/revision/main") in hub.requests


def test_private_repo_needs_the_right_token(hub):
    from diffusers_mpdit import MPDiTPipeline

    tiny_pipeline().push_to_hub("alice/private-model", token=ALICE, private=True)
    with pytest.raises(OSError, match=r"Could not download 'alice/private-model' .*HTTP 401.*valid `token`"):
        MPDiTPipeline.from_pretrained("alice/private-model", token="hf_wrong_token")
    with pytest.raises(OSError, match="HTTP 401"):
        MPDiTPipeline.from_pretrained("alice/private-model")
    with pytest.raises(OSError, match="HTTP 404"):
        MPDiTPipeline.from_pretrained("alice/private-model", token=BOB)  # someone else's private repo
    loaded = MPDiTPipeline.from_pretrained("alice/private-model", token=ALICE)
    assert loaded.id2label[4] == "coat"


def test_push_with_a_wrong_token_fails_clearly():
    from huggingface_hub.errors import HfHubHTTPError

    with pytest.raises(HfHubHTTPError, match="401"):
        tiny_pipeline().push_to_hub("alice/never", token="hf_wrong_token")


def test_diffusion_pipeline_custom_pipeline_from_the_hub(tmp_path):
    """The older route, `custom_pipeline=diffusers_mpdit.CUSTOM_PIPELINE`, keeps working, from a repo id (whose
    components diffusers now finds through their entry points) and from a downloaded snapshot."""
    tiny_pipeline().push_to_hub("alice/custom-code", token=ALICE)
    script = textwrap.dedent(
        """
        import diffusers_mpdit
        from diffusers import DiffusionPipeline
        from huggingface_hub import snapshot_download
        for source in ("alice/custom-code", snapshot_download("alice/custom-code")):
            pipe = DiffusionPipeline.from_pretrained(
                source, custom_pipeline=diffusers_mpdit.CUSTOM_PIPELINE, trust_remote_code=True
            )
            assert type(pipe).__name__ == "MPDiTPipeline"
            pipe.set_progress_bar_config(disable=True)
            print(pipe(class_labels="coat", num_inference_steps=1, output_type="np").images.shape)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HF_TOKEN": ALICE},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("(1, 16, 16, 3)") == 2


def test_local_hub_speaks_whoami_ranges_and_validate_yaml(hub):
    import urllib.request

    assert HfApi(token=ALICE).whoami()["name"] == "alice"
    tiny_pipeline().push_to_hub("alice/ranges", token=ALICE)
    assert ("POST", "/api/validate-yaml") in hub.requests  # push_to_hub validates the card's metadata first
    url = f"{hub.url}/alice/ranges/resolve/main/model_index.json"
    full = urllib.request.urlopen(urllib.request.Request(url)).read()
    part = urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=10-19"}))
    assert part.status == 206 and part.read() == full[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(full)}"
    head = urllib.request.urlopen(urllib.request.Request(url, method="HEAD"))
    assert head.headers["X-Repo-Commit"] and int(head.headers["Content-Length"]) == len(full)


def test_mpdit_labels_reads_only_the_configs_of_a_hub_model(hub):
    tiny_pipeline().push_to_hub("labels-only", token=ALICE)
    before = len(hub.requests)
    run = subprocess.run(
        [str(Path(sys.executable).with_name("mpdit")), "labels", "alice/labels-only"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[:2] == ["0\tT-shirt, top", "1\ttrouser"]
    fetched = [path for method, path in hub.requests[before:] if "/resolve/" in path]
    assert fetched and all(path.endswith(("model_index.json", "transformer/config.json")) for path in fetched)
