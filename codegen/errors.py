"""The base of every error this project raises on purpose.

A CodegenError means the input (a spec, a config.json, a checkpoint, an artifact, a runtime call) is
wrong, and its message says what, where and how to fix it: the CLI prints it as one line. Anything
else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class CodegenError(Exception):
    """An input the project refuses; the message names the file, key or value and what is allowed."""
