"""Model configs and folders checked before a network is built: each value's type against the constructor's
annotation, and a folder's config and weights files, each refused in one line naming what was expected."""

from __future__ import annotations

import collections.abc
import types
import typing
from pathlib import Path
from typing import Any

_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
            "diffusion_pytorch_model.bin", "diffusion_pytorch_model.bin.index.json")


def _fits(value: Any, annotation: Any) -> bool:
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arm) for arm in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (collections.abc.Sequence, list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and (not args or _all_fit(value, args[0]))
    return True  # types this check does not know are left to the constructor


def _all_fit(values: Any, annotation: Any) -> bool:
    return all(_fits(item, annotation) for item in values)


def _describe(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace("collections.abc.", "")
    return getattr(annotation, "__name__", None) or text


def check_config_types(owner: type, init: Any, values: dict[str, Any]) -> None:
    """Refuse a config value whose type does not fit ``init``'s annotation (``"model_channels": "32"``).

    Raises:
        ValueError: one line naming the model, the key, the type expected and the value that came.
    """
    hints = typing.get_type_hints(init)
    for name, value in values.items():
        annotation = hints.get(name)
        if annotation is None or name == "self" or value is None:  # None: "not given", which the constructor handles
            continue
        if not _fits(value, annotation):
            raise ValueError(f"expected {owner.__name__} config {name!r} as {_describe(annotation)}, got {value!r} ({type(value).__name__})")


def _missing_components(root: Path, class_name: str) -> list[str]:
    import json

    try:
        index = json.loads((root / "model_index.json").read_text())
    except (OSError, ValueError):
        return []
    return [name for name, value in index.items()
            if isinstance(value, list) and len(value) == 2 and value[1] == class_name and not (root / name).is_dir()]


class CheckedFolderMixin:
    """``from_pretrained`` of a local folder checks first that the (sub)folder, its config.json and its weights file
    are there, and names the one that is missing (diffusers' own message names a ``.bin`` file or the parent folder);
    a missing weights file is reported in diffusers' words, with the variant the folder holds."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> Any:
        root = Path(pretrained_model_name_or_path) if isinstance(pretrained_model_name_or_path, (str, Path)) else None
        if root is not None and root.is_dir():
            subfolder = kwargs.get("subfolder")
            folder = root / subfolder if subfolder else root
            if not folder.is_dir():
                raise OSError(f"expected the {subfolder}/ folder of {cls.__name__} in {str(root)!r} (listed in model_index.json), got none")
            if not (folder / "config.json").is_file() and (folder / "model_index.json").is_file():
                # diffusers loads a component whose subfolder is missing from the pipeline's root folder
                missing = _missing_components(folder, cls.__name__)
                if missing:
                    raise OSError(f"expected the {missing[0]}/ folder of {cls.__name__} in {str(folder)!r} (listed in model_index.json), got none")
            if not (folder / "config.json").is_file():
                raise OSError(f"expected {cls.__name__}'s config.json in {str(folder)!r}, got none")
            variant = kwargs.get("variant")
            names = [n.replace("diffusion_pytorch_model", f"diffusion_pytorch_model.{variant}", 1) if variant else n for n in _WEIGHTS]
            if not any((folder / name).is_file() for name in names):
                # diffusers' own words first (its tests and users match them), then what the folder does hold
                variants = sorted({p.name.split(".")[1] for p in folder.glob("diffusion_pytorch_model.*.*")} - {"safetensors", "bin"})
                hint = f"; it holds the {', '.join(variants)} variant: pass variant={variants[0]!r}" if variants and not variant else ""
                raise OSError(f"Error no file named {names[0]} found in directory {folder} (the weights of {cls.__name__}){hint}")
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
