"""Turning a validated :class:`ProgramSpec` into a runnable ``dspy.Module``.

Three kinds (contract §5):

* ``predict`` / ``chain_of_thought``: a signature built from the structured definition, with
  the definition's ``instructions`` and few-shot ``demos`` (so an optimized predictor is
  portable without Python code);
* ``python``: the user's factory ``"pkg.mod:attr"`` (a callable returning a ``dspy.Module``,
  or a ``dspy.Module`` subclass called with no arguments), found on ``python.path``.

Any kind may carry a state file saved by DSPy's ``program.save``; it is loaded on top of the
built program exactly as ``module.load(path)`` would (so its demos and instructions replace
the definition's), from the very bytes whose digest was checked: a file that changed since
the host hashed it is refused, not half-trusted. JSON only, unless the definition sets
``allow_pickle``.

Every failure that the caller can fix (factory missing, state missing, not JSON, not this
program's state) is an :class:`InvalidRequest` saying what to do.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from typing import Any, Dict, Optional, Tuple

import dspy

from .definitions import ProgramSpec
from .errors import InvalidRequest
from .programs import Program
from .user_code import import_object


def build_program(spec: ProgramSpec, digest: str) -> Program:
    """Build the module ``spec`` describes, with its state loaded when it has one."""
    module = _python_module(spec) if spec.module == "python" else _signature_module(spec)
    if spec.state is not None:
        load_state(module, spec)
    inputs, required, accepts_any = _input_fields(spec, module)
    return Program(
        spec=spec,
        digest=digest,
        module=module,
        input_fields=inputs,
        output_fields=_output_fields(spec),
        required_inputs=required,
        accepts_any=accepts_any,
    )


def make_signature(spec: ProgramSpec) -> Any:
    """The DSPy signature class of a spec that has one."""
    fields: Dict[str, Any] = {}
    for field in spec.inputs:
        fields[field.name] = (field.annotation, _field(dspy.InputField, field.description))
    for field in spec.outputs:
        fields[field.name] = (field.annotation, _field(dspy.OutputField, field.description))
    try:
        return dspy.make_signature(
            fields, instructions=spec.instructions, signature_name=spec.name or "StringSignature"
        )
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"program {spec.program_id!r}: DSPy rejected the signature: {exc}") from exc


def _signature_module(spec: ProgramSpec) -> Any:
    signature = make_signature(spec)
    module = dspy.ChainOfThought(signature) if spec.module == "chain_of_thought" else dspy.Predict(signature)
    if spec.demos:
        demos = [dspy.Example(**demo) for demo in spec.demos]
        for predictor in module.predictors():
            predictor.demos = list(demos)
    return module


def _python_module(spec: ProgramSpec) -> Any:
    factory = import_object(spec.factory, "factory")
    if not callable(factory):
        raise InvalidRequest(
            f"factory {spec.factory!r} is a {type(factory).__name__}; it must be a dspy.Module subclass "
            "or a function returning a dspy.Module"
        )
    try:
        module = factory()
    except Exception as exc:
        raise InvalidRequest(
            f"factory {spec.factory!r} raised {type(exc).__name__} when called with no arguments: {exc}"
        ) from exc
    if not isinstance(module, dspy.Module):
        raise InvalidRequest(f"factory {spec.factory!r} returned a {type(module).__name__}, not a dspy.Module")
    return module


def load_state(module: Any, spec: ProgramSpec) -> None:
    """Load ``spec.state`` into ``module`` (see the module doc)."""
    state_ref = spec.state
    assert state_ref is not None
    path = state_ref.path
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        raise InvalidRequest(
            f"program {spec.program_id!r}: state file {path!r} does not exist (paths are resolved in the "
            "host's working directory; pass an absolute path)"
        ) from None
    except OSError as exc:
        raise InvalidRequest(f"program {spec.program_id!r}: cannot read state file {path!r}: {exc}") from None
    if state_ref.digest is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != state_ref.digest:
            raise InvalidRequest(
                f"program {spec.program_id!r}: state file {path!r} changed since its digest was taken "
                f"(expected {state_ref.digest[:12]}..., found {actual[:12]}...); create the program again"
            )
    state = _decode_state(data, spec)
    try:
        module.load_state(state)
    except Exception as exc:
        raise InvalidRequest(
            f"program {spec.program_id!r}: state file {path!r} does not fit this program "
            f"({type(exc).__name__}: {exc}); was it saved from the same program with program.save?"
        ) from exc


def _decode_state(data: bytes, spec: ProgramSpec) -> Dict[str, Any]:
    state_ref = spec.state
    assert state_ref is not None
    if state_ref.is_pickle:
        # parse_program refused a pickle without allow_pickle; this is the trusted case.
        import cloudpickle

        try:
            state = cloudpickle.loads(data)
        except Exception as exc:
            raise InvalidRequest(f"state file {state_ref.path!r} is not a readable pickle: {exc}") from exc
    else:
        try:
            state = json.loads(data)
        except ValueError as exc:
            raise InvalidRequest(
                f"state file {state_ref.path!r} is not JSON ({exc}); save the program with program.save('x.json')"
            ) from None
    if not isinstance(state, dict):
        raise InvalidRequest(f"state file {state_ref.path!r} holds a {type(state).__name__}, not DSPy's state object")
    return state


def _input_fields(spec: ProgramSpec, module: Any) -> Tuple[Tuple[str, ...], Tuple[str, ...], bool]:
    """(input names, required names, accepts any keyword) of a built program."""
    if spec.module != "python" or spec.inputs:
        names = tuple(field.name for field in spec.inputs)
        return names, names if spec.module == "python" else (), False
    try:
        parameters = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return (), (), True
    names, required, accepts_any = [], [], False
    for parameter in parameters:
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            accepts_any = True
        elif parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.append(parameter.name)
            if parameter.default is inspect.Parameter.empty:
                required.append(parameter.name)
    return tuple(names), tuple(required), accepts_any


def _output_fields(spec: ProgramSpec) -> Optional[Tuple[str, ...]]:
    declared = tuple(field.name for field in spec.outputs)
    if spec.module == "chain_of_thought":
        return ("reasoning", *declared)
    if spec.module == "python" and not declared:
        return None
    return declared


def check_inputs(program: Program, inputs: Dict[str, Any]) -> None:
    """Refuse inputs a ``python`` program's ``forward`` cannot take, naming them.

    Signature programs are left to DSPy (the host validated their inputs against the
    signature already); a user ``forward`` would fail with a bare ``TypeError`` instead.
    """
    if program.spec.module != "python":
        return
    missing = [name for name in program.required_inputs if name not in inputs]
    if missing:
        raise InvalidRequest(
            f"program {program.program_id!r} needs input(s) {', '.join(map(repr, missing))} "
            f"(its inputs: {', '.join(program.input_fields)})"
        )
    if not program.accepts_any:
        unknown = sorted(set(inputs) - set(program.input_fields))
        if unknown:
            raise InvalidRequest(
                f"program {program.program_id!r} takes no input(s) {', '.join(map(repr, unknown))} "
                f"(its inputs: {', '.join(program.input_fields) or 'none'})"
            )


def _field(factory: Any, description: Optional[str]) -> Any:
    return factory(desc=description) if description else factory()
