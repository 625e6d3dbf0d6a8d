"""LM settings, retries, rate limits, cache and usage against a real local HTTP endpoint.

Every call here goes through real DSPy and its real clients (DSPy's native client, or LiteLLM
when forced with ``extra.engine``) to :class:`ScriptedLM`, a stdlib server in this process
whose answers are scripted call by call. The assertions are on what the server saw.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Iterator

import pytest
from dspy_support import definition, field
from scripted_lm import ScriptedLM

from bridge_client import BridgeProcess
from dspex_bridge.errors import RateLimited
from dspex_bridge.dspy_commands import DspyCommands
from dspex_bridge.errors import InvalidRequest, LMError
from dspex_bridge.lm import PLACEHOLDER_KEY, LMConfig
from dspex_bridge.lm_client import backoff_delay, client_kind
from dspex_bridge.programs import ProgramStore

ENGINES = {"native": {}, "litellm": {"engine": "litellm"}}


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedLM]:
    lm_server = ScriptedLM()
    yield lm_server
    lm_server.close()


@pytest.fixture
def commands() -> DspyCommands:
    return DspyCommands(ProgramStore(), env={"OPENAI_TEST_KEY": "sk-test"})


def lm_args(server: ScriptedLM, engine: str = "native", **settings: Any) -> Dict[str, Any]:
    return {
        "model": "openai/gpt-4o-mini",
        "api_base": server.base_url,
        "api_key_env": "OPENAI_TEST_KEY",
        "extra": dict(ENGINES[engine]),
        **settings,
    }


def run(commands: DspyCommands, server: ScriptedLM, question: str = "What is 2+2?", **lm: Any) -> Dict[str, Any]:
    outputs = [field("answer"), field("confidence", "float")]
    args = {"definition": definition("lm_test", outputs), "inputs": {"question": question}, "lm": lm_args(server, **lm)}
    return commands.execute_program(args)


# -- settings -------------------------------------------------------------------------------


def test_lm_settings_are_read_with_their_defaults() -> None:
    config = LMConfig.from_args({"model": "openai/x"})
    assert (config.timeout, config.num_retries, config.cache, config.extra) == (60.0, 3, "off", {})
    full = LMConfig.from_args(
        {
            "model": "openai/x",
            "api_key_env": "K",
            "api_base": "http://h/v1",
            "temperature": 0.5,
            "max_tokens": 64,
            "timeout": 5,
            "num_retries": 0,
            "extra": {"top_p": 0.9},
            "cache": "disk",
            "cache_dir": "/tmp/c",
        }
    )
    assert (full.api_base, full.timeout, full.num_retries, full.extra, full.cache_dir) == (
        "http://h/v1",
        5.0,
        0,
        {"top_p": 0.9},
        "/tmp/c",
    )
    assert LMConfig.from_env({}) == LMConfig("dummy")
    assert LMConfig.from_env({"DSPEX_LM": json.dumps({"model": "openai/x", "num_retries": 1})}).num_retries == 1


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"model": ""}, "lm.model must be"),
        ({"model": "m", "num_retries": -1}, "num_retries must be an integer >= 0"),
        ({"model": "m", "timeout": 0}, "positive number of seconds"),
        ({"model": "m", "cache": "redis"}, "lm.cache must be one of"),
        ({"model": "m", "cache": "disk"}, "needs lm.cache_dir"),
        ({"model": "m", "extra": {"api_base": "x"}}, "'api_base', which have settings of their own"),
        ({"model": "m", "extra": [1]}, "lm.extra must be an object"),
        ({"model": "m", "api_key": "sk-literal"}, "unknown key"),
    ],
)
def test_bad_lm_settings_are_invalid_requests_naming_the_key(settings: Dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        LMConfig.from_args(settings)


def test_bad_dspex_lm_names_the_variable() -> None:
    with pytest.raises(InvalidRequest, match="DSPEX_LM is not valid JSON"):
        LMConfig.from_env({"DSPEX_LM": "{model"})
    with pytest.raises(InvalidRequest, match=r"DSPEX_LM\.max_tokens"):
        LMConfig.from_env({"DSPEX_LM": json.dumps({"model": "m", "max_tokens": "lots"})})


def test_api_key_named_by_api_key_env_is_required_and_returned() -> None:
    config = LMConfig("openai/gpt-4o-mini", api_key_env="DSPEX_TEST_UNSET_KEY")
    with pytest.raises(LMError, match="set DSPEX_TEST_UNSET_KEY"):
        config.api_key({})
    assert config.api_key({"DSPEX_TEST_UNSET_KEY": "sk-test"}) == "sk-test"


def test_well_known_provider_keys_are_checked_unless_an_api_base_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(LMError, match="set GEMINI_API_KEY or GOOGLE_API_KEY"):
        LMConfig("gemini/gemini-1.5-flash").api_key({})
    assert LMConfig("gemini/gemini-1.5-flash").api_key({"GOOGLE_API_KEY": "k"}) == "k"
    assert LMConfig("ollama_chat/llama3").api_key({}) is None
    assert LMConfig("openai/local", api_base="http://127.0.0.1:1/v1").api_key({}) == PLACEHOLDER_KEY


def test_a_local_endpoint_needs_no_key(
    commands: DspyCommands, server: ScriptedLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server.set()
    lm = {"model": "openai/local-model", "api_base": server.base_url}
    result = commands.execute_program({"definition": definition("nokey"), "inputs": {"question": "q"}, "lm": lm})
    assert result["outputs"]["answer"]
    assert server.authorizations == [f"Bearer {PLACEHOLDER_KEY}"]


def test_openai_with_api_base_uses_dspys_native_client_unless_litellm_is_asked_for(server: ScriptedLM) -> None:
    commands = DspyCommands(ProgramStore(), env={"OPENAI_TEST_KEY": "k"})
    commands.configure_lm(lm_args(server))
    lm = commands._lms.get(LMConfig.from_args(lm_args(server)))
    assert client_kind(lm) == "native"
    assert client_kind(commands._lms.get(LMConfig.from_args(lm_args(server, "litellm")))) == "litellm"


def test_preload_builds_the_default_lm_and_reports_it(server: ScriptedLM) -> None:
    env = {"DSPEX_LM": json.dumps(lm_args(server)), "OPENAI_TEST_KEY": "k"}
    commands = DspyCommands(ProgramStore(), env=env)
    assert commands.preloaded_lm() is None
    commands.preload()
    assert commands.preloaded_lm() == "openai/gpt-4o-mini"
    server.set()
    # The default LM serves a request that names none.
    commands.execute_program({"definition": definition("default_lm"), "inputs": {"question": "q"}})
    assert server.calls == 1


def test_equal_lm_settings_share_one_lm_object(commands: DspyCommands, server: ScriptedLM) -> None:
    first = commands._lms.get(LMConfig.from_args(lm_args(server)))
    assert commands._lms.get(LMConfig.from_args(lm_args(server))) is first
    assert commands._lms.get(LMConfig.from_args(lm_args(server, temperature=0.3))) is not first


# -- retries and rate limits ----------------------------------------------------------------------


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_two_server_errors_then_success_is_ok(commands: DspyCommands, server: ScriptedLM, engine: str) -> None:
    server.set(["500", "503", "ok"], retry_after="0")
    result = run(commands, server, engine=engine, num_retries=3)
    assert result["outputs"]["answer"]
    assert server.calls == 3
    # Usage counts the one call that answered.
    assert result["usage"]["openai/gpt-4o-mini"]["calls"] == 1


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_persistent_server_errors_fail_after_exactly_num_retries_plus_one_calls(
    commands: DspyCommands, server: ScriptedLM, engine: str
) -> None:
    server.set(default="500", retry_after="0")
    with pytest.raises(LMError, match=r"failed after 3 attempt\(s\) \(LMServerError\)"):
        run(commands, server, engine=engine, num_retries=2)
    assert server.calls == 3


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_a_429_is_rate_limited_at_once_with_retry_after(
    commands: DspyCommands, server: ScriptedLM, engine: str
) -> None:
    server.set(default="429", retry_after="7")
    with pytest.raises(RateLimited, match="rate limited") as caught:
        run(commands, server, engine=engine, num_retries=3)
    assert caught.value.retry_after == 7.0
    assert server.calls == 1


def test_a_429_without_retry_after_has_none(commands: DspyCommands, server: ScriptedLM) -> None:
    server.set(default="429")
    with pytest.raises(RateLimited) as caught:
        run(commands, server)
    assert caught.value.retry_after is None
    assert server.calls == 1


def test_retries_back_off_exponentially_without_retry_after(commands: DspyCommands, server: ScriptedLM) -> None:
    assert [backoff_delay(attempt, None) for attempt in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff_delay(0, 3.0) == 3.0
    server.set(["500", "500", "ok"])
    started = time.monotonic()
    run(commands, server, num_retries=2)
    assert time.monotonic() - started >= 1.5  # 0.5 s, then 1 s
    assert server.calls == 3


def test_a_retry_after_longer_than_a_request_waits_fails_at_once(commands: DspyCommands, server: ScriptedLM) -> None:
    server.set(default="503", retry_after="3600")
    with pytest.raises(LMError, match="retry after 3600 s"):
        run(commands, server, num_retries=3)
    assert server.calls == 1


def test_an_unreachable_endpoint_is_retried_then_an_lm_error(commands: DspyCommands) -> None:
    lm = {"model": "openai/gpt-4o-mini", "api_base": "http://127.0.0.1:9/v1", "num_retries": 1}
    args = {"definition": definition("unreachable"), "inputs": {"question": "q"}, "lm": lm}
    with pytest.raises(LMError, match=r"failed after 2 attempt\(s\) \(LMTransportError\)"):
        commands.execute_program(args)


def test_auth_failures_are_not_retried_and_say_which_variable(commands: DspyCommands, server: ScriptedLM) -> None:
    server.set(default="401")
    with pytest.raises(LMError, match="OPENAI_TEST_KEY holds a valid key"):
        run(commands, server, num_retries=3)
    assert server.calls == 1


def test_optimizer_lm_copy_retries_rate_limits_instead(commands: DspyCommands, server: ScriptedLM) -> None:
    import dspy

    lm = commands._lms.get(LMConfig.from_args(lm_args(server, num_retries=3)))
    patient = lm.with_rate_limit_retries()
    server.set(["429", "429", "ok"], retry_after="0")
    with dspy.context(lm=patient):
        assert dspy.Predict("question -> answer")(question="q").answer
    assert server.calls == 3
    assert lm.retry_rate_limits is False  # the worker's own LM is unchanged


# -- usage ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_usage_reports_the_servers_token_counts_and_litellms_price(
    commands: DspyCommands, server: ScriptedLM, engine: str
) -> None:
    server.set()
    usage = run(commands, server, question=f"usage via {engine}", engine=engine)["usage"]
    ((model, counts),) = usage.items()
    assert model == "openai/gpt-4o-mini"
    body = server.requests[0]
    prompt_words = sum(len(str(message["content"]).split()) for message in body["messages"])
    assert counts["prompt_tokens"] == prompt_words  # what ScriptedLM reported
    assert counts["total_tokens"] == counts["prompt_tokens"] + counts["completion_tokens"]
    assert counts["calls"] == 1
    assert isinstance(counts["cost"], float) and counts["cost"] > 0


def test_usage_of_an_unpriced_model_has_no_cost(commands: DspyCommands) -> None:
    unknown = ScriptedLM(model="dspex-unknown-model")  # prices follow the model the server names
    try:
        lm = {"model": "openai/dspex-unknown-model", "api_base": unknown.base_url}
        args = {"definition": definition("unpriced"), "inputs": {"question": "q"}, "lm": lm}
        usage = commands.execute_program(args)["usage"]
    finally:
        unknown.close()
    assert usage["openai/dspex-unknown-model"]["cost"] is None
    assert usage["openai/dspex-unknown-model"]["calls"] == 1


# -- cache ----------------------------------------------------------------------------------------


def test_memory_cache_answers_a_repeated_call_without_the_server(commands: DspyCommands, server: ScriptedLM) -> None:
    server.set()
    first = run(commands, server, question="cache me", cache="memory")
    second = run(commands, server, question="cache me", cache="memory")
    assert server.calls == 1
    assert second["outputs"] == first["outputs"]
    assert second["usage"] == {}


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_disk_cache_is_shared_by_a_second_worker_process(server: ScriptedLM, tmp_path: Any, engine: str) -> None:
    cache_dir = tmp_path / "lm-cache"
    env = {
        "DSPEX_LM": json.dumps({**lm_args(server, engine), "cache": "disk", "cache_dir": str(cache_dir)}),
        "OPENAI_TEST_KEY": "k",
        "HOME": str(tmp_path),
    }
    args = {"definition": definition("disk_cached"), "inputs": {"question": "Shared cache?"}}
    server.set()
    results = []
    for _ in range(2):
        worker = BridgeProcess("fds", env=env)
        try:
            results.append(worker.call("execute_program", args))
        finally:
            worker.close()
    assert server.calls == 1
    assert results[1]["outputs"] == results[0]["outputs"]
    assert results[0]["usage"]["openai/gpt-4o-mini"]["calls"] == 1
    assert results[1]["usage"] == {}
    assert oct(os.stat(cache_dir).st_mode & 0o777) == "0o700"


def test_async_calls_follow_the_same_retry_policy(commands: DspyCommands, server: ScriptedLM) -> None:
    import asyncio

    import dspy

    lm = commands._lms.get(LMConfig.from_args(lm_args(server, num_retries=2)))
    server.set(["500", "ok"], retry_after="0")
    with dspy.context(lm=lm):
        assert asyncio.run(dspy.Predict("question -> answer").acall(question="q")).answer
    assert server.calls == 2
    server.set(default="429", retry_after="2")
    with dspy.context(lm=lm), pytest.raises(RateLimited):
        asyncio.run(dspy.Predict("question -> answer").acall(question="q"))
    assert server.calls == 1


def test_row_requests_leave_no_call_history_behind(commands: DspyCommands, server: ScriptedLM) -> None:
    from dspy.clients.base_lm import GLOBAL_HISTORY

    server.set()
    before = len(GLOBAL_HISTORY)
    result = run(commands, server, question="no history")
    lm = commands._lms.get(LMConfig.from_args(lm_args(server)))
    assert lm.history == [] and len(GLOBAL_HISTORY) == before
    assert result["usage"]["openai/gpt-4o-mini"]["cost"] > 0  # the cost still reached the usage
