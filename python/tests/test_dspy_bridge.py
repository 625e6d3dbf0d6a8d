"""DSPy commands through a real worker process with the dummy LM.

One worker serves most tests (importing DSPy is the slow part); tests use distinct program ids
and sessions so they do not depend on each other's state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import pytest

from bridge_client import FIXTURES, BridgeProcess
from dspy_support import definition, field

# Variables that could point DSPy/LiteLLM at a real provider or a cache outside HOME.
SCRUBBED_ENV = [
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "DSPY_CACHEDIR",
    "XDG_CACHE_HOME",
    "DSPEX_LM",
    "DSPEX_DUMMY_TRACE",
    "DSPEX_HANDLERS",
]


QA_OUTPUTS = [field("answer"), field("confidence", "float", "how sure, 0..1")]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker-home")


@pytest.fixture(scope="module")
def worker(home: Path) -> Iterator[BridgeProcess]:
    process = BridgeProcess("fds", env={"HOME": str(home)}, remove_env=SCRUBBED_ENV)
    yield process
    process.close()


def create(worker: BridgeProcess, definition_: Dict[str, Any], session: Optional[str] = None) -> Dict[str, Any]:
    return worker.request("create_program", {"session_id": session, "definition": definition_})


def execute(worker: BridgeProcess, args: Dict[str, Any]) -> Dict[str, Any]:
    return worker.request("execute_program", args)


def error_type(response: Dict[str, Any]) -> str:
    assert response["success"] is False, response
    return response["error"]["type"]


def test_create_program_reports_the_compact_signature(worker: BridgeProcess) -> None:
    response = create(worker, definition("create_qa", QA_OUTPUTS), session="create")
    assert response["success"] is True
    assert response["result"] == {
        "program_id": "create_qa",
        "session_id": "create",
        "module": "predict",
        "signature": "question: str -> answer: str, confidence: float",
        "input_fields": ["question"],
        "output_fields": ["answer", "confidence"],
    }
    assert worker.call("ping")["dspy_loaded"] is True


def test_question_to_answer_and_confidence_gives_a_string_and_a_float(worker: BridgeProcess) -> None:
    result = worker.call(
        "execute_program",
        {"definition": definition("qa_types", QA_OUTPUTS), "inputs": {"question": "What is the capital of France?"}},
    )
    outputs = result["outputs"]
    assert result["program_id"] == "qa_types"
    assert set(outputs) == {"answer", "confidence"}
    assert isinstance(outputs["answer"], str) and outputs["answer"]
    assert isinstance(outputs["confidence"], float) and 0.0 <= outputs["confidence"] < 1.0


def test_typed_context_signature_returns_each_declared_type(worker: BridgeProcess) -> None:
    typed = definition(
        "typed",
        [field("result"), field("reasoning", {"list": "str"}), field("confidence", "float")],
        inputs=[field("input"), field("context", {"list": "str"})],
    )
    outputs = worker.call(
        "execute_program", {"definition": typed, "inputs": {"input": "Summarise", "context": ["doc one", "doc two"]}}
    )["outputs"]
    assert isinstance(outputs["result"], str)
    assert isinstance(outputs["reasoning"], list) and 2 <= len(outputs["reasoning"]) <= 3
    assert all(isinstance(item, str) for item in outputs["reasoning"])
    assert isinstance(outputs["confidence"], float)


def test_chain_of_thought_returns_reasoning_before_the_outputs(worker: BridgeProcess) -> None:
    cot = definition("cot", [field("answer")], module="chain_of_thought")
    assert create(worker, cot, session="cot")["result"]["module"] == "chain_of_thought"
    outputs = worker.call(
        "execute_program", {"session_id": "cot", "program_id": "cot", "inputs": {"question": "Why?"}}
    )["outputs"]
    assert list(outputs) == ["reasoning", "answer"]
    assert isinstance(outputs["reasoning"], str) and outputs["reasoning"]


def test_list_info_and_delete(worker: BridgeProcess) -> None:
    session = {"session_id": "crud"}
    for program_id in ("zeta", "alpha"):
        assert create(worker, definition(program_id, QA_OUTPUTS, instructions="Be brief."), session="crud")["success"]
    assert worker.call("list_programs", session) == {"programs": ["alpha", "zeta"]}

    for _ in range(2):
        worker.call("execute_program", {**session, "program_id": "alpha", "inputs": {"question": "q"}})
    info = worker.call("get_program_info", {**session, "program_id": "alpha"})
    assert {key: info[key] for key in ("program_id", "module", "signature", "inputs", "outputs", "executions")} == {
        "program_id": "alpha",
        "module": "predict",
        "signature": "question: str -> answer: str, confidence: float",
        "inputs": [field("question")],
        "outputs": QA_OUTPUTS,
        "executions": 2,
    }
    assert (info["input_fields"], info["output_fields"], info["demos"]) == (["question"], ["answer", "confidence"], 0)

    assert worker.call("delete_program", {**session, "program_id": "alpha"}) == {"deleted": True}
    assert worker.call("list_programs", session) == {"programs": ["zeta"]}
    assert error_type(worker.request("delete_program", {**session, "program_id": "alpha"})) == "ProgramNotFound"
    assert error_type(worker.request("get_program_info", {**session, "program_id": "alpha"})) == "ProgramNotFound"


def test_create_program_always_rebuilds_a_cached_id(worker: BridgeProcess) -> None:
    # The Rust host owns the registry and decides about duplicates; a copy left in this
    # worker's cache (say by a deleted program of the same id) is stale, not a conflict.
    assert create(worker, definition("again", QA_OUTPUTS), session="rep")["success"]
    response = create(worker, definition("again", [field("answer")]), session="rep")
    assert response["success"], response
    info = worker.call("get_program_info", {"session_id": "rep", "program_id": "again"})
    assert [f["name"] for f in info["outputs"]] == ["answer"]
    # The same id in another scope is a different program.
    assert create(worker, definition("again", QA_OUTPUTS), session="rep-other")["success"]
    other = worker.call("get_program_info", {"session_id": "rep-other", "program_id": "again"})
    assert [f["name"] for f in other["outputs"]] == ["answer", "confidence"]


def test_sessions_never_see_each_others_programs(worker: BridgeProcess) -> None:
    assert create(worker, definition("private", QA_OUTPUTS), session="iso-a")["success"]
    assert worker.call("list_programs", {"session_id": "iso-b"}) == {"programs": []}
    assert "private" not in worker.call("list_programs", {"session_id": None})["programs"]
    for session in ("iso-b", None):
        args = {"session_id": session, "program_id": "private", "inputs": {"question": "q"}}
        assert error_type(execute(worker, args)) == "ProgramNotFound"
        assert error_type(worker.request("get_program_info", {"session_id": session, "program_id": "private"})) == (
            "ProgramNotFound"
        )


def test_executing_an_unknown_program_without_a_definition_is_not_found(worker: BridgeProcess) -> None:
    response = execute(worker, {"session_id": "nf", "program_id": "ghost", "inputs": {"question": "q"}})
    assert error_type(response) == "ProgramNotFound"
    assert "'ghost'" in response["error"]["message"]


def test_a_changed_definition_rebuilds_the_cached_program(worker: BridgeProcess) -> None:
    args = {"session_id": "stale", "inputs": {"question": "q"}}
    first = worker.call("execute_program", {**args, "definition": definition("evolving", [field("answer")])})
    assert set(first["outputs"]) == {"answer"}
    changed = definition("evolving", [field("answer"), field("score", "int")])
    second = worker.call("execute_program", {**args, "definition": changed})
    assert set(second["outputs"]) == {"answer", "score"}
    assert isinstance(second["outputs"]["score"], int)
    info = worker.call("get_program_info", {"session_id": "stale", "program_id": "evolving"})
    assert info["signature"] == "question: str -> answer: str, score: int"


def test_an_unchanged_definition_reuses_the_cached_program(worker: BridgeProcess) -> None:
    full = definition("cached", QA_OUTPUTS)
    without_id = {key: value for key, value in full.items() if key != "program_id"}
    args = {"session_id": "cache", "program_id": "cached"}
    assert worker.request("create_program", {**args, "definition": without_id})["success"]
    worker.call("execute_program", {**args, "inputs": {"question": "q"}})
    worker.call("execute_program", {**args, "definition": full, "inputs": {"question": "q"}})
    # A rebuild would have started the count again.
    assert worker.call("get_program_info", args)["executions"] == 2


def test_bad_definitions_are_invalid_requests(worker: BridgeProcess) -> None:
    bad_module = definition("bad_module", QA_OUTPUTS, module="react")
    assert error_type(create(worker, bad_module, session="bad")) == "InvalidRequest"
    bad_type = definition("bad_type", [field("answer", {"set": "str"})])
    response = create(worker, bad_type, session="bad")
    assert error_type(response) == "InvalidRequest"
    assert "output field 'answer'" in response["error"]["message"]
    assert worker.call("list_programs", {"session_id": "bad"}) == {"programs": []}


def test_cleanup_session_drops_only_that_session(worker: BridgeProcess) -> None:
    for program_id in ("one", "two"):
        assert create(worker, definition(program_id, QA_OUTPUTS), session="gone")["success"]
    assert create(worker, definition("kept", QA_OUTPUTS), session="kept")["success"]
    before = worker.call("get_stats")["programs"]
    assert worker.call("cleanup_session", {"session_id": "gone"}) == {"session_id": "gone", "programs_removed": 2}
    assert worker.call("list_programs", {"session_id": "gone"}) == {"programs": []}
    assert worker.call("list_programs", {"session_id": "kept"}) == {"programs": ["kept"]}
    assert worker.call("get_stats")["programs"] == before - 2


def test_missing_api_key_named_by_api_key_env_is_an_lm_error(worker: BridgeProcess) -> None:
    lm = {"model": "openai/gpt-4o-mini", "api_key_env": "DSPEX_TEST_KEY_THAT_IS_NOT_SET"}
    response = execute(worker, {"definition": definition("keyed", QA_OUTPUTS), "inputs": {"question": "q"}, "lm": lm})
    assert error_type(response) == "LMError"
    assert "set DSPEX_TEST_KEY_THAT_IS_NOT_SET" in response["error"]["message"]
    assert "lm.api_key_env" in response["error"]["message"]


def test_missing_provider_key_is_an_lm_error_naming_the_variable(worker: BridgeProcess) -> None:
    response = execute(
        worker,
        {
            "definition": definition("keyless", QA_OUTPUTS),
            "inputs": {"question": "q"},
            "lm": {"model": "openai/gpt-4o-mini"},
        },
    )
    assert error_type(response) == "LMError"
    assert "set OPENAI_API_KEY" in response["error"]["message"]


def test_configure_lm_with_a_missing_key_keeps_the_previous_default(worker: BridgeProcess) -> None:
    response = worker.request("configure_lm", {"model": "anthropic/claude-3-5-haiku-latest"})
    assert error_type(response) == "LMError"
    assert "ANTHROPIC_API_KEY" in response["error"]["message"]
    assert worker.call("configure_lm", {"model": "dummy"}) == {"model": "dummy"}
    result = worker.call(
        "execute_program", {"definition": definition("after_configure", QA_OUTPUTS), "inputs": {"question": "q"}}
    )
    assert isinstance(result["outputs"]["confidence"], float)


def test_workers_write_nothing_under_home(worker: BridgeProcess, home: Path) -> None:
    worker.call("execute_program", {"definition": definition("home_check", QA_OUTPUTS), "inputs": {"question": "q"}})
    assert list(home.iterdir()) == []


def test_a_fresh_worker_rebuilds_from_the_definition_with_identical_outputs(worker: BridgeProcess, spawn: Any) -> None:
    shared = definition("portable", QA_OUTPUTS, module="chain_of_thought", instructions="Answer the question.")
    inputs = {"question": "How many legs does a spider have?"}
    assert create(worker, shared, session="portable")["success"]
    first = worker.call("execute_program", {"session_id": "portable", "program_id": "portable", "inputs": inputs})

    fresh = spawn("stdio", remove_env=SCRUBBED_ENV)
    assert fresh.call("list_programs", {"session_id": "portable"}) == {"programs": []}
    rebuilt = fresh.call(
        "execute_program", {"session_id": "portable", "program_id": "portable", "definition": shared, "inputs": inputs}
    )
    assert rebuilt == first
    assert fresh.call("list_programs", {"session_id": "portable"}) == {"programs": ["portable"]}
    other = fresh.call(
        "execute_program",
        {"session_id": "portable", "program_id": "portable", "inputs": {"question": "How many legs does an ant have?"}},
    )
    assert other["outputs"] != first["outputs"]


def test_a_worker_preloads_its_lm_and_traces_the_dummys_calls(spawn: Any, tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    env = {
        "DSPEX_LM": json.dumps({"model": "dummy"}),
        "DSPEX_PRELOAD_DSPY": "1",
        "DSPEX_DUMMY_TRACE": str(trace),
        "DSPEX_PYTHON_PATH": FIXTURES,
        "HOME": str(tmp_path),
    }
    worker = spawn("fds", env=env, remove_env=SCRUBBED_ENV)
    assert worker.call("ping", {"initialization": True})["dspy_loaded"] is True
    program = {"program_id": "qta", "module": "python", "factory": "user_programs:QueryThenAnswer"}
    for question in ("One?", "Two?"):
        result = worker.call("execute_program", {"definition": program, "inputs": {"question": question}})
        assert set(result["outputs"]) == {"query", "answer", "confidence"}
        assert result["usage"]["dummy"]["calls"] == 2
    lines = [json.loads(line) for line in trace.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 4
    assert {line["pid"] for line in lines} == {worker.process.pid}
    assert "Two?" in json.dumps(lines[-1]["messages"])
