"""Scoring one row with a user metric, the way ``dspy.Evaluate`` does.

``dspex eval`` spreads a devset over the pool: each worker runs one row (``evaluate``
command) and scores it here; the host averages. For that mean to equal what
``dspy.Evaluate`` reports on the same program, devset and metric, each piece follows
DSPy 3.4.1's ``dspy/evaluate/evaluate.py``:

* the example is ``dspy.Example(**inputs, **labels).with_inputs(*inputs)``;
* the program is called as ``program(**example.inputs())`` and the metric as
  ``metric(example, prediction)`` (two arguments, exactly as ``Evaluate.process_item`` does;
  a metric written ``(example, pred, trace=None)`` works both there and in optimizers,
  which pass a third);
* a row whose program or metric raises scores ``failure_score`` = 0.0 and still counts;
* the reported score is a percentage of the whole devset::

      score = round(100 * sum(row scores, failed rows = 0) / len(devset), 2)

  (``True``/``False`` count as 1/0 in that sum). :func:`mean_score` is that formula.

``dspy.Evaluate`` also gives up, raising, once ``max_errors`` rows have failed
(``dspy.settings.max_errors``, 10 by default); dspex reports every row instead.
Here a metric's bool becomes 1.0/0.0 and a number a float; anything else (``None``, a
string, a ``dspy.Prediction`` of feedback) is the caller's mistake: :class:`InvalidRequest`
naming the metric.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, Optional

from .errors import InvalidRequest
from .user_code import import_callable


def load_metric(target: Any) -> Callable[..., Any]:
    """The metric function named ``"pkg.mod:fn"`` (imported once per worker)."""
    return import_callable(target, "metric")


def make_example(inputs: Dict[str, Any], labels: Dict[str, Any]) -> Any:
    """The ``dspy.Example`` a metric sees: inputs and labels, with the inputs marked."""
    import dspy

    overlap = sorted(set(inputs) & set(labels))
    if overlap:
        raise InvalidRequest(
            f"labels repeat input field(s) {', '.join(map(repr, overlap))}; a field is one or the other"
        )
    return dspy.Example(**inputs, **labels).with_inputs(*inputs)


def score_of(value: Any, metric_name: str) -> float:
    """A metric's return value as the row's score."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        score = float(value)
        if not math.isfinite(score):
            raise InvalidRequest(f"metric {metric_name!r} returned {value!r}; a score must be a finite number")
        return score
    number = getattr(value, "score", None)  # a dspy.Prediction(score=..., feedback=...) (GEPA-style)
    if isinstance(number, (int, float)) and not isinstance(number, bool) and math.isfinite(number):
        return float(number)
    raise InvalidRequest(
        f"metric {metric_name!r} returned a {type(value).__name__} ({value!r:.80}); "
        "a metric must return a bool or a number"
    )


def mean_score(scores: Iterable[Optional[float]]) -> float:
    """``dspy.Evaluate``'s reported score for per-row scores (``None`` = a failed row)."""
    values = [0.0 if score is None else float(score) for score in scores]
    if not values:
        raise ValueError("no rows to average")
    return round(100 * sum(values) / len(values), 2)
