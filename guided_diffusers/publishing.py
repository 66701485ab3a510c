"""Atomic writes and publishing: a file or a folder written aside and moved into place in one step on disk, and a
folder uploaded to the Hub. Every place that writes results (converters, sampling, training, evaluation, benchmarks)
uses these."""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

# Temporary folders are named ".{name}.pipe.{pid}.{token}" beside their target, so a later run can tell which ones a
# killed process left behind (its pid is gone) and remove them.
_TEMP_MARK = ".pipe."
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def write_atomically(path: Path, write: Callable[[IO[bytes]], None], suffix: str = "") -> None:
    """Write a file through ``write(binary_file)`` under a temporary name beside ``path``, then rename it to ``path``:
    a reader never sees half a file, and a failed write leaves nothing behind.

    Args:
        path: the final file.
        write: writes the content to the open temporary file.
        suffix: the temporary file's suffix (``np.savez`` needs ``.npz``).

    ``write_text_atomically`` is the same for text.
    """
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=suffix, delete=False) as tmp:
        try:
            write(tmp)
        except BaseException:
            tmp.close()
            os.unlink(tmp.name)
            raise
    os.chmod(tmp.name, 0o666 & ~_umask())  # a temporary file is private; the result gets the usual permissions
    os.replace(tmp.name, path)


def write_text_atomically(path: Path, text: str) -> None:
    """``path`` holds exactly ``text`` (UTF-8) or what it held before: written aside, then renamed."""
    write_atomically(Path(path), lambda file: file.write(text.encode()))


class HubPushError(RuntimeError):
    """An upload to the Hub failed; the message is one line saying the local folder is intact and how to retry."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def normal_file_mode() -> int:
    """The mode ``open()`` gives a new file under the process's umask (``0o644`` under the usual ``022``)."""
    return 0o666 & ~_umask()


def normalize_file_modes(folder: Path) -> None:
    """Give every file under ``folder`` the permissions ``open()`` gives a new file under the umask (bits it has
    beyond those, an executable bit, are kept). Call it on a written folder before it is moved into place:
    safetensors writes its files 0600 whatever the umask, so models and checkpoints were readable by their owner
    alone.
    """
    mode = normal_file_mode()
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode & 0o7777 | mode)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temp_folders(target: Path) -> list[Path]:
    """Remove the temporary folders of ``target`` left by killed runs (their process no longer exists)."""
    removed = []
    parent = target.parent
    if not parent.is_dir():
        return removed
    prefix = f".{target.name}{_TEMP_MARK}"
    for entry in parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        pid_text = entry.name[len(prefix):].split(".", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def make_temp_folder(target: Path) -> Path:
    """A new empty folder beside ``target`` (same filesystem, so it can be renamed onto it), created with the normal
    permissions of the umask (not mkdtemp's 0700). Stale ones of killed runs are removed first.

    Raises:
        OSError: the parent is missing or cannot be written (checked here, before any work).
    """
    remove_stale_temp_folders(target)
    folder = target.parent / f".{target.name}{_TEMP_MARK}{os.getpid()}.{secrets.token_hex(4)}"
    os.mkdir(folder)
    return folder


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError, TypeError):  # not Linux/glibc (TypeError: CDLL(None) on Windows)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def replace_directory(source: Path, target: Path) -> None:
    """Move the complete folder ``source`` to ``target``, replacing an existing ``target``.

    At every moment ``target`` is the complete old folder or the complete new one: where the system can swap two
    paths atomically (Linux ``renameat2``, local filesystems) old and new are exchanged in one step, then the old one
    (now at ``source``) is removed. Elsewhere the old folder is renamed to ``.{name}.old`` first; a run killed between
    the two renames leaves that backup, which the next call (or [`recover_directory`]) moves back.
    """
    source, target = Path(source), Path(target)
    recover_directory(target)
    if not target.exists():
        os.replace(source, target)
        return
    if target.is_dir() and _exchange(source, target):
        shutil.rmtree(source, ignore_errors=True)
        return
    backup = target.with_name(f".{target.name}.old")
    shutil.rmtree(backup, ignore_errors=True)
    os.replace(target, backup)
    os.replace(source, target)
    shutil.rmtree(backup, ignore_errors=True)


def recover_directory(target: Path) -> None:
    """Put back ``target`` from the ``.{name}.old`` backup a run killed inside [`replace_directory`]'s fallback left."""
    backup = Path(target).with_name(f".{Path(target).name}.old")
    if backup.is_dir() and not Path(target).exists():
        os.replace(backup, target)


def write_folder_atomically(output: Path, write: Callable[[Path], Any], temp: Path | None = None) -> Path:
    """Call ``write(temp)``, then move the result to ``output``: ``output`` is never half-written, its files have the
    umask's permissions ([`normalize_file_modes`]), and a failure removes the temporary folder (a kill leaves it for
    [`remove_stale_temp_folders`]).

    Args:
        output: the folder to create or replace.
        write: fills the temporary folder.
        temp: a folder from [`make_temp_folder`] made earlier (to find an unwritable place before any work).
    """
    output = Path(output)
    temp = temp if temp is not None else make_temp_folder(output)
    try:
        write(temp)
        normalize_file_modes(temp)
        replace_directory(temp, output)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return output


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
        HubPushError: the upload failed (network, auth); the one-line message says the local folder is intact and
            how to retry with the ``hf`` command line of huggingface_hub.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, exist_ok=True, private=private)
        kwargs = {"ignore_patterns": list(ignore_patterns)} if ignore_patterns else {}
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message, **kwargs)
    except Exception as error:  # noqa: BLE001 - network and auth failures alike
        exclude = "".join(f" --exclude '{pattern}'" for pattern in ignore_patterns or ())
        reason = " ".join(str(error).split()) or "no message"
        raise HubPushError(
            f"push to the Hub repo {repo_id!r} failed ({type(error).__name__}: {reason}); the folder {str(folder)!r} is "
            f"intact: retry with `hf upload {repo_id} {folder} .{exclude}` once logged in (`hf auth login`)"
        ) from error
    return str(getattr(info, "commit_url", info))
