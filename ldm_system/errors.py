"""Telling a user's mistake from our bug, and saying the mistake in one line.

`ldm` (cli.main) prints a user's mistake as one line on stderr, `ldm <verb>: error: <what is wrong
and what to do>`, and exits with code 2. Anything else is a bug of ours and keeps its traceback;
`ldm --debug` shows the traceback in every case.

A user's mistake is:

- `UserError`, raised by our code for input it refuses;
- a `ValueError`: the config loader's `ConfigError`, and what configs, requests and loaders raise
  for values and files they refuse (our modules raise `ValueError` for bad input, by convention);
- a file problem: a missing input (`FileNotFoundError`), an output that exists
  (`FileExistsError`), a folder where a file belongs or the reverse, no permission;
- a full disk (`OSError` ENOSPC): the line names the path and the bytes free there;
- a damaged or foreign `.safetensors` file: the line names the file.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class UserError(Exception):
    """A mistake in the user's input or environment; the message says what is wrong and what to do."""


_FILE_MISTAKES = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def user_message(exc: BaseException, output: str | os.PathLike | None = None) -> str | None:
    """One line for a user's mistake, or None when `exc` is a bug of ours.

    `output` is where the command writes (its output folder), named when a full disk does not say
    which file it was writing."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return _full_disk(exc, output)
    if _is_safetensors_error(exc):
        return _damaged_weights(exc)
    if isinstance(exc, (UserError, ValueError, *_FILE_MISTAKES)):
        return one_line(str(exc) or type(exc).__name__)
    return None


def one_line(text: str) -> str:
    """Multi-line messages (a YAML parser's, say) joined with "; "."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes free on the file system that holds `path` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def _full_disk(exc: OSError, output: str | os.PathLike | None) -> str:
    # A failed write() or close() carries no file name; the command's output folder is the next best.
    path = exc.filename or output or os.getcwd()
    free = free_bytes(path)
    room = f"{free} bytes free there" if free is not None else "free space unknown"
    return f"no space left on the device while writing {path} ({room}); free some space or write elsewhere"


def _is_safetensors_error(exc: BaseException) -> bool:
    try:
        from safetensors import SafetensorError
    except ImportError:
        return False
    return isinstance(exc, SafetensorError)


def _damaged_weights(exc: BaseException) -> str:
    name = _safetensors_file(exc)
    what = name if name else "a .safetensors file"
    return (f"{what} is damaged or not a safetensors file ({one_line(str(exc))}); "
            "copy or export it again")


def _safetensors_file(exc: BaseException) -> str | None:
    """The file a safetensors load was reading. safetensors' own error does not say which; its
    Python entry points (`load_file(filename)`, `safe_open(filename)` called from Python) hold
    it as the local `filename` of the innermost such frame of the traceback."""
    name = None
    tb = exc.__traceback__
    while tb is not None:
        value = tb.tb_frame.f_locals.get("filename")
        if isinstance(value, (str, os.PathLike)):
            name = os.fspath(value)
        tb = tb.tb_next
    return name
