"""The package's imports run one way, bottom to top, and never in a loop.

The graph is read from the source with `ast` (not by importing), so it counts imports inside functions and under
`TYPE_CHECKING`, and the lazy `_EXPORTS` tables of packages that import on first use.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "diffusers_mpdit"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# Bottom to top. A module may import its own layer (within its subpackage) and the layers below it.
LAYERS = (
    ("_lazy", "arguments", "atomic", "data", "paths"),
    ("models", "schedulers"),
    ("loaders",),
    ("pipelines",),
    ("convert",),
    ("caches",),
    ("sampling",),
    ("training",),
    ("evaluation",),
    ("",),  # the package root: its lazy exports name modules of every layer below
    ("cli", "custom_pipeline"),
    ("__main__",),
)


def module_name(path: Path, source: Path = SOURCE) -> tuple[str, bool]:
    """The dotted name of a source file, and whether it is a package's `__init__`."""
    parts = (source.name, *path.relative_to(source).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def imports_of(path: Path, source: Path = SOURCE) -> set[str]:
    """Every module of the package that `path` imports, anywhere in the file."""
    name, is_package = module_name(path, source)
    package = name if is_package else name.rsplit(".", 1)[0]
    root = source.name
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
            else:
                base = ""
            target = ".".join(p for p in (base, node.module or "") if p)
            if not target.split(".")[0] == root:
                continue
            for alias in node.names:
                # `from . import x` and `from .pkg import sub` name a module; `from .mod import Class` names `mod`.
                candidate = f"{target}.{alias.name}"
                found.add(candidate if _is_module(candidate, source) else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == root)
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets
        ):
            # `lazy_exports(__name__, _EXPORTS)`: each value is a submodule imported on first use.
            for value in node.value.values:
                found.add(f"{package}.{ast.literal_eval(value)}")
    found.discard(name)
    return found


def _is_module(dotted: str, source: Path) -> bool:
    relative = Path(*dotted.split(".")[1:])
    return (source / relative).with_suffix(".py").is_file() or (source / relative / "__init__.py").is_file()


def import_graph(source: Path = SOURCE) -> dict[str, set[str]]:
    return {module_name(path, source)[0]: imports_of(path, source) for path in sorted(source.rglob("*.py"))}


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"{module} is in no layer of LAYERS: add its top-level name")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in graph.items():
        for target in sorted(targets):
            if layer_of(target) > layer_of(module):
                problems.append(f"{module} imports {target}, a higher layer")
            elif layer_of(target) == layer_of(module) and target.split(".")[:2] != module.split(".")[:2]:
                problems.append(f"{module} imports {target}, a sibling on the same layer")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle():
    assert cycles(import_graph()) == []


def test_no_module_imports_a_higher_layer():
    assert upward_imports(import_graph()) == []


def test_models_and_schedulers_import_only_the_bottom_layer():
    graph = import_graph()
    for module, targets in graph.items():
        if layer_of(module) == 1:
            assert all(layer_of(t) == 0 or t.split(".")[1] == module.split(".")[1] for t in targets), (module, targets)


def test_the_graph_sees_every_kind_of_import():
    # Each construct the checks rely on, read as expected: a function's own import, a TYPE_CHECKING import, a lazy
    # table, and `from . import` of a module versus `from .module import Name`.
    graph = import_graph()
    assert "diffusers_mpdit.pipelines.pipeline_mpdit" in graph["diffusers_mpdit.pipelines"]  # _EXPORTS
    assert "diffusers_mpdit.models.single_file" in graph["diffusers_mpdit.models.transformer_mpdit"]
    assert "diffusers_mpdit.loaders" in graph["diffusers_mpdit.pipelines.pipeline_mpdit"]


@pytest.fixture
def fake_package(tmp_path):
    def build(files: dict[str, str]) -> Path:
        root = tmp_path / PACKAGE
        for relative, text in files.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return root

    return build


def test_a_cycle_through_a_function_level_import_is_found(fake_package):
    # The loop the package once had: the model's loader imports conversion, which imports the model back, inside
    # a function.
    source = fake_package(
        {
            "__init__.py": "",
            "models/__init__.py": "",
            "models/transformer.py": "from .loader import Mixin\n",
            "models/loader.py": "def load():\n    from ..convert import convert\n",
            "convert.py": "from .models.transformer import Model\n",
        }
    )
    graph = import_graph(source)
    assert cycles(graph) == [
        ["diffusers_mpdit.convert", "diffusers_mpdit.models.loader", "diffusers_mpdit.models.transformer"]
    ]
    assert upward_imports(graph) == ["diffusers_mpdit.models.loader imports diffusers_mpdit.convert, a higher layer"]


def test_an_upward_import_under_type_checking_or_a_lazy_table_is_found(fake_package):
    source = fake_package(
        {
            "__init__.py": "",
            "models/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..pipelines import P\n",
            "schedulers/__init__.py": "_EXPORTS = {'Sampler': 'sampler'}\n",
            "schedulers/sampler.py": "",
            "pipelines/__init__.py": "",
            "sampling.py": "",
        }
    )
    graph = import_graph(source)
    assert graph["diffusers_mpdit.schedulers"] == {"diffusers_mpdit.schedulers.sampler"}
    assert upward_imports(graph)[0] == "diffusers_mpdit.models imports diffusers_mpdit.pipelines, a higher layer"
