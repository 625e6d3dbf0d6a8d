"""Handler module the ``worker`` mode of ``benches/bridge_concurrency.py`` loads into a real
dspex worker: one ``dspy.Predict("question -> answer")`` on the test LM server.

The LM is configured at import time (on the worker's main thread, before it serves), so the
request threads only read DSPy's settings. ``BENCH_API_BASE`` set: DSPy's native client
(``api_base=`` argument); unset: LiteLLM, which reads ``OPENAI_API_BASE``.
"""

import os

import dspy

from dspex_bridge import command

_api_base = os.environ.get("BENCH_API_BASE") or None
dspy.configure(lm=dspy.LM("openai/test", api_base=_api_base, api_key="x", cache=False))
_program = dspy.Predict("question -> answer")


@command
def bench_predict(args):
    return {"answer": _program(question=args["question"]).answer}
