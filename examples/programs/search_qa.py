"""A two-step DSPy program, its metric, and nothing dspex-specific: plain DSPy code.

``SearchThenAnswer`` first writes a search query for the question, then answers from the
question and the query. A real program would call a retriever between the two steps (a
search API, a vector store); this one stays offline so the example runs anywhere with the
``dummy`` LM.

dspex finds this module through ``python.path`` (see ``dspex.toml`` next to it) and builds
the program by calling ``SearchThenAnswer()`` in each worker.
"""

from __future__ import annotations

import dspy


class SearchThenAnswer(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.write_query = dspy.Predict("question -> query")
        self.answer = dspy.ChainOfThought("question, query -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        query = self.write_query(question=question).query
        # ... a retriever would fetch passages for `query` here ...
        answer = self.answer(question=question, query=query).answer
        return dspy.Prediction(query=query, answer=answer)


def mentions_subject(example: dspy.Example, prediction: dspy.Prediction, trace: object = None) -> bool:
    """Whether the answer names the row's ``subject`` label.

    With a real LM this asks "is the answer about the right thing". The ``dummy`` LM echoes
    the start of the question, so here it holds for questions that name their subject early:
    a deterministic score that is neither 0 nor 100.
    """
    return example.subject.lower() in prediction.answer.lower()
