"""Which errors are a user's mistake, and their one line (ldm_system/errors.py)."""
from __future__ import annotations

import errno
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ldm_system.config import ConfigError
from ldm_system.errors import UserError, free_bytes, one_line, user_message


def test_our_bugs_are_not_user_mistakes() -> None:
    for exc in (RuntimeError("boom"), KeyError("k"), TypeError("t"), AttributeError("a")):
        assert user_message(exc) is None


def test_user_mistakes_read_as_one_line() -> None:
    assert user_message(UserError("bad input; do this")) == "bad input; do this"
    assert user_message(ConfigError("a.yaml: not valid YAML: line 1\n  col 2\n")) == "a.yaml: not valid YAML: line 1; col 2"
    assert user_message(FileExistsError("out exists; pass --overwrite")) == "out exists; pass --overwrite"
    assert one_line("a\n\n  b  \n") == "a; b"


def test_full_disk_names_the_path_and_the_free_bytes(tmp_path: Path) -> None:
    exc = OSError(errno.ENOSPC, "No space left on device")  # as write() raises it: no file name
    message = user_message(exc, output=tmp_path / "run" / "out")
    assert message is not None and f"writing {tmp_path / 'run' / 'out'}" in message
    assert f"({free_bytes(tmp_path)} bytes free there)" in message
    named = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.tar"))
    assert f"writing {tmp_path / 'x.tar'}" in user_message(named)


def test_a_damaged_safetensors_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(64)}, str(path))
    path.write_bytes(path.read_bytes()[:40])
    try:
        load_file(str(path))
    except Exception as exc:  # safetensors' own error type, which does not name the file
        message = user_message(exc)
    assert message is not None and message.startswith(f"{path} is damaged or not a safetensors file")
