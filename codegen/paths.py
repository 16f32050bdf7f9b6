"""Where the project's own folders are: specs/, templates/ and generated/ of a source checkout.

They are not package data: codegen runs on a checkout (an editable install, `pip install -e .`). A
non-editable install finds them in the working directory instead, or says how to fix it.
"""

from __future__ import annotations

import functools
from pathlib import Path

from codegen.errors import CodegenError

# Files that only a checkout of this project has.
_MARKERS = ("specs/schema.json", "templates/model.py.j2")


class CheckoutNotFound(CodegenError):
    """Neither the installed package nor the working directory sits in a checkout of the project."""


@functools.lru_cache(maxsize=None)
def repo_root() -> Path:
    for candidate in (Path(__file__).resolve().parent.parent, Path.cwd()):
        if all((candidate / marker).is_file() for marker in _MARKERS):
            return candidate
    raise CheckoutNotFound(
        f"codegen needs its specs/ and templates/ folders, and neither {Path(__file__).resolve().parent.parent}"
        f" nor the working directory {Path.cwd()} has them: run codegen from the repository root, or install"
        " it from the checkout with `pip install -e .`"
    )


def specs_dir() -> Path:
    return repo_root() / "specs"


def schema_path() -> Path:
    return specs_dir() / "schema.json"


def templates_dir() -> Path:
    return repo_root() / "templates"


def generated_dir() -> Path:
    return repo_root() / "generated"


def relative_to_root(path: Path) -> str:
    """path relative to the checkout (posix), or its file name when it lies elsewhere."""
    try:
        return Path(path).resolve().relative_to(repo_root()).as_posix()
    except ValueError:
        return Path(path).name
