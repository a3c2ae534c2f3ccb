"""Adding classes to a trained class-conditional MPDiT, and taking them out again.

A class is one row of the class-token table (`num_classes + 1` rows, the last being the null class that guidance
uses). New classes take the ids after the old ones, and the null row moves to the end, so every old id, the null
class's embedding and the rule "the null id is `num_classes`" are unchanged. The table becomes a new `nn.Parameter`
(same `requires_grad`) in the same module: hooks on the module stay attached, but an optimizer or a gradient hook
holding the old parameter does not follow, so grow the table before building those.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _table(transformer) -> nn.Embedding:
    if transformer.class_embed is None:
        raise ValueError("The transformer is unconditional (num_classes=0): it has no classes to add or remove.")
    return transformer.class_embed.embedding_table


def _replace_rows(transformer, weight: torch.Tensor, num_classes: int) -> None:
    table = _table(transformer)
    requires_grad = table.weight.requires_grad
    table.weight = nn.Parameter(weight.contiguous(), requires_grad=requires_grad)
    table.num_embeddings = weight.shape[0]
    transformer.register_to_config(num_classes=num_classes)


def add_classes(transformer, num_new_classes: int, rows: torch.Tensor | None = None) -> list[int]:
    """Grows the class-token table of an [`MPDiTTransformer2DModel`] by `num_new_classes` rows, in place.

    The new classes get ids `num_classes` to `num_classes + num_new_classes - 1`; the null class moves to the new
    `num_classes`, with its embedding unchanged, and `config.num_classes` is updated. Every old class keeps its id and
    its embedding, so the grown model's output for them is exactly the old model's.

    Args:
        transformer ([`MPDiTTransformer2DModel`]): A class-conditional model.
        num_new_classes (`int`): How many classes to add, at least 1.
        rows (`torch.Tensor`, *optional*): The new classes' embeddings, `(num_new_classes, num_class_tokens *
            hidden_size)` (a trained LoRA's saved rows). Default: copies of the null class's row, so a new class
            starts as the model's unconditional prediction, leaning towards none of the old classes.

    Returns:
        `list[int]`: the new class ids.
    """
    table = _table(transformer)
    if not isinstance(num_new_classes, int) or num_new_classes < 1:
        raise ValueError(f"`num_new_classes` must be an integer >= 1, got {num_new_classes!r}.")
    num_classes = transformer.config.num_classes
    old = table.weight.detach()
    if rows is None:
        rows = old[num_classes:].expand(num_new_classes, -1)
    elif tuple(rows.shape) != (num_new_classes, old.shape[1]):
        raise ValueError(
            f"`rows` must have shape ({num_new_classes}, {old.shape[1]}) (new classes, num_class_tokens x hidden "
            f"size), got {tuple(rows.shape)}: were they trained for another model?"
        )
    weight = torch.cat([old[:num_classes], rows.detach().to(old), old[num_classes:]])
    _replace_rows(transformer, weight, num_classes + num_new_classes)
    return list(range(num_classes, num_classes + num_new_classes))


def remove_classes(transformer, class_ids: Sequence[int]) -> dict[int, int]:
    """Takes classes out of the class-token table of an [`MPDiTTransformer2DModel`], in place.

    The other classes keep their order (ids after a removed one move down) and the null class stays last. Removing
    the classes [`add_classes`] added gives the original table back exactly.

    Args:
        transformer ([`MPDiTTransformer2DModel`]): A class-conditional model.
        class_ids (`Sequence[int]`): Ids of real classes (not the null class) to remove.

    Returns:
        `dict[int, int]`: the new id of every kept class, keyed by its old id (the null class included).
    """
    table = _table(transformer)
    num_classes = transformer.config.num_classes
    removed = set(class_ids)
    bad = sorted(i for i in removed if not isinstance(i, int) or not 0 <= i < num_classes)
    if bad:
        raise ValueError(f"`class_ids` must be class ids in [0, {num_classes - 1}], got {bad}.")
    if len(removed) >= num_classes:
        raise ValueError("`class_ids` would remove every class; a class-conditional model needs at least one.")
    kept = [i for i in range(num_classes + 1) if i not in removed]
    _replace_rows(transformer, table.weight.detach()[kept], num_classes - len(removed))
    return {old: new for new, old in enumerate(kept)}
