"""The documents and the front ends' flags: every flag has help, every training flag is documented, links resolve."""

import argparse
import ast
import re
from pathlib import Path

import pytest

from diffusers_mpdit.sampling import add_sampling_arguments

ROOT = Path(__file__).resolve().parents[1]
FRONT_ENDS = [*sorted((ROOT / "examples").glob("*.py")), *sorted((ROOT / "benchmarks").glob("benchmark_*.py"))]
FRONT_ENDS += [
    ROOT / "space" / "app.py",
    ROOT / "src" / "diffusers_mpdit" / "cli.py",
    ROOT / "scripts" / "mutation_check.py",
]


def add_argument_calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            flags = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            yield flags, {k.arg for k in node.keywords}


@pytest.mark.parametrize("path", FRONT_ENDS, ids=lambda p: p.name)
def test_every_flag_has_help(path):
    missing = [flags for flags, keywords in add_argument_calls(path) if flags and "help" not in keywords]
    assert not missing, f"{path.name}: flags without help: {missing}"


def test_every_example_flag_is_in_the_examples_readme():
    readme = (ROOT / "examples" / "README.md").read_text()
    for script in ("train_mpdit.py", "extract_latents.py", "sample_fid.py", "prepare_fashion_mnist.py"):
        flags = [f for flags, _ in add_argument_calls(ROOT / "examples" / script) for f in flags if f.startswith("--")]
        if script == "sample_fid.py":  # the shared sampling flags, added by diffusers_mpdit.sampling
            parser = add_sampling_arguments(argparse.ArgumentParser(), "underscore", exclude=("device",))
            flags += [
                option
                for action in parser._actions
                for option in action.option_strings
                if option not in ("-h", "--help")
            ]
        absent = [f for f in flags if f"`{f}`" not in readme and f"`{f}," not in readme]
        assert flags and not absent, f"{script}: not in examples/README.md: {absent}"


def test_the_readme_is_short_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for document in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "README.md"]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", document.read_text()):
            if not target.startswith("http"):
                assert (document.parent / target).exists(), f"{document.name} links to a missing {target}"


def test_no_document_is_left_with_a_placeholder():
    for document in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "README.md"]:
        text = document.read_text()
        assert "TODO" not in text, f"{document.name} has a TODO"
        # A bare upper-case word on a line of its own is a table or section still to be filled in.
        bare = [line for line in text.splitlines() if re.fullmatch(r"[A-Z_]{4,}", line.strip())]
        assert not bare, f"{document.name} has placeholders {bare}"
