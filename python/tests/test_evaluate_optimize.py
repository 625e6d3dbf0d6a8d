"""``evaluate`` and ``optimize`` in-process against real DSPy optimizers and the dummy LM."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import dspy
import pytest
from dspy_support import Ctx, definition, python_definition, read_trace

from dspex_bridge.dspy_commands import DspyCommands
from dspex_bridge.dummy_lm import FORMAT_RECORDER, DummyLM
from dspex_bridge.errors import InvalidRequest
from dspex_bridge.evaluate import mean_score

QUESTIONS = [
    "Paris is the capital of which country?",
    "Why do cats purr?",
    "Bees make what?",
    "Which planet is red?",
    "Rain falls from where?",
    "Snow is what colour?",
    "Owls hunt at what time?",
    "Wheat grows where?",
]


pytestmark = pytest.mark.usefixtures("user_code_on_path")


def rows() -> List[Dict[str, Any]]:
    return [{"inputs": {"question": q}, "labels": {"answer": f"{q.split()[0]} answer"}} for q in QUESTIONS]


# -- evaluate -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metric",
    ["user_programs:answer_mentions_question", "user_programs:answer_length_score", "user_programs:fails_on_odd"],
)
@pytest.mark.parametrize("module", ["predict", "python"])
def test_mean_of_evaluate_equals_dspy_evaluate(commands: DspyCommands, metric: str, module: str) -> None:
    import user_programs

    program = (
        definition("scored") if module == "predict" else python_definition("scored", "user_programs:QueryThenAnswer")
    )
    scores: List[Optional[float]] = []
    for row in rows():
        args = {"definition": program, "inputs": row["inputs"], "labels": row["labels"], "metric": metric}
        try:
            result = commands.evaluate(args)
        except ValueError:  # the metric raised: a failed row, as the host records it
            scores.append(None)
            continue
        assert set(result) == {"program_id", "outputs", "score", "usage"}
        assert isinstance(result["score"], float)
        scores.append(result["score"])

    devset = [dspy.Example(**row["inputs"], **row["labels"]).with_inputs("question") for row in rows()]
    student = dspy.Predict("question -> answer") if module == "predict" else user_programs.QueryThenAnswer()
    metric_fn = getattr(user_programs, metric.split(":")[1])
    with dspy.context(lm=DummyLM(), callbacks=[FORMAT_RECORDER]):
        expected = dspy.Evaluate(devset=devset, metric=metric_fn, num_threads=1, max_errors=100)(student)
    assert mean_score(scores) == expected.score
    if metric.endswith("fails_on_odd"):
        assert None in scores and 0.0 < expected.score < 100.0


def test_evaluate_scores_bools_as_one_or_zero_and_reports_outputs(commands: DspyCommands) -> None:
    args = {
        "definition": definition("verdict"),
        "inputs": {"question": "Paris is where?"},
        "labels": {"answer": "France"},
        "metric": "user_programs:always_right",
    }
    result = commands.evaluate(args)
    assert result["score"] == 1.0 and result["program_id"] == "verdict"
    assert set(result["outputs"]) == {"answer"} and result["usage"]["dummy"]["calls"] == 1


def test_mean_score_follows_dspy_evaluate() -> None:
    assert mean_score([1.0, 0.0, None, 1.0]) == 50.0
    assert mean_score([1.0, 1.0, 0.0]) == 66.67


@pytest.mark.parametrize(
    "metric, message",
    [
        ("user_programs:says_maybe", "metric 'user_programs:says_maybe' returned a str"),
        ("user_programs:NOT_CALLABLE", "is a int, not a callable"),
        ("user_programs:no_such_metric", "has no attribute 'no_such_metric'"),
        (None, "metric must be"),
    ],
)
def test_bad_metrics_are_invalid_requests(commands: DspyCommands, metric: Any, message: str) -> None:
    args = {"definition": definition("m"), "inputs": {"question": "q"}, "labels": {"answer": "a"}, "metric": metric}
    with pytest.raises(InvalidRequest, match=message):
        commands.evaluate(args)


# -- optimize ---------------------------------------------------------------------------------------


def optimize_args(out: Path, optimizer: str = "bootstrap_fewshot", **extra: Any) -> Dict[str, Any]:
    return {
        "definition": definition("opt"),
        "optimizer": optimizer,
        "trainset": rows(),
        "metric": "user_programs:always_right",
        "out": str(out),
        **extra,
    }


def test_bootstrap_fewshot_writes_a_state_that_changes_the_prompt_exactly_by_its_demos(
    commands: DspyCommands, trace: str, tmp_path: Path
) -> None:
    out = tmp_path / "optimized.json"
    ctx = Ctx(concurrency=4)
    result = commands.optimize(optimize_args(out, params={"max_bootstrapped_demos": 2, "max_labeled_demos": 0}), ctx)
    assert result["state_path"] == str(out)
    assert result["digest"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert (result["optimizer"], result["demos"], result["score"]) == ("bootstrap_fewshot", 2, None)
    assert result["usage"]["dummy"]["calls"] >= 2
    state = json.loads(out.read_text(encoding="utf-8"))
    demos = state["demos"]
    assert len(demos) == 2 and all(demo["augmented"] for demo in demos)

    # Progress came while it ran: at least one event per bootstrapped example, all JSON.
    metric_events = [event for event in ctx.events if event.get("stage") == "metric"]
    assert len(metric_events) >= 2
    assert all(event["kind"] == "progress" and event["optimizer"] == "bootstrap_fewshot" for event in ctx.events)
    assert ctx.events[0]["stage"] == "start" and ctx.events[-1]["stage"] == "done"

    # The optimized state, loaded into the same definition, changes the prompt by the demos only.
    Path(trace).unlink()
    inputs = {"question": "Which sea is dead?"}
    commands.execute_program({"session_id": "plain", "definition": definition("opt"), "inputs": inputs})
    with_state = {**definition("opt"), "state": {"path": result["state_path"], "digest": result["digest"]}}
    commands.execute_program({"session_id": "tuned", "definition": with_state, "inputs": inputs})
    plain, tuned = (entry["messages"] for entry in read_trace(trace))
    assert tuned[0] == plain[0] and tuned[-1] == plain[-1]
    inserted = tuned[1:-1]
    assert len(inserted) == 2 * len(demos) and len(plain) == 2
    for (user, assistant), demo in zip(zip(inserted[::2], inserted[1::2]), demos):
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert demo["question"] in user["content"] and demo["answer"] in assistant["content"]


def test_bootstrap_random_uses_the_workers_concurrency_and_reports_its_best_score(
    commands: DspyCommands, trace: str, tmp_path: Path
) -> None:
    out = tmp_path / "random.json"
    ctx = Ctx(concurrency=3)
    params = {"num_candidate_programs": 2, "max_bootstrapped_demos": 2, "max_labeled_demos": 2}
    result = commands.optimize(optimize_args(out, "bootstrap_random", params=params), ctx)
    assert result["score"] == 100.0  # always_right, as dspy.Evaluate reports it
    # Every candidate scores 100, so the first (zero-shot) one stays best: no demos.
    assert result["demos"] == len(json.loads(out.read_text(encoding="utf-8"))["demos"]) == 0
    assert "3 thread(s)" in ctx.events[0]["message"]
    # Calls made in DSPy's evaluation threads count too: usage matches every call the LM saw.
    assert result["usage"]["dummy"]["calls"] == len(read_trace(trace)) > 16
    assert len([event for event in ctx.events if event.get("stage") == "evaluate"]) >= 5  # one per candidate
    assert any(event.get("stage") == "log" for event in ctx.events) or len(ctx.events) > 10


def test_mipro_v2_runs_offline_on_the_dummy_lm(commands: DspyCommands, tmp_path: Path) -> None:
    out = tmp_path / "mipro.json"
    ctx = Ctx(concurrency=2)
    params = {"num_threads": 2}
    with pytest.raises(InvalidRequest, match="num_threads"):
        commands.optimize(optimize_args(out, "mipro_v2", params=params), ctx)
    args = optimize_args(
        out, "mipro_v2", metric="user_programs:answer_mentions_question", params={"max_labeled_demos": 2}
    )
    result = commands.optimize(args, ctx)
    assert result["optimizer"] == "mipro_v2" and isinstance(result["score"], float)
    state = json.loads(out.read_text(encoding="utf-8"))
    assert state["signature"]["instructions"]
    logs = [event["message"] for event in ctx.events if event.get("stage") == "log"]
    assert any("STEP 1" in message for message in logs) and any("Trial" in message for message in logs)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"optimizer": "gepa"}, "unknown optimizer 'gepa'"),
        ({"params": {"max_bootstraped_demos": 2}}, "takes no parameter\\(s\\) 'max_bootstraped_demos'; it takes:"),
        ({"params": {"metric": "x"}}, "params cannot set 'metric'"),
        ({"params": {"max_rounds": "many"}}, None),
        ({"valset": rows()[:2]}, "bootstrap_fewshot takes no valset"),
        ({"trainset": []}, "trainset must be a non-empty list"),
        ({"trainset": [{"question": "q"}]}, "must be an object with an 'inputs' object"),
        ({"out": "state.pkl"}, "must end in .json"),
        ({"out": "/no/such/dir/state.json"}, "does not exist"),
        ({"metric": "user_programs:NOT_CALLABLE"}, "not a callable"),
    ],
)
def test_bad_optimize_requests_fail_before_any_lm_call(
    commands: DspyCommands, trace: str, tmp_path: Path, change: Dict[str, Any], message: Optional[str]
) -> None:
    args = {**optimize_args(tmp_path / "x.json"), **change}
    if message is None:  # a value of the wrong type is DSPy's to reject, at run time
        with pytest.raises(TypeError):
            commands.optimize(args, Ctx())
        return
    with pytest.raises(InvalidRequest, match=message):
        commands.optimize(args, Ctx())
    assert read_trace(trace) == []
    assert not (tmp_path / "x.json").exists()
