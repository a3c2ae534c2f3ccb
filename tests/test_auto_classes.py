"""diffusers' own entry points load our folders: `DiffusionPipeline` and `AutoModel` with `trust_remote_code=True`, in
processes that never imported `diffusers_mpdit`, from a folder and from the (local) Hub; and folders written before
the remote-code entries still load with `MPDiTPipeline`."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import tiny_inputs, tiny_pipeline

ALICE = "hf_alice_write"

# Fails the script if anything imported our package before the load under test.
FRESH = textwrap.dedent(
    """
    import sys
    import numpy as np, torch
    from diffusers import AutoModel, DiffusionPipeline
    assert not any(m.split(".")[0] == "diffusers_mpdit" for m in sys.modules), "diffusers_mpdit already imported"
    """
)


def run_fresh(tmp_path, *pieces, **env):
    """Runs the script made of `pieces` (each dedented) after `FRESH`, in `tmp_path`."""
    run = subprocess.run(
        [sys.executable, "-c", "\n".join(textwrap.dedent(piece) for piece in (FRESH, *pieces))],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **env},
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return run


def generate(pipe):
    out = pipe(class_labels=["coat", "bag"], num_inference_steps=3, generator=torch.Generator().manual_seed(5))
    return np.stack([np.asarray(image) for image in out.images])


def transformer_output(model):
    with torch.no_grad():
        return model(**tiny_inputs()).sample.numpy()


def save_expected(tmp_path, pipe):
    np.save(tmp_path / "images.npy", generate(pipe))
    np.save(tmp_path / "velocity.npy", transformer_output(pipe.transformer))
    torch.save(tiny_inputs(), tmp_path / "inputs.pt")


# In the fresh process: what diffusers loaded, run on the same inputs as in `generate` and `transformer_output`.
CHECK_PIPELINE = """
    assert type(pipe).__name__ == "MPDiTPipeline", type(pipe)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(class_labels=["coat", "bag"], num_inference_steps=3, generator=torch.Generator().manual_seed(5))
    np.save("pulled_images.npy", np.stack([np.asarray(image) for image in out.images]))
"""
CHECK_MODELS = """
    inputs = torch.load("inputs.pt")
    for name, model in models.items():
        assert type(model).__name__ == "MPDiTTransformer2DModel", type(model)
        with torch.no_grad():
            np.save(f"pulled_velocity_{name}.npy", model(**inputs).sample.numpy())
"""


def assert_same_as_expected(tmp_path, model_names):
    np.testing.assert_array_equal(np.load(tmp_path / "pulled_images.npy"), np.load(tmp_path / "images.npy"))
    for name in model_names:
        np.testing.assert_array_equal(
            np.load(tmp_path / f"pulled_velocity_{name}.npy"), np.load(tmp_path / "velocity.npy")
        )


def test_a_saved_folder_loads_through_diffusers_auto_classes_in_a_fresh_process(tmp_path):
    pipe = tiny_pipeline()
    save_expected(tmp_path, pipe)
    pipe.save_pretrained(tmp_path / "pipe")
    pipe.transformer.save_pretrained(tmp_path / "model")

    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_mpdit", "MPDiTPipeline"]
    assert index["transformer"] == ["transformer_mpdit", "MPDiTTransformer2DModel"]
    for folder in (tmp_path / "model", tmp_path / "pipe" / "transformer"):
        config = json.loads((folder / "config.json").read_text())
        assert config["auto_map"] == {"AutoModel": "transformer_mpdit.MPDiTTransformer2DModel"}

    run_fresh(
        tmp_path,
        f"""
        pipe = DiffusionPipeline.from_pretrained({str(tmp_path / "pipe")!r}, trust_remote_code=True)
        models = {{
            "standalone": AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True),
            "component": AutoModel.from_pretrained({str(tmp_path / "pipe" / "transformer")!r}, trust_remote_code=True),
        }}
        """,
        CHECK_PIPELINE,
        CHECK_MODELS,
    )
    assert_same_as_expected(tmp_path, ["standalone", "component"])


def test_a_pushed_repo_loads_through_diffusers_auto_classes_in_a_fresh_process(hub, tmp_path):
    pipe = tiny_pipeline()
    save_expected(tmp_path, pipe)
    pipe.push_to_hub("alice/auto-classes", token=ALICE)
    pipe.transformer.push_to_hub("alice/auto-model", token=ALICE)

    run = run_fresh(
        tmp_path,
        """
        from huggingface_hub import snapshot_download
        pipe = DiffusionPipeline.from_pretrained("alice/auto-classes", trust_remote_code=True)
        models = {
            "standalone": AutoModel.from_pretrained("alice/auto-model", trust_remote_code=True),
            "component": AutoModel.from_pretrained(
                snapshot_download("alice/auto-classes") + "/transformer", trust_remote_code=True
            ),
        }
        """,
        CHECK_PIPELINE,
        CHECK_MODELS,
        "print(type(pipe).__module__)",
        HF_TOKEN=ALICE,
    )
    assert_same_as_expected(tmp_path, ["standalone", "component"])
    # diffusers ran the repo's entry point, which imports the installed package's class.
    assert run.stdout.strip().splitlines()[-1] == "diffusers_mpdit.pipelines.pipeline_mpdit"
    assert any(path.split("?")[0].endswith("/transformer/transformer_mpdit.py") for _, path in hub.requests)


def test_without_trust_remote_code_diffusers_asks_for_it(tmp_path):
    tiny_pipeline().save_pretrained(tmp_path / "pipe")
    script = FRESH + textwrap.dedent(
        f"""
        try:
            DiffusionPipeline.from_pretrained({str(tmp_path / "pipe")!r})
        except ValueError as error:
            print(error)
        else:
            raise SystemExit("loaded without trust_remote_code")
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "trust_remote_code" in run.stdout


def test_mpdit_pipeline_loads_new_folders_without_running_their_code(tmp_path):
    from diffusers_mpdit import MPDiTPipeline

    pipe = tiny_pipeline()
    expected = generate(pipe)
    pipe.save_pretrained(tmp_path / "pipe")
    # Our own entry points are recognised by their exact text, so no code from the folder runs...
    loaded = MPDiTPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(generate(loaded), expected)

    # ...and a file that is not exactly ours goes to diffusers, which will not run it without trust_remote_code.
    marker = tmp_path / "ran"
    entry = tmp_path / "pipe" / "transformer" / "transformer_mpdit.py"
    entry.write_text(f"open({str(marker)!r}, 'w').close()\n" + entry.read_text())
    with pytest.raises(ValueError, match="trust_remote_code"):
        MPDiTPipeline.from_pretrained(tmp_path / "pipe")
    assert not marker.exists()


def test_folders_saved_before_the_entry_points_still_load(tmp_path):
    from diffusers_mpdit import MPDiTPipeline, MPDiTTransformer2DModel

    pipe = tiny_pipeline()
    expected = generate(pipe)
    pipe.save_pretrained(tmp_path / "old")
    # The index as earlier releases wrote it: the class by name, the transformer by its module path; no .py files.
    index_path = tmp_path / "old" / "model_index.json"
    index = json.loads(index_path.read_text())
    index["_class_name"] = "MPDiTPipeline"
    index["transformer"] = ["diffusers_mpdit.models.transformer_mpdit", "MPDiTTransformer2DModel"]
    index_path.write_text(json.dumps(index))
    for path in [tmp_path / "old" / "pipeline_mpdit.py", tmp_path / "old" / "transformer" / "transformer_mpdit.py"]:
        path.unlink()
    config_path = tmp_path / "old" / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    del config["auto_map"]
    config_path.write_text(json.dumps(config))

    loaded = MPDiTPipeline.from_pretrained(tmp_path / "old")
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(generate(loaded), expected)
    model = MPDiTTransformer2DModel.from_pretrained(tmp_path / "old" / "transformer")
    np.testing.assert_array_equal(transformer_output(model), transformer_output(pipe.transformer))


def test_a_loaded_config_keeps_auto_map_out_of_the_settings(tmp_path):
    from diffusers_mpdit import MPDiTTransformer2DModel

    pipe = tiny_pipeline()
    pipe.transformer.save_pretrained(tmp_path / "model")
    model = MPDiTTransformer2DModel.from_pretrained(tmp_path / "model")
    assert "auto_map" not in model.config
    model.save_pretrained(tmp_path / "again")  # and saving again writes it once, fresh
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    assert config["auto_map"] == {"AutoModel": "transformer_mpdit.MPDiTTransformer2DModel"}
