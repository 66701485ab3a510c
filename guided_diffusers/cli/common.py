"""What the command lines share: JSON arguments, and turning an expected failure into one line on stderr."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def json_object(value: str) -> dict[str, Any]:
    """An argparse type: a JSON object given inline (``'{"image_size": 64}'``) or the path of a .json file."""
    text = value
    if not value.lstrip().startswith("{"):
        path = Path(value)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise argparse.ArgumentTypeError(
                f"expected a JSON object (inline, starting with '{{') or a readable .json file, got {value!r} "
                f"({error.strerror or type(error).__name__})" if isinstance(error, OSError) else
                f"expected a JSON object or a .json text file, got {value!r} (not text)"
            ) from None
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"expected a JSON object or a JSON file, got {value!r} ({error})") from None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object ({{...}}), got {type(parsed).__name__} from {value!r}")
    return parsed


def exit_on(errors: tuple[type[BaseException], ...], run: Callable[[], Any]) -> Any:
    """``run()``; an expected error becomes one line ``error: ...`` on stderr and exit status 2."""
    try:
        return run()
    except errors as error:
        print(f"error: {str(error).strip() or type(error).__name__}", file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def exit_cleanly_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM (``kill``, a job scheduler's stop) raises ``SystemExit``, so the temporary folders of
    an unfinished write are removed as on any error; SIGKILL cannot be caught, and the next run removes what it leaves."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
