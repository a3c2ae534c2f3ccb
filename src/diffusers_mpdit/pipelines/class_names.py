"""Class ids by name, for the pipeline and every front end: each comma-separated synonym in `id2label` resolves to
its id, exactly or ignoring case. Errors say what is wrong without naming an argument; callers put their own name in
front."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


class ClassNames:
    """The classes of a model.

    Args:
        id2label (`Mapping[int, str]`, *optional*): Class names by id (keys may be strings, as JSON gives them back);
            `"sneaker, trainer"` makes both names resolve.
        num_classes (`int`): The model's classes; id `num_classes` is the null class.
    """

    def __init__(self, id2label: Mapping[Any, str] | None, num_classes: int):
        self.id2label = {int(k): v for k, v in (id2label or {}).items()}
        self.num_classes = num_classes
        self._ids: dict[str, list[int]] = {}
        for class_id, names in sorted(self.id2label.items()):
            for name in (n.strip() for n in names.split(",")):
                if name and class_id not in self._ids.setdefault(name, []):
                    self._ids[name].append(class_id)

    @property
    def labels(self) -> dict[str, int]:
        """Every name (each synonym) and its id; an ambiguous name maps to its first id."""
        return {name: ids[0] for name, ids in sorted(self._ids.items())}

    def name(self, class_id: int) -> str:
        """The id's name in `id2label`, or the id itself as text.

        Args:
            class_id (`int`): A class id.
        """
        return self.id2label.get(class_id, str(class_id))

    def matches(self, name: str) -> list[int]:
        """Every id `name` names as one of its comma-separated synonyms, exactly or else ignoring case; empty for an
        unknown name.

        Args:
            name (`str`): A class name.
        """
        ids = self._ids.get(name)
        if ids is None:
            ids = {k.casefold(): v for k, v in self._ids.items()}.get(name.casefold())
        return list(ids or [])

    def id(self, name: str) -> int:
        """The id of a class name.

        Raises:
            ValueError: for an unknown name (with the closest known ones) or a name shared by several classes.
        """
        ids = self.matches(name) or None
        if ids is None:
            if not self._ids:
                raise ValueError(f"there are no class names to look {name!r} up in (no `id2label`); give class ids")
            close = difflib.get_close_matches(name, list(self._ids), n=5, cutoff=0.5)
            hint = f"; closest: {', '.join(repr(c) for c in close)}" if close else ""
            raise ValueError(f"unknown class name {name!r}{hint}")
        if len(ids) > 1:
            options = "; ".join(f"{i} ({self.id2label[i]})" for i in ids)
            raise ValueError(f"class name {name!r} is ambiguous: it names classes {options}; give the id")
        return ids[0]

    def ids(self, values: Any, allow_null: bool = True, parse_digits: bool = False) -> list[int]:
        """Class ids from ids, names, or (nested) lists of them.

        Args:
            values: An id, a name, or a (nested) sequence or array of them.
            allow_null (`bool`): Accept the null class id `num_classes`.
            parse_digits (`bool`): Read strings of digits as ids (for command-line values).
        """
        last = self.num_classes if allow_null else self.num_classes - 1
        out = []
        for value in _flatten(values):
            if isinstance(value, str):
                value = value.strip()
            if isinstance(value, str) and parse_digits and value.lstrip("-").isdigit():
                value = int(value)
            if isinstance(value, str):
                out.append(self.id(value))
                continue
            if isinstance(value, (bool, float, np.floating)) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"expected class ids (integers) or names, got {value!r}")
            if not 0 <= value <= last:
                null = f" ({self.num_classes} is the null class)" if allow_null else ""
                raise ValueError(f"class id {int(value)} is out of range: ids run from 0 to {last}{null}")
            out.append(int(value))
        return out


def _flatten(values: Any) -> list:
    if isinstance(values, (str, int, np.integer)) or not isinstance(values, (Sequence, np.ndarray)):
        return [values]
    return [item for value in values for item in _flatten(value)]
