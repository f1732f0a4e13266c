"""Fixtures; the helpers themselves are in tests/helpers.py."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tests.helpers import TINY, compose  # noqa: E402  (after the log level is set)


@pytest.fixture
def compose_cfg():
    return compose


@pytest.fixture
def tiny_overrides():
    return list(TINY)
