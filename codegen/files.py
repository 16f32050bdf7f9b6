"""Reading JSON objects and writing files so that a reader never sees a half-written one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from codegen.errors import CodegenError


class FileFormatError(CodegenError):
    """A file the project reads is missing or is not what it should be."""


def read_json_object(path: Path, error: type[CodegenError] = FileFormatError) -> dict[str, Any]:
    """The JSON object in path; ``error`` (the caller's own error type) when it is not one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path} is not valid JSON: it is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror}") from None
    try:
        value = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer past Python's 4300-digit limit
        raise error(f"{path} is not valid JSON: {str(exc)[:200]}") from None
    except RecursionError:
        raise error(f"{path} is nested too deeply to be a JSON object of this project") from None
    if not isinstance(value, dict):
        raise error(f"{path} must hold a JSON object")
    return value


def write_atomic(
    path: Path, content: str | bytes, mode: int | None = None, check: Callable[[Path], None] | None = None
) -> None:
    """Write beside path, then rename over it: path is the old file or the new one, never a part.

    ``mode`` defaults to the replaced file's (0o644 for a new one); ``check`` may inspect the
    written temporary file (it lies in path's folder) and raise to keep the old file."""
    path = Path(path)
    if mode is None:
        mode = path.stat().st_mode & 0o7777 if path.is_file() else 0o644
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(content.encode("utf-8") if isinstance(content, str) else content)
        os.chmod(temporary, mode)
        if check is not None:
            check(Path(temporary))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


@contextlib.contextmanager
def staging_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A fresh hidden folder in parent for output that is moved into place only when complete;
    it is removed afterwards, whatever happened."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
