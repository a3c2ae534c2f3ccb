"""Command-line argument helpers shared by every front end (`mpdit`, the example scripts, the Space, benchmarks).

A bad value is one line naming the flag and what it allows, `prog: error: argument --flag: expected ...`, and exits
with status 2 before any work starts. argparse's own errors print the whole usage first; `OneLineParser` keeps the
line alone (the usage is one `-h` away).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


class OneLineParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose usage errors are one line, `prog: error: message (see `prog -h`)`."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} -h`)\n")


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse `type` for integers in `[minimum, maximum]` (either bound optional).

    Args:
        minimum (`int`, *optional*): The smallest allowed value.
        maximum (`int`, *optional*): The largest allowed value.
    """
    allowed = _describe("an integer", minimum, maximum, True, True)

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}") from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its fallback message
    return parse


def number(
    minimum: float | None = None,
    maximum: float | None = None,
    include_minimum: bool = True,
    include_maximum: bool = True,
) -> Callable[[str], float]:
    """An argparse `type` for finite numbers between `minimum` and `maximum` (either bound optional).

    Args:
        minimum (`float`, *optional*): The lower bound.
        maximum (`float`, *optional*): The upper bound.
        include_minimum (`bool`): Whether the lower bound itself is allowed.
        include_maximum (`bool`): Whether the upper bound itself is allowed.
    """
    allowed = _describe("a finite number", minimum, maximum, include_minimum, include_maximum)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}") from None
        low_ok = minimum is None or (value >= minimum if include_minimum else value > minimum)
        high_ok = maximum is None or (value <= maximum if include_maximum else value < maximum)
        if not (math.isfinite(value) and low_ok and high_ok):
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def _describe(kind: str, low, high, include_low: bool, include_high: bool) -> str:
    def show(x) -> str:
        return str(x) if isinstance(x, int) else f"{x:g}"

    if low is not None and high is not None:
        return f"{kind} in {'[' if include_low else '('}{show(low)}, {show(high)}{']' if include_high else ')'}"
    if low is not None:
        return f"{kind} {'>=' if include_low else '>'} {show(low)}"
    if high is not None:
        return f"{kind} {'<=' if include_high else '<'} {show(high)}"
    return kind


positive_int = integer(1)
non_negative_int = integer(0)
positive_number = number(0, include_minimum=False)
