"""Outputs appear whole or not at all: a writer that fails part-way leaves the old file or folder as it was."""

import os

import pytest

from diffusers_mpdit.atomic import atomic_path, save_pretrained_atomically


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        with open(tmp, "w") as f:
            f.write("half of the new")
        raise RuntimeError("the writer failed")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]
    with atomic_path(target) as tmp, open(tmp, "w") as f:
        f.write("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["out.txt"]


class Saver:
    """Writes a folder the way `save_pretrained` does; fails after the first file when told to."""

    def __init__(self, text, fail=False):
        self.text, self.fail = text, fail

    def save_pretrained(self, folder, safe_serialization=True):
        os.makedirs(os.path.join(folder, "transformer"), exist_ok=True)
        with open(os.path.join(folder, "transformer", "weights"), "w") as f:
            f.write(self.text)
        if self.fail:
            raise OSError("disk full")
        with open(os.path.join(folder, "model_index.json"), "w") as f:
            f.write(self.text)


@pytest.mark.parametrize("merge", [False, True])
def test_a_failed_save_leaves_the_old_folder(tmp_path, merge):
    out = tmp_path / "model"
    save_pretrained_atomically(Saver("old"), out, merge=merge)
    (out / "checkpoint-1").mkdir()  # what a training run keeps beside its pipeline
    with pytest.raises(OSError, match="disk full"):
        save_pretrained_atomically(Saver("new", fail=True), out, merge=merge)
    assert (out / "transformer" / "weights").read_text() == "old" and (out / "model_index.json").read_text() == "old"
    assert os.listdir(tmp_path) == ["model"]  # no temporary folder left
    save_pretrained_atomically(Saver("new"), out, merge=merge)
    assert (out / "transformer" / "weights").read_text() == "new" and (out / "model_index.json").read_text() == "new"
    # Replacing the whole folder drops what was beside the pipeline; merging keeps it.
    assert (out / "checkpoint-1").is_dir() == merge


class TwoComponents:
    """A pipeline folder with two components and an index."""

    def __init__(self, text):
        self.text = text

    def save_pretrained(self, folder, safe_serialization=True):
        for component in ("transformer", "vae"):
            os.makedirs(os.path.join(folder, component))
            with open(os.path.join(folder, component, "weights"), "w") as f:
                f.write(self.text)
        with open(os.path.join(folder, "model_index.json"), "w") as f:
            f.write(self.text)


def test_a_merge_that_fails_between_components_leaves_no_index(tmp_path):
    out = tmp_path / "model"
    save_pretrained_atomically(TwoComponents("old"), out, merge=True)
    # A plain file where the new vae folder must go: renaming a folder onto it fails after the transformer moved.
    for name in os.listdir(out / "vae"):
        os.unlink(out / "vae" / name)
    os.rmdir(out / "vae")
    (out / "vae").write_text("in the way")
    with pytest.raises(OSError):
        save_pretrained_atomically(TwoComponents("new"), out, merge=True)
    assert (out / "transformer" / "weights").read_text() == "new"
    # Half old, half new: no index may claim the folder is a complete pipeline.
    assert not (out / "model_index.json").exists()
