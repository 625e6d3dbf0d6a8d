"""Program kinds in-process against real DSPy and the dummy LM: demos, state files, users' modules.

What the LM was sent is read back from the dummy's trace file (``DSPEX_DUMMY_TRACE``), so these
tests see demos and instructions reach the prompt, not merely sit on a Python object.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any, Dict, List

import dspy
import pytest
from dspy_support import definition, field, prompt_text, python_definition, read_trace

from dspex_bridge.dspy_commands import DspyCommands
from dspex_bridge.dummy_lm import FORMAT_RECORDER, DummyLM
from dspex_bridge.errors import InvalidRequest, ProgramNotFound
from dspex_bridge.outputs import to_json

QUESTIONS = ["What is the capital of France?", "Why is the sky blue?", "How do bees fly?", "Who wrote Hamlet?"]


pytestmark = pytest.mark.usefixtures("user_code_on_path")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def state_ref(path: Path) -> Dict[str, Any]:
    return {"path": str(path), "digest": sha256(path)}


def direct(module: dspy.Module, **inputs: Any) -> dspy.Prediction:
    """Call a module the way a user would in Python, on the same dummy LM."""
    with dspy.context(lm=DummyLM(), callbacks=[FORMAT_RECORDER]):
        return module(**inputs)


# -- predict / chain_of_thought with demos, instructions and state -------------------------------


def test_demos_and_instructions_in_the_definition_reach_the_prompt(commands: DspyCommands, trace: str) -> None:
    demo = {"question": "Capital of Peru?", "answer": "Lima"}
    program = definition("with_demos", demos=[demo], instructions="Answer with one city.")
    commands.execute_program({"definition": program, "inputs": {"question": "Capital of Chile?"}})
    (entry,) = read_trace(trace)
    text = prompt_text(entry)
    assert "Answer with one city." in text
    assert "Capital of Peru?" in text and "Lima" in text
    roles = [message["role"] for message in entry["messages"]]
    assert roles == ["system", "user", "assistant", "user"]  # one demo pair, then the row


def test_demos_from_a_state_saved_by_dspy_reach_the_prompt(commands: DspyCommands, trace: str, tmp_path: Path) -> None:
    saved = dspy.ChainOfThought("question -> answer")
    saved.predict.demos = [
        dspy.Example(question="What is 7*6?", reasoning="Seven sixes.", answer="42"),
        dspy.Example(question="What is 2+2?", reasoning="Add.", answer="4"),
    ]
    saved.predict.signature = saved.predict.signature.with_instructions("Do arithmetic carefully.")
    path = tmp_path / "cot.json"
    saved.save(str(path))

    plain = definition("cot_state", module="chain_of_thought")
    with_state = {**plain, "state": state_ref(path)}
    inputs = {"question": "What is 3*3?"}
    commands.execute_program({"session_id": "a", "definition": plain, "inputs": inputs})
    commands.execute_program({"session_id": "b", "definition": with_state, "inputs": inputs})
    before, after = read_trace(trace)
    assert "What is 7*6?" not in prompt_text(before)
    for text in ("What is 7*6?", "Seven sixes.", "42", "What is 2+2?", "Do arithmetic carefully."):
        assert text in prompt_text(after)
    assert len(after["messages"]) == len(before["messages"]) + 4


def test_state_of_a_users_module_loads_into_its_factory(commands: DspyCommands, trace: str, tmp_path: Path) -> None:
    from user_programs import QueryThenAnswer

    saved = QueryThenAnswer()
    saved.make_query.demos = [dspy.Example(question="Tallest mountain?", query="highest peak on earth")]
    path = tmp_path / "qta.json"
    saved.save(str(path))
    program = python_definition("qta_state", "user_programs:QueryThenAnswer", state=state_ref(path))
    result = commands.execute_program({"definition": program, "inputs": {"question": "Longest river?"}})
    assert set(result["outputs"]) == {"query", "answer", "confidence"}
    query_call, answer_call = read_trace(trace)
    assert "highest peak on earth" in prompt_text(query_call)
    assert "highest peak on earth" not in prompt_text(answer_call)


# -- python programs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", ["user_programs:QueryThenAnswer", "user_programs:make_query_then_answer"])
def test_a_two_predictor_module_by_factory_matches_calling_it_directly(commands: DspyCommands, factory: str) -> None:
    from user_programs import QueryThenAnswer

    created = commands.create_program({"definition": python_definition("qta", factory), "session_id": "s"})
    assert created["input_fields"] == ["question"] and created["output_fields"] is None
    assert created["signature"] is None and created["module"] == "python"
    for question in QUESTIONS:
        result = commands.execute_program({"session_id": "s", "program_id": "qta", "inputs": {"question": question}})
        expected = direct(QueryThenAnswer(), question=question)
        assert result["outputs"] == {name: to_json(expected[name]) for name in expected.keys()}  # noqa: SIM118
        assert isinstance(result["outputs"]["confidence"], float)
        assert result["usage"]["dummy"]["calls"] == 2


def test_an_output_signature_types_and_checks_a_python_programs_outputs(commands: DspyCommands) -> None:
    program = python_definition(
        "echo",
        "user_programs:Echo",
        signature={"inputs": [], "outputs": [field("count", "int"), field("words", {"list": "str"})]},
    )
    created = commands.create_program({"definition": program})
    assert created["input_fields"] == ["text", "count"] and created["output_fields"] == ["count", "words"]
    result = commands.execute_program({"program_id": "echo", "inputs": {"text": "a b", "count": "7"}})
    assert result["outputs"] == {"count": 7, "words": ["a", "b"]}  # "7" coerced to the declared int
    assert result["usage"] == {}  # no LM call was made
    with pytest.raises(ValueError, match="output 'count' is not a valid int"):
        commands.execute_program({"program_id": "echo", "inputs": {"text": "a", "count": "seven"}})
    missing = python_definition("echo2", "user_programs:Echo", signature={"outputs": [field("answer")]})
    with pytest.raises(ValueError, match="returned no 'answer'"):
        commands.execute_program({"definition": missing, "inputs": {"text": "a"}})


def test_inputs_a_forward_cannot_take_are_invalid_requests(commands: DspyCommands) -> None:
    commands.create_program({"definition": python_definition("echo", "user_programs:Echo")})
    with pytest.raises(InvalidRequest, match="needs input\\(s\\) 'text'"):
        commands.execute_program({"program_id": "echo", "inputs": {"count": "1"}})
    with pytest.raises(InvalidRequest, match="takes no input\\(s\\) 'colour'"):
        commands.execute_program({"program_id": "echo", "inputs": {"text": "a", "colour": "red"}})
    commands.create_program({"definition": python_definition("kw", "user_programs:Keywords")})
    result = commands.execute_program({"program_id": "kw", "inputs": {"b": "1", "a": "2"}})
    assert result["outputs"] == {"keys": ["a", "b"]}


@pytest.mark.parametrize(
    "factory, message",
    [
        ("no_such_package.mod:make", "module 'no_such_package.mod' was not found; python.path must contain"),
        ("user_programs:missing", "has no attribute 'missing'"),
        ("user_programs:NOT_CALLABLE", "is a int; it must be a dspy.Module subclass"),
        ("user_programs:not_a_module", "returned a str, not a dspy.Module"),
        ("user_programs:broken_factory", "raised RuntimeError when called with no arguments: the factory is broken"),
    ],
)
def test_bad_factories_are_invalid_requests(commands: DspyCommands, factory: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        commands.create_program({"definition": python_definition("bad", factory)})
    assert commands.list_programs({}) == {"programs": []}


# -- state files ------------------------------------------------------------------------------------


def test_bad_state_files_are_invalid_requests(commands: DspyCommands, tmp_path: Path) -> None:
    def create(state: Dict[str, Any], **extra: Any) -> None:
        commands.create_program({"definition": definition("stateful", state=state, **extra)})

    with pytest.raises(InvalidRequest, match="does not exist"):
        create({"path": str(tmp_path / "missing.json"), "digest": None})
    not_json = tmp_path / "broken.json"
    not_json.write_text("{not json", encoding="utf-8")
    with pytest.raises(InvalidRequest, match="is not JSON"):
        create({"path": str(not_json), "digest": None})
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"something": "else"}), encoding="utf-8")
    with pytest.raises(InvalidRequest, match="does not fit this program"):
        create({"path": str(other), "digest": None})
    good = tmp_path / "good.json"
    dspy.Predict("question -> answer").save(str(good))
    with pytest.raises(InvalidRequest, match="changed since its digest was taken"):
        create({"path": str(good), "digest": "0" * 64})
    create(state_ref(good))


def test_a_pickle_state_needs_allow_pickle(commands: DspyCommands, tmp_path: Path, trace: str) -> None:
    saved = dspy.Predict("question -> answer")
    saved.demos = [dspy.Example(question="Pickled question?", answer="Pickled answer")]
    path = tmp_path / "state.pkl"
    saved.save(str(path))
    with pytest.raises(InvalidRequest, match=r"is a pickle.*allow_pickle"):
        commands.create_program({"definition": definition("pickled", state=state_ref(path))})
    trusted = definition("pickled", state=state_ref(path), allow_pickle=True)
    commands.execute_program({"definition": trusted, "inputs": {"question": "q"}})
    assert "Pickled question?" in prompt_text(read_trace(trace)[0])


def test_a_metric_given_to_create_program_must_be_callable(commands: DspyCommands) -> None:
    program = definition("metered")
    created = commands.create_program({"definition": program, "metric": "user_programs:always_right"})
    assert created["program_id"] == "metered"
    with pytest.raises(InvalidRequest, match="metric 'user_programs:NOT_CALLABLE' is a int, not a callable"):
        commands.create_program({"definition": program, "metric": "user_programs:NOT_CALLABLE"})
    with pytest.raises(InvalidRequest, match=r"was not found; python\.path must contain"):
        commands.create_program({"definition": program, "metric": "nowhere:metric"})


# -- the program cache ------------------------------------------------------------------------------


def test_a_matching_digest_uses_the_cached_program_without_reading_the_definition(commands: DspyCommands) -> None:
    program = definition("trusted", [field("answer")])
    commands.create_program({"definition": program, "digest": "host-digest-1"})
    # Anything could be sent along: with the cached digest, the definition is not parsed.
    garbage = {"module": "not even a kind", "signature": 42}
    result = commands.execute_program(
        {"program_id": "trusted", "definition": garbage, "digest": "host-digest-1", "inputs": {"question": "q"}}
    )
    assert set(result["outputs"]) == {"answer"}
    assert commands.get_program_info({"program_id": "trusted"})["executions"] == 1
    # A new digest means a new definition: it is parsed and the program rebuilt.
    changed = definition("trusted", [field("answer"), field("score", "int")])
    result = commands.execute_program(
        {"program_id": "trusted", "definition": changed, "digest": "host-digest-2", "inputs": {"question": "q"}}
    )
    assert set(result["outputs"]) == {"answer", "score"}
    info = commands.get_program_info({"program_id": "trusted"})
    assert (info["digest"], info["executions"]) == ("host-digest-2", 1)
    with pytest.raises(InvalidRequest, match="unknown module kind"):
        commands.execute_program(
            {"program_id": "trusted", "definition": garbage, "digest": "host-digest-3", "inputs": {"question": "q"}}
        )


def test_without_a_digest_the_bridge_hashes_the_definition_canonically(commands: DspyCommands) -> None:
    program = definition("canon")
    reordered = dict(reversed(list(program.items())))
    commands.execute_program({"definition": program, "inputs": {"question": "q"}})
    commands.execute_program({"definition": reordered, "inputs": {"question": "q"}})
    assert commands.get_program_info({"program_id": "canon"})["executions"] == 2


def test_two_sessions_programs_stay_invisible_to_each_other(commands: DspyCommands) -> None:
    commands.create_program({"session_id": "alice", "definition": definition("mine", [field("answer")])})
    commands.create_program({"session_id": "bob", "definition": definition("mine", [field("verdict", "bool")])})
    alice = commands.execute_program({"session_id": "alice", "program_id": "mine", "inputs": {"question": "q"}})
    bob = commands.execute_program({"session_id": "bob", "program_id": "mine", "inputs": {"question": "q"}})
    assert set(alice["outputs"]) == {"answer"} and set(bob["outputs"]) == {"verdict"}
    for session in ("carol", None):
        with pytest.raises(ProgramNotFound):
            commands.execute_program({"session_id": session, "program_id": "mine", "inputs": {"question": "q"}})
    assert commands.list_programs({"session_id": "carol"}) == {"programs": []}


def test_caller_mistakes_in_execute_program_are_invalid_requests(commands: DspyCommands) -> None:
    with pytest.raises(InvalidRequest, match="inputs must be an object"):
        commands.execute_program({"definition": definition("x"), "inputs": ["q"]})
    with pytest.raises(InvalidRequest, match="needs a program_id or a definition"):
        commands.execute_program({"inputs": {}})
    with pytest.raises(InvalidRequest, match="session_id must be a string"):
        commands.execute_program({"session_id": 3, "definition": definition("x"), "inputs": {}})
    with pytest.raises(InvalidRequest, match="lm must be an object"):
        commands.execute_program({"definition": definition("x"), "inputs": {}, "lm": "dummy"})


def test_concurrent_requests_in_threads_each_get_their_own_outputs_and_usage(commands: DspyCommands) -> None:
    programs = {
        "qa": definition("qa", [field("answer"), field("confidence", "float")]),
        "cot": definition("cot", [field("answer")], module="chain_of_thought"),
        "qta": python_definition("qta", "user_programs:QueryThenAnswer"),
    }
    rows = [
        (name, f"{question} (variant {index})") for index in range(4) for name in programs for question in QUESTIONS
    ]

    def args_for(name: str, question: str) -> Dict[str, Any]:
        return {"session_id": "shared", "definition": programs[name], "inputs": {"question": question}}

    sequential = {row: commands.execute_program(args_for(*row)) for row in rows}
    commands._store.clear()  # the threads race to build the programs again, too
    results: Dict[Any, Dict[str, Any]] = {}
    errors: List[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(share: List[Any]) -> None:
        try:
            barrier.wait()
            for row in share:
                results[row] = commands.execute_program(args_for(*row))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(rows[index::8],)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert results == sequential
    assert {results[row]["usage"]["dummy"]["calls"] for row in rows if row[0] == "qta"} == {2}
