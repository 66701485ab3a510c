"""Class labels: ids, lists, tensors or class names, checked against the model's classes."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib import resources

import numpy as np
import torch

ClassLabels = int | str | Sequence[int | str] | torch.Tensor


@lru_cache(maxsize=1)
def imagenet_id2label() -> dict[int, str]:
    """The 1000 ImageNet-1k class names in the standard index order (``0: "tench, Tinca tinca"``), shipped with the package."""
    data = json.loads(resources.files("guided_diffusers").joinpath("data/imagenet_classes.json").read_text())
    return {int(k): v for k, v in data["id2label"].items()}


def class_names(id2label: Mapping[int | str, str] | None, num_classes: int | None) -> dict[int, str] | None:
    """The class names of a model: its ``id2label``, else the ImageNet table for a 1000-class model, else None."""
    if id2label:
        return {int(k): v for k, v in id2label.items()}
    return imagenet_id2label() if num_classes == 1000 else None


def normalize_id2label(id2label: Mapping[int | str, str] | None) -> dict[str, str] | None:
    """``id2label`` with string keys, as JSON configs keep it."""
    if id2label is None:
        return None
    if not isinstance(id2label, Mapping):
        raise ValueError(f"expected id2label as a mapping of class ids to names, got {type(id2label).__name__}")
    bad = [k for k in id2label if isinstance(k, bool) or not str(k).strip().lstrip("-").isdigit()]
    if bad:
        raise ValueError(f"expected id2label keys as whole-number class ids, got {bad[0]!r}")
    return {str(int(k)): str(v) for k, v in id2label.items()}


def _name_index(id2label: Mapping[int, str]) -> dict[str, list[int]]:
    """Every comma-separated synonym of every label, lower-cased, to the ids that carry it."""
    index: dict[str, list[int]] = {}
    for class_id, label in id2label.items():
        for name in {label.strip().lower(), *(part.strip().lower() for part in label.split(","))}:
            if name:
                index.setdefault(name, []).append(class_id)
    return index


class ClassNames(Mapping[str, int]):
    """Class name -> id for every comma-separated synonym of every label, looked up case-insensitively.

    ``names["Golden Retriever"]`` and ``names["golden retriever"]`` give the same id, as ``class_labels`` accepts
    them; iteration yields the names as ``id2label`` spells them (as diffusers' DiTPipeline ``labels`` does).
    """

    def __init__(self, id2label: Mapping[int | str, str]):
        table = {int(k): v for k, v in id2label.items()}
        self._names = {name.strip(): class_id for class_id, label in table.items() for name in label.split(",") if name.strip()}
        self._index = _name_index(table)

    def __getitem__(self, name: str) -> int:
        matches = self._index.get(str(name).strip().lower()) if isinstance(name, str) else None
        if not matches:
            raise KeyError(f"unknown class name {name!r}")
        if len(matches) > 1:
            raise KeyError(f"class name {name!r} is ambiguous: ids {matches}")
        return matches[0]

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def resolve_class_labels(
    class_labels: ClassLabels, num_classes: int, id2label: Mapping[int | str, str] | None = None
) -> torch.Tensor:
    """Class labels as a (batch,) int64 tensor, each checked to lie in [0, num_classes).

    Args:
        class_labels: an id, a class name, a list of either, or a tensor of ids. Names match any comma-separated
            synonym of a label in ``id2label``, case-insensitively (``"golden retriever"``, ``"tench"``).
        num_classes: how many classes the model knows.
        id2label: the class names by id; the ImageNet table when absent and ``num_classes`` is 1000.
    """
    if isinstance(class_labels, (int, str, float, np.integer, np.floating)) or (
        torch.is_tensor(class_labels) and class_labels.ndim == 0
    ):
        class_labels = [class_labels]
    if torch.is_tensor(class_labels):
        if class_labels.dtype.is_floating_point or class_labels.dtype == torch.bool or class_labels.ndim != 1:
            raise ValueError(f"expected class_labels as a 1-D integer tensor, got {class_labels.dtype} of shape {tuple(class_labels.shape)}")
        ids = class_labels.to(torch.long).cpu()
    else:
        values = list(class_labels)
        wrong = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, str, np.integer))]
        if wrong:
            raise ValueError(f"expected class labels as integer ids or class names, got {wrong[0]!r} in {values!r}")
        if any(isinstance(v, str) for v in values):
            table = class_names(id2label, num_classes)
            if table is None:
                raise ValueError(f"expected class ids in [0, {num_classes}), got class names {values} and no id2label to look them up")
            names = _name_index(table)
            resolved = []
            for value in values:
                if not isinstance(value, str):
                    resolved.append(int(value))
                    continue
                matches = names.get(value.strip().lower())
                if not matches:
                    raise ValueError(f"unknown class name {value!r}; expected a name from id2label such as {table[0]!r}")
                if len(matches) > 1:
                    raise ValueError(f"class name {value!r} is ambiguous: ids {matches}; pass the id instead")
                resolved.append(matches[0])
            values = resolved
        try:
            ids = torch.tensor([int(v) for v in values], dtype=torch.long)
        except (TypeError, ValueError):
            raise ValueError(f"expected class ids or names, got {values!r}") from None
    if ids.numel() == 0:
        raise ValueError("expected at least one class label, got none")
    bad = ids[(ids < 0) | (ids >= num_classes)]
    if bad.numel():
        raise ValueError(f"expected class labels in [0, {num_classes}), got {bad.tolist()}")
    return ids
