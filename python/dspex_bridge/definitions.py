"""Validation of program definitions and their field types, without DSPy.

The Rust side sends a program as JSON: a module kind and a structured signature whose field
types are small JSON terms. This module checks that JSON and turns each type term into a
Python annotation, so a bad definition is reported as a ``ValueError`` naming the offending
field before DSPy is involved at all.
"""

from __future__ import annotations

import keyword
from dataclasses import dataclass
from typing import Any, Dict, Literal, Optional, Tuple

#: Program kinds this bridge can build.
MODULE_KINDS = ("predict", "chain_of_thought")

_SCALARS = {"str": str, "int": int, "float": float, "bool": bool}

#: Keyword arguments DSPy's ``Predict`` takes for itself; an input field with one of these
#: names would be swallowed instead of reaching the prompt.
RESERVED_INPUT_NAMES = frozenset({"signature", "demos", "config", "lm", "prediction"})


@dataclass(frozen=True)
class FieldSpec:
    """One signature field: its name, type term and Python annotation."""

    name: str
    type_term: Any
    annotation: Any
    description: Optional[str]

    def to_json(self) -> Dict[str, Any]:
        """The field as it appeared in the definition."""
        return {"name": self.name, "type": self.type_term, "description": self.description}


@dataclass(frozen=True)
class ProgramSpec:
    """A validated program definition."""

    program_id: str
    module: str
    name: Optional[str]
    instructions: Optional[str]
    inputs: Tuple[FieldSpec, ...]
    outputs: Tuple[FieldSpec, ...]

    def signature_text(self) -> str:
        """Compact string form, e.g. ``question: str -> answer: str, confidence: float``."""
        inputs = ", ".join(f"{f.name}: {type_text(f.type_term)}" for f in self.inputs)
        outputs = ", ".join(f"{f.name}: {type_text(f.type_term)}" for f in self.outputs)
        return f"{inputs} -> {outputs}"


def annotation_of(term: Any, where: str = "type") -> Any:
    """Turn a JSON type term into a Python annotation.

    Terms: ``"str" | "int" | "float" | "bool" | {"list": T} | {"dict": T}`` (string keys)
    ``| {"optional": T} | {"literal": [values]}`` with string, int or bool literal values.
    Raises ``ValueError`` naming ``where`` for anything else.
    """
    if isinstance(term, str):
        if term in _SCALARS:
            return _SCALARS[term]
        raise ValueError(f"{where}: unknown type {term!r} (expected one of {', '.join(_SCALARS)})")
    if isinstance(term, dict) and len(term) == 1:
        ((kind, inner),) = term.items()
        if kind == "list":
            return list[annotation_of(inner, f"{where} list item")]  # type: ignore[misc]
        if kind == "dict":
            return dict[str, annotation_of(inner, f"{where} dict value")]  # type: ignore[misc]
        if kind == "optional":
            return Optional[annotation_of(inner, f"{where} optional value")]
        if kind == "literal":
            return _literal(inner, where)
    raise ValueError(
        f"{where}: unsupported type term {term!r}; expected a scalar name or one of "
        '{"list": T}, {"dict": T}, {"optional": T}, {"literal": [...]}'
    )


def _literal(values: Any, where: str) -> Any:
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where}: a literal type needs a non-empty list of values, got {values!r}")
    for value in values:
        if not isinstance(value, (str, int, bool)):
            raise ValueError(f"{where}: literal values must be strings, integers or booleans, got {value!r}")
    return Literal[tuple(values)]  # type: ignore[valid-type]


def type_text(term: Any) -> str:
    """Render a (valid) type term in the Python notation signatures are written in."""
    if isinstance(term, str):
        return term
    ((kind, inner),) = term.items()
    if kind == "list":
        return f"list[{type_text(inner)}]"
    if kind == "dict":
        return f"dict[str, {type_text(inner)}]"
    if kind == "optional":
        return f"Optional[{type_text(inner)}]"
    return "Literal[" + ", ".join(repr(value) for value in inner) + "]"


def parse_program(definition: Any, program_id: Optional[str] = None) -> ProgramSpec:
    """Validate a program definition.

    ``program_id``, when given, must agree with the definition's own id (a definition may
    leave its id out, in which case ``program_id`` supplies it).
    """
    if not isinstance(definition, dict):
        raise ValueError(f"program definition must be an object, got {type(definition).__name__}")
    own_id = definition.get("program_id")
    if own_id is not None and program_id is not None and own_id != program_id:
        raise ValueError(f"program_id {program_id!r} does not match the definition's program_id {own_id!r}")
    resolved_id = program_id if program_id is not None else own_id
    if not isinstance(resolved_id, str) or not resolved_id:
        raise ValueError(f"program_id must be a non-empty string, got {resolved_id!r}")

    module = definition.get("module", "predict")
    if module not in MODULE_KINDS:
        raise ValueError(f"unknown module kind {module!r} (expected one of {', '.join(MODULE_KINDS)})")

    signature = definition.get("signature")
    if not isinstance(signature, dict):
        raise ValueError("program definition needs a structured 'signature' object")
    name = signature.get("name")
    if name is not None and not (isinstance(name, str) and name.isidentifier()):
        raise ValueError(f"signature name must be a Python identifier or null, got {name!r}")
    instructions = signature.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise ValueError("signature instructions must be a string or null")

    inputs = _fields(signature.get("inputs", []), "input")
    for field in inputs:
        if field.name in RESERVED_INPUT_NAMES:
            raise ValueError(
                f"input field name {field.name!r} is reserved by DSPy "
                f"({', '.join(sorted(RESERVED_INPUT_NAMES))}); rename the field"
            )
    outputs = _fields(signature.get("outputs"), "output")
    if not outputs:
        raise ValueError("signature needs at least one output field")
    seen = set()
    for field in inputs + outputs:
        if field.name in seen:
            raise ValueError(f"field {field.name!r} appears more than once in the signature")
        seen.add(field.name)
    if module == "chain_of_thought" and "reasoning" in seen:
        raise ValueError("chain_of_thought adds its own 'reasoning' output; rename the field")

    return ProgramSpec(resolved_id, module, name, instructions, inputs, outputs)


def _fields(raw: Any, role: str) -> Tuple[FieldSpec, ...]:
    if not isinstance(raw, list):
        raise ValueError(f"signature {role}s must be a list of fields, got {raw!r}")
    fields = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ValueError(f"{role} field #{index} must be an object, got {item!r}")
        name = item.get("name")
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
            raise ValueError(f"{role} field #{index} has an invalid name {name!r} (need a Python identifier)")
        description = item.get("description")
        if description is not None and not isinstance(description, str):
            raise ValueError(f"{role} field {name!r}: description must be a string or null")
        term = item.get("type", "str")
        annotation = annotation_of(term, f"{role} field {name!r}")
        fields.append(FieldSpec(name, term, annotation, description))
    return tuple(fields)
