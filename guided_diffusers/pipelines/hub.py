"""A pipeline's folder and the Hub: the model card of the folder a pipeline was loaded from, kept by
``save_pretrained``, and ``push_to_hub`` through the converter's upload (a failure is one line with the retry command).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..publishing import push_folder_to_hub, write_atomically

CARD = "README.md"


class PipelineHubMixin:
    """For our ``DiffusionPipeline`` subclasses (listed before ``DiffusionPipeline`` in the bases).

    diffusers' ``save_pretrained`` writes no model card, so a pipeline loaded from a folder with one and saved again
    lost it; and its ``push_to_hub`` ends in raw hub errors. Here the card of the source folder (``config._name_or_path``:
    a local folder, or a Hub id found in the Hugging Face cache as huggingface_hub lays it out) is written into the
    saved folder, and pushes go through ``publishing.push_folder_to_hub``, as the converters' and training's do.
    """

    def source_model_card(self) -> Path | None:
        """The README.md of the folder this pipeline was loaded from (``from_pretrained`` or ``from_pipe``), if any."""
        source = self.config.get("_name_or_path")
        if not source:
            return None
        if Path(source).is_dir():
            card = Path(source) / CARD
            return card if card.is_file() else None
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(str(source), CARD)
        except ValueError:  # not a repo id either
            return None
        return Path(cached) if isinstance(cached, str) else None

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        **kwargs,
    ) -> None:
        """diffusers' ``save_pretrained``, plus the source folder's model card; ``push_to_hub=True`` uploads the saved
        folder (``repo_id``, default the folder's name; ``commit_message``, ``private``, ``token``), and a failed upload
        is a one-line [`~guided_diffusers.publishing.HubPushError`] naming the ``hf upload`` command that retries it."""
        hub = {name: kwargs.pop(name) for name in ("repo_id", "commit_message", "private", "token", "create_pr") if name in kwargs}
        if push_to_hub:
            _check_push_options(hub.get("create_pr", False), None)
        super().save_pretrained(save_directory, safe_serialization=safe_serialization, variant=variant,
                                max_shard_size=max_shard_size, **kwargs)
        folder = Path(save_directory)
        card = self.source_model_card()
        target = folder / CARD
        if card is not None and not (target.exists() and os.path.samefile(card, target)):
            text = card.read_bytes()
            write_atomically(target, lambda file: file.write(text))
        if push_to_hub:
            self._push_folder(folder, hub.get("repo_id") or folder.resolve().name, hub.get("commit_message"), hub.get("private"),
                              hub.get("token"))

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: str | None = None,
        subfolder: str | None = None,
    ) -> str:
        """diffusers' ``push_to_hub``: the pipeline saved (with its model card) and uploaded to ``repo_id``; returns the
        commit URL.

        Raises:
            HubPushError: the upload failed (offline, not logged in, no such repo or no right to it): one line naming
                the saved folder, which is kept, and the ``hf upload`` command that retries it.
            ValueError: ``create_pr`` or ``subfolder`` (whole pipeline folders are pushed as one commit).
        """
        _check_push_options(create_pr, subfolder)
        folder = Path(tempfile.mkdtemp(prefix=f"{type(self).__name__}-push-"))
        try:
            self.save_pretrained(folder, safe_serialization=safe_serialization, variant=variant)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        url = self._push_folder(folder, repo_id, commit_message, private, token)  # a failure keeps the folder to retry from
        shutil.rmtree(folder, ignore_errors=True)
        return url

    def _push_folder(self, folder: Path, repo_id: str, commit_message: str | None, private: bool | None, token: str | None) -> str:
        return push_folder_to_hub(folder, repo_id, token=token, private=bool(private),
                                  commit_message=commit_message or f"Upload {type(self).__name__} (guided_diffusers)")


def _check_push_options(create_pr: bool, subfolder: str | None) -> None:
    if create_pr or subfolder:
        raise ValueError(f"expected create_pr=False and no subfolder (a pipeline folder is pushed whole, in one commit), got "
                         f"create_pr={create_pr!r}, subfolder={subfolder!r}")
