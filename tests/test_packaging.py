"""The wheel: built from a copy of the source, installed without `-e` into a folder of its own, and used from there."""

import json
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What a checkout holds beside the source: left out at the top level only (src/diffusers_mpdit/data is source).
TOP_LEVEL = {".git", "out", "data", "build", "dist", ".ruff_cache", ".pytest_cache"}


def ignore(folder, names):
    top = [n for n in names if Path(folder) == ROOT and (n in TOP_LEVEL or n.startswith(".venv"))]
    return top + [n for n in names if n == "__pycache__" or n.endswith(".egg-info")]


def test_wheel_ships_the_top_level_hub_cards_and_renders_them_installed(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)], check=True
    )
    (wheel,) = (tmp_path / "dist").glob("diffusers_mpdit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    templates = sorted(p.name for p in (ROOT / "hub_cards").glob("*.md"))
    assert {f"diffusers_mpdit/hub_cards/{t}" for t in templates} <= set(names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "diffusers_mpdit/bundled/mpdit-fashion-mnist/transformer/diffusion_pytorch_model.safetensors" in names
    assert "diffusers_mpdit/data/imagenet1k_id2label.json" in names

    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-compile", "--target", str(site), str(wheel)], check=True)
    script = textwrap.dedent(
        """
        import json, sys
        import diffusers_mpdit
        from diffusers_mpdit.loaders.hub import render_model_card
        card = render_model_card(
            "mpdit", repo_id="me/model", title="t", license="apache-2.0", datasets=[], patch_sizes=[4, 2],
            depths=[2, 2], width=32, parameters="0.1M", num_classes=10, resolution="16x16", pixel_space=True,
            description="d", example_classes=[0, 1], weights="EMA weights",
        )
        print(json.dumps({"package": diffusers_mpdit.__file__, "card": str(card)}))
        """
    )
    # Run elsewhere, with the installed folder first on the path: the source checkout must play no part.
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(result["package"]).is_relative_to(site)
    assert 'MPDiTPipeline.from_pretrained("me/model")' in result["card"] and "license: apache-2.0" in result["card"]
    assert "@inproceedings" in result["card"] or "@article" in result["card"]  # the included citation template
