"""The @command decorator and its refusal to shadow built-in commands."""

from __future__ import annotations

import io
from typing import Iterator

import pytest

from dspex_bridge import command
from dspex_bridge.dspy_commands import DspyCommands
from dspex_bridge.programs import ProgramStore
from dspex_bridge.registry import BUILTIN_COMMANDS, unregister, user_command, user_command_names
from dspex_bridge.worker import Streams, Worker


@pytest.fixture
def cleanup() -> Iterator[list]:
    names: list = []
    yield names
    for name in names:
        unregister(name)


def test_bare_decorator_registers_under_the_function_name(cleanup: list) -> None:
    @command
    def registry_bare(args):
        return args["x"] * 2

    cleanup.append("registry_bare")
    assert user_command("registry_bare") is registry_bare
    assert registry_bare({"x": 2}) == 4


def test_named_decorator_registers_under_the_given_name(cleanup: list) -> None:
    @command("registry.named")
    def whatever(args):
        return "named"

    cleanup.append("registry.named")
    assert user_command("registry.named") is whatever
    assert user_command("whatever") is None
    assert "registry.named" in user_command_names()


def test_empty_parentheses_use_the_function_name(cleanup: list) -> None:
    @command()
    def registry_parens(args):
        return None

    cleanup.append("registry_parens")
    assert user_command("registry_parens") is registry_parens


@pytest.mark.parametrize("name", sorted(BUILTIN_COMMANDS))
def test_builtin_names_cannot_be_registered(name: str) -> None:
    with pytest.raises(ValueError, match="built into dspex_bridge"):
        command(name)(lambda args: None)
    assert user_command(name) is None


def test_a_name_cannot_be_registered_twice(cleanup: list) -> None:
    @command("registry_dup")
    def first(args):
        return 1

    cleanup.append("registry_dup")
    with pytest.raises(ValueError, match="already registered"):

        @command("registry_dup")
        def second(args):
            return 2

    assert user_command("registry_dup") is first


def test_empty_name_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        command("")(lambda args: None)


def test_worker_and_dspy_half_implement_exactly_the_reserved_builtin_names() -> None:
    worker = Worker("w", Streams(io.BytesIO(), io.BytesIO()))
    dspy_handlers = DspyCommands(ProgramStore(), env={}).handlers()
    assert {"evaluate", "optimize", "execute_program"} <= set(dspy_handlers)
    assert set(worker.builtin_names()) | set(dspy_handlers) == BUILTIN_COMMANDS
