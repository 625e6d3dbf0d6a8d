"""A program's prediction as the plain JSON a result carries.

Signature programs (``predict``/``chain_of_thought``) come back as every predicted field,
the declared ones in their declared types (DSPy's adapter has already parsed and checked
them). A ``python`` program with an output signature is held to it the same way: each
declared field must be present and is validated (and coerced, as DSPy's adapters do) with
pydantic against its declared type; nothing else is returned. Without a signature every
field of the returned ``Prediction`` (or mapping) comes back as JSON.
"""

from __future__ import annotations

import enum
import functools
import math
from typing import Any, Dict, Mapping, Optional

from .definitions import ProgramSpec, type_text


def prediction_outputs(spec: ProgramSpec, prediction: Any) -> Dict[str, Any]:
    """The ``outputs`` object of a result for ``prediction`` of the program ``spec``."""
    if spec.module == "python" and spec.outputs:
        return _declared_outputs(spec, prediction)
    fields = _fields_of(spec, prediction)
    declared = {field.name: field.type_term for field in spec.outputs}
    return {str(name): to_json(value, declared.get(name)) for name, value in fields.items()}


def _fields_of(spec: ProgramSpec, prediction: Any) -> Dict[str, Any]:
    if hasattr(prediction, "keys") and hasattr(prediction, "__getitem__"):
        # dspy.Prediction / dspy.Example / any mapping
        return {name: prediction[name] for name in prediction.keys()}  # noqa: SIM118 - not always a dict
    model_dump = getattr(prediction, "model_dump", None)
    if callable(model_dump):
        return dict(model_dump(mode="json"))
    raise ValueError(
        f"program {spec.program_id!r} returned a {type(prediction).__name__}, not a dspy.Prediction or mapping; "
        "return dspy.Prediction(field=value, ...) from forward()"
    )


def _declared_outputs(spec: ProgramSpec, prediction: Any) -> Dict[str, Any]:
    fields = _fields_of(spec, prediction)
    outputs = {}
    for field in spec.outputs:
        if field.name not in fields:
            raise ValueError(
                f"program {spec.program_id!r} returned no {field.name!r}, which its output signature declares "
                f"(it returned: {', '.join(map(str, fields)) or 'nothing'})"
            )
        try:
            value = _adapter(field.annotation).validate_python(fields[field.name])
        except Exception as exc:  # pydantic.ValidationError, or a type pydantic cannot build
            raise ValueError(
                f"program {spec.program_id!r}: output {field.name!r} is not a valid {_type_name(field)}: {exc}"
            ) from None
        outputs[field.name] = to_json(value, field.type_term)
    return outputs


@functools.lru_cache(maxsize=256)
def _adapter(annotation: Any) -> Any:
    import pydantic

    return pydantic.TypeAdapter(annotation)


def _type_name(field: Any) -> str:
    return type_text(field.type_term)


def to_json(value: Any, type_term: Any = None) -> Any:
    """Convert a predicted value to plain JSON, honouring the declared type where known.

    A declared ``float`` comes back as a JSON number with a fractional part even when the
    value happens to be whole, so typed consumers never see an integer there.
    """
    if value is None:
        return None
    if type_term == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return _finite(float(value))
    if type_term == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(type_term, dict) and len(type_term) == 1:
        ((kind, inner),) = type_term.items()
        if kind == "list" and isinstance(value, (list, tuple)):
            return [to_json(item, inner) for item in value]
        if kind == "dict" and isinstance(value, Mapping):
            return {str(key): to_json(item, inner) for key, item in value.items()}
        if kind == "optional":
            return to_json(value, inner)
    if isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, Mapping):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(item) for item in value]
    if isinstance(value, enum.Enum):
        return to_json(value.value)
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):
        return to_json(model_dump(mode="json"))
    to_dict = getattr(value, "toDict", None)
    if callable(to_dict):
        return to_json(to_dict())
    return str(value)


def _finite(value: float) -> Optional[float]:
    # NaN and infinities are not JSON; the host would reject the whole frame.
    return value if math.isfinite(value) else None
