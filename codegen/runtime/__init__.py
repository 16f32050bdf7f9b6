"""Run an artifact: the Model (Relax VM + paged KV cache), sampling, and `codegen run`'s text loop.

Nothing here imports the compiler side of this project (build/, render, jinja2, black).
"""

from codegen.artifact.contract import ArtifactError
from codegen.runtime.model import Model, RuntimeInputError
from codegen.runtime.sampling import sample

__all__ = ["ArtifactError", "Model", "RuntimeInputError", "sample"]
