"""Names a package exports but imports on first use, as diffusers' own `_LazyModule` does, so that importing the
package (and the `mpdit` command) does not load torch and diffusers until something needs them."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for a package whose `name` lives in its submodule `exports[name]`.

    Args:
        package (`str`): The package's `__name__`.
        exports (`dict[str, str]`): Exported name -> submodule (relative to the package).
    """
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
