"""Read a JSON object from a file (config.json and friends) with an error that names the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json_object(path: Path, error: type[Exception] = ValueError) -> dict[str, Any]:
    """The JSON object in path; ``error`` (the caller's own error type) when it is not one."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise error(f"{path} must hold a JSON object")
    return value
