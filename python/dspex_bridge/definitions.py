"""Validation of program definitions and their field types, without DSPy.

The Rust side sends a program as JSON (contract §5): a module kind, a structured signature
whose field types are small JSON terms, and for the richer kinds few-shot demos, optimized
instructions, a user factory ``"pkg.mod:attr"`` and a saved state file. This module checks
that JSON and turns each type term into a Python annotation, so a bad definition is reported
as :class:`InvalidRequest` naming the offending part before DSPy (or any user code, or the
file system) is involved at all.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from typing import Any, Dict, Literal, Optional, Tuple

from .errors import InvalidRequest

#: Program kinds this bridge can build.
MODULE_KINDS = ("predict", "chain_of_thought", "python")

#: Keys a definition may carry; anything else is most likely a typo and is refused.
DEFINITION_KEYS = frozenset(
    {"program_id", "module", "signature", "demos", "instructions", "factory", "state", "allow_pickle"}
)

_SCALARS = {"str": str, "int": int, "float": float, "bool": bool}

#: Type terms may nest (``list[dict[str, list[int]]]``) but not without bound: a hostile
#: definition nested thousands deep would otherwise exhaust the stack or the dummy's output.
MAX_TYPE_DEPTH = 32

#: Keyword arguments DSPy's ``Predict`` takes for itself; an input field with one of these
#: names would be swallowed instead of reaching the prompt.
RESERVED_INPUT_NAMES = frozenset({"signature", "demos", "config", "lm", "prediction"})

#: Demo keys DSPy itself writes that are not signature fields (``BootstrapFewShot`` marks the
#: demos it generated with ``augmented: true``).
DEMO_EXTRA_KEYS = frozenset({"augmented"})

_FACTORY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


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
class StateRef:
    """A saved DSPy state file (``program.save`` format) and the digest of its content."""

    path: str
    digest: Optional[str]

    @property
    def is_pickle(self) -> bool:
        """Whether the file is a pickle (``.pkl``), which can run code when loaded."""
        return self.path.endswith(".pkl")


@dataclass(frozen=True)
class ProgramSpec:
    """A validated program definition.

    ``instructions`` is the effective instruction text: the definition's own
    ``instructions`` when given, else the signature's. ``has_signature`` is false only for a
    ``python`` program sent without one.
    """

    program_id: str
    module: str
    name: Optional[str]
    instructions: Optional[str]
    inputs: Tuple[FieldSpec, ...]
    outputs: Tuple[FieldSpec, ...]
    has_signature: bool = True
    demos: Tuple[Dict[str, Any], ...] = ()
    factory: Optional[str] = None
    state: Optional[StateRef] = None
    allow_pickle: bool = False

    def signature_text(self) -> Optional[str]:
        """Compact string form, e.g. ``question: str -> answer: str, confidence: float``."""
        if not self.has_signature:
            return None
        inputs = ", ".join(f"{f.name}: {type_text(f.type_term)}" for f in self.inputs)
        outputs = ", ".join(f"{f.name}: {type_text(f.type_term)}" for f in self.outputs)
        return f"{inputs} -> {outputs}"


def annotation_of(term: Any, where: str = "type", depth: int = 0) -> Any:
    """Turn a JSON type term into a Python annotation.

    Terms: ``"str" | "int" | "float" | "bool" | {"list": T} | {"dict": T}`` (string keys)
    ``| {"optional": T} | {"literal": [values]}`` with string, int or bool literal values.
    Raises :class:`InvalidRequest` naming ``where`` for anything else.
    """
    if depth > MAX_TYPE_DEPTH:
        raise InvalidRequest(f"{where}: type nested more than {MAX_TYPE_DEPTH} levels deep")
    if isinstance(term, str):
        if term in _SCALARS:
            return _SCALARS[term]
        raise InvalidRequest(f"{where}: unknown type {term!r} (expected one of {', '.join(_SCALARS)})")
    if isinstance(term, dict) and len(term) == 1:
        ((kind, inner),) = term.items()
        if kind == "list":
            return list[annotation_of(inner, f"{where} list item", depth + 1)]  # type: ignore[misc]
        if kind == "dict":
            return dict[str, annotation_of(inner, f"{where} dict value", depth + 1)]  # type: ignore[misc]
        if kind == "optional":
            return Optional[annotation_of(inner, f"{where} optional value", depth + 1)]
        if kind == "literal":
            return _literal(inner, where)
    raise InvalidRequest(
        f"{where}: unsupported type term {term!r}; expected a scalar name or one of "
        '{"list": T}, {"dict": T}, {"optional": T}, {"literal": [...]}'
    )


def _literal(values: Any, where: str) -> Any:
    if not isinstance(values, list) or not values:
        raise InvalidRequest(f"{where}: a literal type needs a non-empty list of values, got {values!r}")
    for value in values:
        if not isinstance(value, (str, int, bool)):
            raise InvalidRequest(f"{where}: literal values must be strings, integers or booleans, got {value!r}")
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


def definition_program_id(definition: Any, program_id: Optional[str] = None) -> str:
    """The program id a request means: ``program_id`` or the definition's own, which must agree."""
    own_id = definition.get("program_id") if isinstance(definition, dict) else None
    if own_id is not None and program_id is not None and own_id != program_id:
        raise InvalidRequest(f"program_id {program_id!r} does not match the definition's program_id {own_id!r}")
    resolved = program_id if program_id is not None else own_id
    if not isinstance(resolved, str) or not resolved:
        raise InvalidRequest(f"program_id must be a non-empty string, got {resolved!r}")
    return resolved


def parse_program(definition: Any, program_id: Optional[str] = None) -> ProgramSpec:
    """Validate a program definition (contract §5).

    ``program_id``, when given, must agree with the definition's own id (a definition may
    leave its id out, in which case ``program_id`` supplies it).
    """
    if not isinstance(definition, dict):
        raise InvalidRequest(f"program definition must be an object, got {type(definition).__name__}")
    unknown = sorted(set(definition) - DEFINITION_KEYS)
    if unknown:
        raise InvalidRequest(
            f"program definition has unknown key(s) {', '.join(map(repr, unknown))}; "
            f"known keys: {', '.join(sorted(DEFINITION_KEYS))}"
        )
    resolved_id = definition_program_id(definition, program_id)

    module = definition.get("module") or "predict"
    if module not in MODULE_KINDS:
        raise InvalidRequest(f"unknown module kind {module!r} (expected one of {', '.join(MODULE_KINDS)})")
    is_python = module == "python"

    signature = definition.get("signature")
    if signature is None and is_python:
        name, sig_instructions, inputs, outputs, has_signature = None, None, (), (), False
    else:
        if not isinstance(signature, dict):
            raise InvalidRequest(f"a {module} program needs a structured 'signature' object")
        name, sig_instructions, inputs, outputs = _signature(signature, module)
        has_signature = True

    instructions = definition.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidRequest("instructions must be a string or null")
    if instructions is not None and is_python:
        raise InvalidRequest(
            "instructions apply to predict/chain_of_thought programs; a python program's instructions "
            "come from its code or its state file"
        )

    factory = definition.get("factory")
    if is_python:
        if not isinstance(factory, str) or not _FACTORY.match(factory):
            raise InvalidRequest(f"a python program needs 'factory' as \"package.module:attribute\", got {factory!r}")
    elif factory is not None:
        raise InvalidRequest(f"'factory' belongs to python programs, not {module}; set module = \"python\"")

    demos = _demos(definition.get("demos"), module, inputs, outputs)
    allow_pickle = definition.get("allow_pickle", False)
    if allow_pickle is None:
        allow_pickle = False
    if not isinstance(allow_pickle, bool):
        raise InvalidRequest(f"allow_pickle must be true or false, got {allow_pickle!r}")
    state = _state(definition.get("state"), allow_pickle)

    return ProgramSpec(
        program_id=resolved_id,
        module=module,
        name=name,
        instructions=instructions if instructions is not None else sig_instructions,
        inputs=inputs,
        outputs=outputs,
        has_signature=has_signature,
        demos=demos,
        factory=factory if is_python else None,
        state=state,
        allow_pickle=allow_pickle,
    )


def _signature(signature: Dict[str, Any], module: str) -> Tuple[Any, Any, Tuple[FieldSpec, ...], Tuple[FieldSpec, ...]]:
    name = signature.get("name")
    if name is not None and not (isinstance(name, str) and name.isidentifier()):
        raise InvalidRequest(f"signature name must be a Python identifier or null, got {name!r}")
    instructions = signature.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidRequest("signature instructions must be a string or null")

    inputs = _fields(signature.get("inputs") or [], "input")
    for field in inputs:
        if field.name in RESERVED_INPUT_NAMES:
            raise InvalidRequest(
                f"input field name {field.name!r} is reserved by DSPy "
                f"({', '.join(sorted(RESERVED_INPUT_NAMES))}); rename the field"
            )
    raw_outputs = signature.get("outputs")
    outputs = _fields([] if raw_outputs is None and module == "python" else raw_outputs, "output")
    if not outputs and module != "python":
        raise InvalidRequest("signature needs at least one output field")
    seen = set()
    for field in inputs + outputs:
        if field.name in seen:
            raise InvalidRequest(f"field {field.name!r} appears more than once in the signature")
        seen.add(field.name)
    if module == "chain_of_thought" and "reasoning" in seen:
        raise InvalidRequest("chain_of_thought adds its own 'reasoning' output; rename the field")
    return name, instructions, inputs, outputs


def _fields(raw: Any, role: str) -> Tuple[FieldSpec, ...]:
    if not isinstance(raw, list):
        raise InvalidRequest(f"signature {role}s must be a list of fields, got {raw!r}")
    fields = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise InvalidRequest(f"{role} field #{index} must be an object, got {item!r}")
        name = item.get("name")
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
            raise InvalidRequest(f"{role} field #{index} has an invalid name {name!r} (need a Python identifier)")
        description = item.get("description")
        if description is not None and not isinstance(description, str):
            raise InvalidRequest(f"{role} field {name!r}: description must be a string or null")
        term = item.get("type", "str")
        annotation = annotation_of(term, f"{role} field {name!r}")
        fields.append(FieldSpec(name, term, annotation, description))
    return tuple(fields)


def _demos(
    raw: Any, module: str, inputs: Tuple[FieldSpec, ...], outputs: Tuple[FieldSpec, ...]
) -> Tuple[Dict[str, Any], ...]:
    if raw is None:
        return ()
    if module == "python":
        raise InvalidRequest(
            "demos apply to predict/chain_of_thought programs; a python program's demos come from its state file"
        )
    if not isinstance(raw, list):
        raise InvalidRequest(f"demos must be a list of objects, got {type(raw).__name__}")
    known = {field.name for field in inputs + outputs} | DEMO_EXTRA_KEYS
    if module == "chain_of_thought":
        known.add("reasoning")
    demos = []
    for index, demo in enumerate(raw):
        if not isinstance(demo, dict) or not demo:
            raise InvalidRequest(f"demo #{index} must be a non-empty object of field values, got {demo!r}")
        unknown = sorted(set(demo) - known)
        if unknown:
            raise InvalidRequest(
                f"demo #{index} has field(s) {', '.join(map(repr, unknown))} that the signature does not declare "
                f"(fields: {', '.join(sorted(known - DEMO_EXTRA_KEYS))})"
            )
        demos.append(dict(demo))
    return tuple(demos)


def _state(raw: Any, allow_pickle: bool) -> Optional[StateRef]:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidRequest(f"state must be an object {{path, digest}} or null, got {type(raw).__name__}")
    unknown = sorted(set(raw) - {"path", "digest"})
    if unknown:
        raise InvalidRequest(f"state has unknown key(s) {', '.join(map(repr, unknown))}; expected path and digest")
    path = raw.get("path")
    if not isinstance(path, str) or not path:
        raise InvalidRequest(f"state.path must be a non-empty string, got {path!r}")
    digest = raw.get("digest")
    if digest is not None and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-fA-F]{64}", digest)):
        raise InvalidRequest(f"state.digest must be a SHA-256 hex digest or null, got {digest!r}")
    state = StateRef(path, digest.lower() if digest else None)
    if state.is_pickle:
        if not allow_pickle:
            raise InvalidRequest(
                f"state file {path!r} is a pickle, and loading a pickle can run arbitrary code; save the program "
                "as JSON (program.save('state.json')) or set allow_pickle = true on this program if you trust the file"
            )
    elif not path.endswith(".json"):
        raise InvalidRequest(
            f"state file {path!r} must be a .json file saved by DSPy's program.save (or .pkl with allow_pickle)"
        )
    return state
