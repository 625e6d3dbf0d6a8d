"""The test LM server (``tests/fixtures/lm_server.py``): real DSPy parses its answers, and its
limits, scripts and counters behave as the tests that rely on them assume.
"""

from __future__ import annotations

import ast
import json
import signal
import threading
import time
from typing import Any, Dict, List, Literal, Optional

import dspy
import pytest
from lm_fixture import LM_SERVER, LMServer

from bridge_client import DEFAULT_TIMEOUT

QUESTION = [{"role": "user", "content": "What is 2 + 2?"}]


def lm_for(server: LMServer) -> dspy.LM:
    # api_base as an argument: DSPy picks its native OpenAI client, as the bridge will.
    return dspy.LM("openai/test", api_base=server.api_base, api_key="x", cache=False)


def test_a_typed_predict_parses_the_answers(lm_server: LMServer) -> None:
    lm = lm_for(lm_server)
    program = dspy.Predict("question -> answer: str, confidence: float, tags: list[str]")
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        first = program(question="What is the capital of France?")
        again = program(question="What is the capital of France?")
        other = program(question="How far is the moon?")
    assert isinstance(first.answer, str) and "capital of France" in first.answer
    assert isinstance(first.confidence, float) and 0.0 <= first.confidence < 1.0
    assert isinstance(first.tags, list) and 2 <= len(first.tags) <= 3
    assert all(isinstance(tag, str) for tag in first.tags)
    # Deterministic for equal prompts (two real calls: the cache is off), distinct otherwise.
    assert again.toDict() == first.toDict()
    assert other.answer != first.answer
    usage = lm.history[-1]["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert lm_server.stats()["ok"] == 3


class Everything(dspy.Signature):
    """Answer with every kind of output type."""

    question: str = dspy.InputField()
    count: int = dspy.OutputField()
    flag: bool = dspy.OutputField()
    choice: Literal["red", "green blue", 3] = dspy.OutputField()
    table: Dict[str, List[int]] = dspy.OutputField()
    maybe: Optional[float] = dspy.OutputField()


@pytest.mark.parametrize("adapter", [dspy.ChatAdapter, dspy.JSONAdapter], ids=["chat", "json"])
@pytest.mark.parametrize("module", [dspy.Predict, dspy.ChainOfThought], ids=["predict", "cot"])
def test_every_output_type_parses_with_either_adapter(lm_server: LMServer, adapter: Any, module: Any) -> None:
    # No fallback from ChatAdapter to JSONAdapter: a parse failure must fail the test.
    chosen = adapter(use_json_adapter_fallback=False) if adapter is dspy.ChatAdapter else adapter()
    with dspy.context(lm=lm_for(lm_server), adapter=chosen):
        result = module(Everything)(question="Describe a rainbow")
    assert isinstance(result.count, int) and 0 <= result.count < 100
    assert isinstance(result.flag, bool)
    assert result.choice in ("red", "green blue", 3)
    assert isinstance(result.table, dict) and all(
        isinstance(values, list) and all(isinstance(value, int) for value in values) for values in result.table.values()
    )
    assert isinstance(result.maybe, float)
    if module is dspy.ChainOfThought:
        assert isinstance(result.reasoning, str) and result.reasoning
    # One call each: nothing failed to parse and was retried by another adapter.
    assert lm_server.stats()["calls"] == 1


def test_a_json_response_format_gets_a_json_object(lm_server: LMServer) -> None:
    prompt = (
        "Respond with a JSON object in the following order of fields: `answer`, then `score` "
        "(must be formatted as a valid Python float)."
    )
    status, _, body = lm_server.chat([{"role": "user", "content": prompt}], response_format={"type": "json_object"})
    assert status == 200
    content = json.loads(body["choices"][0]["message"]["content"])
    assert sorted(content) == ["answer", "score"]
    assert isinstance(content["answer"], str) and isinstance(content["score"], float)


def test_a_json_schema_response_format_names_the_fields(lm_server: LMServer) -> None:
    schema = {
        "type": "object",
        "properties": {
            "level": {"type": "integer"},
            "labels": {"type": "array", "items": {"type": "string"}},
            "kind": {"enum": ["a", "b"]},
        },
    }
    status, _, body = lm_server.chat(
        QUESTION, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    )
    assert status == 200
    content = json.loads(body["choices"][0]["message"]["content"])
    assert isinstance(content["level"], int)
    assert all(isinstance(label, str) for label in content["labels"])
    assert content["kind"] in ("a", "b")


def test_usage_counts_words_and_several_choices_differ(lm_server: LMServer) -> None:
    status, _, body = lm_server.chat(QUESTION, n=2)
    assert status == 200
    assert body["usage"]["prompt_tokens"] == len(["What", "is", "2", "+", "2?"])
    completion_words = sum(len(choice["message"]["content"].split()) for choice in body["choices"])
    assert body["usage"]["completion_tokens"] == completion_words
    assert body["choices"][0]["message"]["content"] != body["choices"][1]["message"]["content"]


def test_calls_above_the_concurrency_limit_get_429_at_once(lm_server: LMServer) -> None:
    lm_server.control(max_concurrency=2, retry_after=1.5, hold=True)
    statuses: List[int] = []
    callers = [threading.Thread(target=lambda: statuses.append(lm_server.chat(QUESTION)[0])) for _ in range(2)]
    for caller in callers:
        caller.start()
    lm_server.wait_in_flight(2)
    status, headers, body = lm_server.chat(QUESTION)
    assert status == 429
    assert headers["Retry-After"] == "1.5"
    assert body["error"]["type"] == "rate_limit_error"
    # Answered while both accepted calls were still held.
    assert lm_server.stats()["in_flight"] == 2
    lm_server.control(hold=False)
    for caller in callers:
        caller.join(DEFAULT_TIMEOUT)
    assert statuses == [200, 200]
    assert lm_server.chat(QUESTION)[0] == 200
    assert lm_server.stats() == {
        "calls": 4,
        "ok": 3,
        "status_429": 1,
        "status_500": 0,
        "status_400": 0,
        "in_flight": 0,
        "peak_concurrency": 2,
        "peak_after_first_429": 1,
        "arrivals_by_in_flight": {"0": 2, "1": 1, "2": 1},
    }


def test_the_delay_comes_before_the_answer(lm_server: LMServer) -> None:
    lm_server.control(delay=0.5)
    started = time.monotonic()
    assert lm_server.chat(QUESTION)[0] == 200
    assert time.monotonic() - started >= 0.5


def test_scripted_failures_come_first_then_the_default(lm_server: LMServer) -> None:
    lm_server.control(script=["500", "429", "ok"], default="500", retry_after=None)
    statuses = [lm_server.chat(QUESTION) for _ in range(4)]
    assert [status for status, _, _ in statuses] == [500, 429, 200, 500]
    assert "Retry-After" not in statuses[1][1]
    stats = lm_server.stats()
    assert (stats["calls"], stats["ok"], stats["status_429"], stats["status_500"]) == (4, 1, 1, 2)
    assert lm_server.post("/reset", {})[0] == 200
    assert lm_server.stats()["calls"] == 0
    # The default survives a reset: only counters are zeroed.
    assert lm_server.chat(QUESTION)[0] == 500


@pytest.mark.parametrize(
    "body",
    [{"delay": -1}, {"max_concurrency": "two"}, {"script": ["503"]}, {"default": "maybe"}, {"hold": 1}, {"speed": 1}],
)
def test_bad_control_values_are_refused(lm_server: LMServer, body: Dict[str, Any]) -> None:
    status, _, answer = lm_server.post("/control", body)
    assert status == 400
    assert answer["error"]["type"] == "invalid_request_error"


def test_models_lists_the_model_name() -> None:
    server = LMServer("--model-name", "tiny-test")
    try:
        assert server.get("/v1/models")["data"][0]["id"] == "tiny-test"
    finally:
        server.close()


def test_the_server_exits_when_its_stdin_closes() -> None:
    server = LMServer()
    assert server.close() == 0


def test_the_server_exits_on_sigterm() -> None:
    server = LMServer()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(DEFAULT_TIMEOUT) == 0
    server.close()


def test_the_server_parses_as_python_3_9() -> None:
    # Rust tests start it with whatever python3 the machine has.
    with open(LM_SERVER, encoding="utf-8") as source:
        ast.parse(source.read(), filename=LM_SERVER, feature_version=(3, 9))
