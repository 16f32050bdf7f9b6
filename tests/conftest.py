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
