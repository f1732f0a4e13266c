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


def _utf8(text: str) -> str:
    """``text`` with lone surrogates (a non-UTF-8 file name decoded by os.fsdecode) written
    as \\udcXX: pytest-xdist's workers send captured output as UTF-8 and crash on them."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """The tests of non-UTF-8 file names log those names; their captured sections are made
    sendable so the run on two workers (pyproject.toml's addopts) reports them."""
    outcome = yield
    report = outcome.get_result()
    report.sections = [(_utf8(title), _utf8(content)) for title, content in report.sections]
