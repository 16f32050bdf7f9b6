"""The Relax compile pipeline for each target: the one place that decides how kernels are scheduled."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.target import Target


def pipeline(target: Target) -> tvm.transform.Pass:
    """The pipeline tvm.compile runs for this target."""
    return relax.get_default_pipeline(target)
