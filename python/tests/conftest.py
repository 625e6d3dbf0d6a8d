"""Shared fixtures: a factory of worker processes that are always cleaned up."""

from __future__ import annotations

from typing import Any, Callable, Iterator, List

import pytest

from bridge_client import BridgeProcess


@pytest.fixture
def spawn() -> Iterator[Callable[..., BridgeProcess]]:
    """Start worker processes (same arguments as :class:`BridgeProcess`); killed at teardown."""
    started: List[BridgeProcess] = []

    def start(*args: Any, **kwargs: Any) -> BridgeProcess:
        process = BridgeProcess(*args, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()
