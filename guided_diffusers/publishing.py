"""Publishing folders: replacing one atomically on disk, and uploading one to the Hub. Converters and training share it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path


def replace_directory(source: Path, target: Path) -> None:
    """Move the complete folder ``source`` to ``target``, replacing an existing ``target``; ``target`` is always
    either the old folder or the new one, never a mixture."""
    if target.exists():
        backup = target.with_name(f".{target.name}.old")
        shutil.rmtree(backup, ignore_errors=True)
        os.replace(target, backup)
        os.replace(source, target)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(source, target)


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload (guided_diffusers)",
    ignore_patterns: Sequence[str] | None = None,
) -> str:
    """create_repo + upload_folder with the user's token; returns the commit URL.

    Raises:
        RuntimeError: the upload failed (network, auth); the message says the local folder is intact and how to retry.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, exist_ok=True, private=private)
        kwargs = {"ignore_patterns": list(ignore_patterns)} if ignore_patterns else {}
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message, **kwargs)
    except Exception as error:  # noqa: BLE001 - network and auth failures alike
        exclude = "".join(f" --exclude '{pattern}'" for pattern in ignore_patterns or ())
        raise RuntimeError(
            f"push to the Hub repo {repo_id!r} failed ({type(error).__name__}: {error}); the folder {str(folder)!r} is "
            f"intact: retry with `huggingface-cli upload {repo_id} {folder}{exclude}` once logged in (`huggingface-cli login`)"
        ) from error
    return str(getattr(info, "commit_url", info))
