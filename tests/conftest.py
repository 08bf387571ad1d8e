"""Shared test fixtures: every test sees the BH models registered in timm."""

import pytest
import torch

import bh_models  # noqa: F401  (registers the models)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
