"""Program definitions and field types, validated before DSPy is involved."""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional

import pytest

from dspex_bridge.definitions import annotation_of, parse_program, type_text


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
def test_bad_type_terms_are_value_errors_naming_the_problem(term: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
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
def test_bad_definitions_are_value_errors(mutate: Any, message: str) -> None:
    raw = definition([{"name": "answer", "type": "str", "description": None}])
    mutate(raw)
    with pytest.raises(ValueError, match=message):
        parse_program(raw)


def test_chain_of_thought_refuses_a_user_reasoning_field() -> None:
    raw = definition([{"name": "reasoning", "type": "str"}], module="chain_of_thought")
    with pytest.raises(ValueError, match="adds its own 'reasoning'"):
        parse_program(raw)


def test_request_program_id_must_match_the_definition() -> None:
    raw = definition([{"name": "answer", "type": "str"}])
    with pytest.raises(ValueError, match="does not match"):
        parse_program(raw, "other")
    del raw["program_id"]
    assert parse_program(raw, "given").program_id == "given"
