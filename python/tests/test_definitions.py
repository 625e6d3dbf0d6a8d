"""Program definitions and field types, validated before DSPy is involved."""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional

import pytest

from dspex_bridge.definitions import MAX_TYPE_DEPTH, annotation_of, parse_program, type_text
from dspex_bridge.errors import InvalidRequest


def definition(outputs: List[Dict[str, Any]], module: str = "predict", **signature: Any) -> Dict[str, Any]:
    sig = {"name": None, "instructions": None, "inputs": [{"name": "question", "type": "str", "description": None}]}
    sig.update(signature)
    sig["outputs"] = outputs
    return {"program_id": "p", "module": module, "signature": sig}


@pytest.mark.parametrize(
    "term, annotation, text",
    [
        ("str", str, "str"),
        ("int", int, "int"),
        ("float", float, "float"),
        ("bool", bool, "bool"),
        ({"list": "str"}, list[str], "list[str]"),
        ({"dict": "float"}, dict[str, float], "dict[str, float]"),
        ({"optional": "int"}, Optional[int], "Optional[int]"),
        ({"literal": ["a", "b"]}, Literal["a", "b"], "Literal['a', 'b']"),
        ({"literal": [1, True]}, Literal[1, True], "Literal[1, True]"),
        ({"list": {"dict": {"optional": "bool"}}}, list[dict[str, Optional[bool]]], "list[dict[str, Optional[bool]]]"),
    ],
)
def test_each_type_term_maps_to_its_annotation_and_text(term: Any, annotation: Any, text: str) -> None:
    assert annotation_of(term) == annotation
    assert type_text(term) == text


@pytest.mark.parametrize(
    "term, message",
    [
        ("string", "unknown type 'string'"),
        ({"list": "complex"}, "list item: unknown type"),
        ({"tuple": "str"}, "unsupported type term"),
        ({"list": "str", "dict": "str"}, "unsupported type term"),
        ({"literal": []}, "non-empty list"),
        ({"literal": [1.5]}, "literal values must be"),
        (7, "unsupported type term"),
    ],
)
def test_bad_type_terms_are_invalid_requests_naming_the_problem(term: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        annotation_of(term, "output field 'x'")


def test_parsed_program_keeps_fields_and_renders_compact_signature() -> None:
    spec = parse_program(
        definition(
            [
                {"name": "answer", "type": "str", "description": None},
                {"name": "confidence", "type": "float", "description": "0..1"},
            ],
            instructions="Answer briefly.",
            name="QA",
        )
    )
    assert (spec.program_id, spec.module, spec.name, spec.instructions) == ("p", "predict", "QA", "Answer briefly.")
    assert spec.signature_text() == "question: str -> answer: str, confidence: float"
    assert spec.outputs[1].to_json() == {"name": "confidence", "type": "float", "description": "0..1"}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(module="react"), "unknown module kind 'react'"),
        (lambda d: d["signature"].update(outputs=[]), "at least one output"),
        (lambda d: d["signature"]["outputs"].append({"name": "question", "type": "str"}), "more than once"),
        (lambda d: d["signature"]["outputs"].append({"name": "bad name", "type": "str"}), "invalid name"),
        (
            lambda d: d["signature"]["outputs"].append({"name": "x", "type": "decimal"}),
            "output field 'x': unknown type",
        ),
        (lambda d: d["signature"].update(name="Not An Identifier"), "signature name"),
        (lambda d: d.pop("signature"), "structured 'signature'"),
        (lambda d: d["signature"]["inputs"].append({"name": "config", "type": "str"}), "'config' is reserved"),
        (lambda d: d.update(program_id=""), "program_id must be a non-empty string"),
    ],
)
def test_bad_definitions_are_invalid_requests(mutate: Any, message: str) -> None:
    raw = definition([{"name": "answer", "type": "str", "description": None}])
    mutate(raw)
    with pytest.raises(InvalidRequest, match=message):
        parse_program(raw)


def test_chain_of_thought_refuses_a_user_reasoning_field() -> None:
    raw = definition([{"name": "reasoning", "type": "str"}], module="chain_of_thought")
    with pytest.raises(InvalidRequest, match="adds its own 'reasoning'"):
        parse_program(raw)


def test_request_program_id_must_match_the_definition() -> None:
    raw = definition([{"name": "answer", "type": "str"}])
    with pytest.raises(InvalidRequest, match="does not match"):
        parse_program(raw, "other")
    del raw["program_id"]
    assert parse_program(raw, "given").program_id == "given"


def test_type_nesting_is_bounded() -> None:
    term: Any = "int"
    for _ in range(MAX_TYPE_DEPTH):
        term = {"list": term}
    annotation_of(term)
    with pytest.raises(InvalidRequest, match="nested more than"):
        annotation_of({"list": term})


def test_demos_and_instructions_are_kept_and_instructions_override_the_signature() -> None:
    raw = definition([{"name": "answer", "type": "str"}], instructions="From the signature.")
    raw["instructions"] = "Optimized."
    raw["demos"] = [{"question": "q1", "answer": "a1", "augmented": True}]
    spec = parse_program(raw)
    assert spec.instructions == "Optimized."
    assert spec.demos == ({"question": "q1", "answer": "a1", "augmented": True},)
    assert parse_program(definition([{"name": "answer"}], instructions="From the signature.")).instructions == (
        "From the signature."
    )


def test_chain_of_thought_demos_may_carry_reasoning() -> None:
    raw = definition([{"name": "answer"}], module="chain_of_thought")
    raw["demos"] = [{"question": "q", "reasoning": "because", "answer": "a"}]
    assert parse_program(raw).demos[0]["reasoning"] == "because"


def test_python_program_needs_only_a_factory() -> None:
    spec = parse_program({"program_id": "p", "module": "python", "factory": "pkg.mod:make"})
    assert (spec.module, spec.factory, spec.has_signature) == ("python", "pkg.mod:make", False)
    assert spec.inputs == () and spec.outputs == () and spec.signature_text() is None


def test_python_program_signature_may_declare_only_outputs() -> None:
    raw = {
        "program_id": "p",
        "module": "python",
        "factory": "pkg.mod:Program",
        "signature": {"outputs": [{"name": "answer", "type": "int"}]},
    }
    spec = parse_program(raw)
    assert [f.name for f in spec.outputs] == ["answer"] and spec.inputs == ()
    assert spec.signature_text() == " -> answer: int"


def test_state_reference_is_validated_without_touching_the_file() -> None:
    digest = "ab" * 32
    raw = {
        "program_id": "p",
        "module": "python",
        "factory": "m:f",
        "state": {"path": "/nowhere/s.json", "digest": digest},
    }
    spec = parse_program(raw)
    assert spec.state is not None and (spec.state.path, spec.state.digest) == ("/nowhere/s.json", digest)
    raw["state"] = {"path": "/nowhere/s.pkl", "digest": None}
    raw["allow_pickle"] = True
    assert parse_program(raw).state.is_pickle


STATE_DIGEST = "0" * 64


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"module": "python"}, "needs 'factory'"),
        ({"module": "python", "factory": "no_colon"}, "needs 'factory'"),
        ({"module": "python", "factory": "pkg:attr", "demos": [{"q": 1}]}, "demos apply to predict"),
        ({"module": "python", "factory": "pkg:attr", "instructions": "x"}, "instructions apply to predict"),
        (
            {"module": "predict", "factory": "pkg:attr", "signature": {"outputs": [{"name": "a"}]}},
            "'factory' belongs to python",
        ),
        ({"module": "python", "factory": "pkg:attr", "state": {"path": "/s.pkl", "digest": None}}, "is a pickle"),
        ({"module": "python", "factory": "pkg:attr", "state": {"path": "/s.txt", "digest": None}}, "must be a .json"),
        ({"module": "python", "factory": "pkg:attr", "state": {"path": "/s.json", "digest": "xyz"}}, "SHA-256"),
        ({"module": "python", "factory": "pkg:attr", "state": "/s.json"}, "state must be an object"),
        ({"module": "python", "factory": "pkg:attr", "allow_pickle": "yes"}, "allow_pickle must be"),
        ({"module": "python", "factory": "pkg:attr", "demo": []}, "unknown key"),
    ],
)
def test_bad_program_kinds_are_invalid_requests(raw: Dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_program({"program_id": "p", **raw})


@pytest.mark.parametrize(
    "demos, message",
    [
        ("not a list", "demos must be a list"),
        ([{}], "non-empty object"),
        (["q"], "non-empty object"),
        ([{"question": "q", "answr": "a"}], "'answr' that the signature does not declare"),
        ([{"question": "q", "reasoning": "r"}], "'reasoning' that the signature"),
    ],
)
def test_bad_demos_are_invalid_requests(demos: Any, message: str) -> None:
    raw = definition([{"name": "answer"}])
    raw["demos"] = demos
    with pytest.raises(InvalidRequest, match=message):
        parse_program(raw)
