"""Shared fixtures of the host tests."""

import logging

import pytest


@pytest.fixture(autouse=True)
def restore_logging():
    """The CLI sets the ``tickwire`` logger's level; put it back after each test."""
    logger = logging.getLogger("tickwire")
    level = logger.level
    yield
    logger.setLevel(level)
