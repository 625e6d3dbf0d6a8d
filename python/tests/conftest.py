"""Shared fixtures: worker processes, the gate and the test LM server, always cleaned up."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest
from gate import Gate
from lm_fixture import LMServer

from bridge_client import FIXTURES, BridgeProcess

# The host sets this for its workers (src/launch.rs); tests that use LiteLLM in-process or in
# workers they start must not fetch the cost map from the network either.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"


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


@pytest.fixture
def gate() -> Iterator[Gate]:
    """A rendezvous that keeps ``hold`` requests running until the test releases them."""
    rendezvous = Gate()
    yield rendezvous
    rendezvous.close()


@pytest.fixture
def lm_server() -> Iterator[LMServer]:
    """The test LM server with no delay; tests reconfigure it through ``/control``."""
    server = LMServer()
    yield server
    server.close()


@pytest.fixture
def user_code_on_path() -> Iterator[None]:
    """``tests/fixtures`` importable in this process, as ``python.path`` makes user code
    importable in a worker (``DSPEX_PYTHON_PATH``)."""
    sys.path.insert(0, FIXTURES)
    yield
    sys.path.remove(FIXTURES)


@pytest.fixture
def trace(tmp_path: Path) -> str:
    """Where the dummy LM appends what it was sent (``DSPEX_DUMMY_TRACE``)."""
    return str(tmp_path / "trace.jsonl")


@pytest.fixture
def commands(trace: str) -> Any:
    """The DSPy commands of one in-process worker, its dummy LM tracing to ``trace``."""
    from dspex_bridge.dspy_commands import DspyCommands
    from dspex_bridge.programs import ProgramStore

    return DspyCommands(ProgramStore(), env={"DSPEX_DUMMY_TRACE": trace})
