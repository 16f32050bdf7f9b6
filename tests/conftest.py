"""Shared fixtures: tiny random-weight HF models and compiled artifacts, built once per session."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from tests.support import ArtifactFactory

settings.register_profile("ci", max_examples=60, deadline=None)
settings.register_profile("long", max_examples=3000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> ArtifactFactory:
    """Compile + convert each (spec, HF model, dtype) once and share it across tests."""
    return ArtifactFactory(tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The reference models are tiny; with two threads on a busy machine torch's workers spin and
    wait for each other (training the CLI test's model took 59 s instead of 2 s)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
