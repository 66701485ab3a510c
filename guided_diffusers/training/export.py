"""The trained model's folder: written aside, then moved into ``--output_dir`` entry by entry with the file that
makes it loadable (``model_index.json`` / ``config.json``) last, so ``--output_dir`` never holds a half-written
model; and uploaded to the Hub without the checkpoints."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..publishing import push_folder_to_hub, replace_directory

__all__ = ["HUB_IGNORE_PATTERNS", "publish_folder", "push_output_to_hub"]

# Checkpoints (optimizer state, RNG) and unfinished writes stay local.
HUB_IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", ".*", ".*/**"]


def publish_folder(staging: str | os.PathLike, output_dir: str | os.PathLike, last: str) -> None:
    """Move every entry of the complete folder ``staging`` into ``output_dir`` (replacing same-named entries), the
    entry ``last`` after all others; ``staging`` is removed.

    Args:
        staging: the written folder (on the same filesystem as ``output_dir``).
        output_dir: where the model goes (it may hold checkpoints and logs, which are kept).
        last (`str`): the entry whose presence makes the folder loadable.
    """
    staging, output_dir = Path(staging), Path(output_dir)
    if not (staging / last).exists():
        raise FileNotFoundError(f"expected {last} in the written model folder {staging}, got none")
    output_dir.mkdir(parents=True, exist_ok=True)
    stale = output_dir / last
    if stale.is_file():  # the old model stops being loadable while its parts are replaced
        os.remove(stale)
    entries = sorted((entry for entry in staging.iterdir() if entry.name != last), key=lambda entry: entry.name)
    for entry in [*entries, staging / last]:
        target = output_dir / entry.name
        if entry.is_dir():
            replace_directory(entry, target)
        else:
            os.replace(entry, target)
    shutil.rmtree(staging, ignore_errors=True)


def push_output_to_hub(
    output_dir: str | os.PathLike, repo_id: str, *, token: str | None = None, private: bool = False, commit_message: str = "Upload trained model (guided_diffusers)"
) -> str:
    """Create ``repo_id`` if needed and upload ``output_dir`` without its checkpoints.

    Raises:
        RuntimeError: the upload failed; the message says how to retry (the local folder is complete).
    """
    return push_folder_to_hub(output_dir, repo_id, token=token, private=private, commit_message=commit_message, ignore_patterns=HUB_IGNORE_PATTERNS)
