"""Reading ``torch.save`` files without running anything from them: ``torch.load(weights_only=True)``, and a refusal
in one line naming the file and what it holds instead (never torch's advice to load it unsafely). Checkpoints,
original weights and Inception weights are all read here."""

from __future__ import annotations

import os
import re
import warnings
import zipfile
from typing import Any

import torch


def load_weights_only(path: str | os.PathLike, expected: str = "a weights-only tensor file") -> Any:
    """The tensors and plain containers of a ``torch.save`` file (``weights_only=True``: no code in it runs).

    Args:
        path: the file.
        expected: what the caller expects there, for the refusal (``"a PyTorch checkpoint (torch.save)"``).

    Raises:
        ValueError: one line: the file, what was expected and what it holds instead.
    """
    try:
        with warnings.catch_warnings():  # a plain pickle's protocol warning would come before the one line
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - every failure is refused in one line
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if found:
            got = f"a pickle that calls {found.group(1)}, which is code, not data, and is refused"
        elif not zipfile.is_zipfile(path):
            got = "a file that is not a torch.save archive (random or truncated bytes, or a plain pickle)"
        elif "Weights only load failed" in str(error):
            got = "a pickle of objects other than tensors and plain values (code, not data), which is refused"
        else:
            got = f"a torch.save archive that holds more than tensors and plain values, or is damaged ({type(error).__name__})"
        raise ValueError(f"expected {expected} in {str(path)!r} (tensors and plain values; nothing in it is run), got {got}") from None
