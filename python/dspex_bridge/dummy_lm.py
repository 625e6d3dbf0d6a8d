"""The ``dummy`` language model: deterministic, offline, and honest about DSPy's code paths.

Tests and offline runs need an LM that answers *any* signature with values of the declared
output types, while DSPy's real adapter still formats the prompt and parses the completion.
A canned-answer LM would skip the parsing that breaks in practice; a real LM needs a network.

How the dummy learns what to answer
-----------------------------------
The completion must contain exactly the output fields the adapter will parse, typed the way
the adapter expects. Reading them back out of the prompt text works for the common case but
is fragile (type names such as ``Literal['a', 'b']`` or ``dict[str, list[int]]`` have to be
re-parsed, and the text format differs per adapter). So the primary source is the adapter
itself: :class:`FormatRecorder` is a DSPy callback that sees every ``Adapter.format`` call
(DSPy fires ``on_adapter_format_start/end`` around it) and records the adapter instance, the
signature it formatted (after DSPy's own rewrites, so ``ChainOfThought``'s ``reasoning`` field
is in it) and the messages it produced. When the dummy is called with those very messages it
knows the exact signature and asks that same adapter to format the answer
(``format_assistant_message_content``), so the answer is in whatever format the active
adapter parses. Only when the dummy is called some other way (directly, or without the
recorder installed) does it fall back to reading the field names and type names from the
prompt text, answering in ``ChatAdapter`` format.

Determinism: every value is derived from a SHA-256 of the messages (never Python's ``hash``,
which is salted per process), so equal prompts give equal answers in any process.

Concurrency: the recorder keeps the last format in a context variable, so each request
thread (and each thread DSPy's ``ParallelExecutor`` starts) sees only its own adapter's
record; pending records are keyed by DSPy's per-call id.

What it was sent: with ``trace_path`` (``DSPEX_DUMMY_TRACE``) every call appends one JSON
line ``{"pid", "model": "dummy", "messages"}`` to that file with a single ``write`` on an
``O_APPEND`` descriptor, so lines from concurrent threads and workers never interleave and
host tests can count calls and read the prompts (demos included).

Usage: token counts are words (whitespace-separated) of the prompt and of the completion,
deterministic like the answers; cost is unknown (``None``).
"""

from __future__ import annotations

import ast
import contextvars
import enum
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import dspy
from dspy.utils.callback import BaseCallback

from .lm import DUMMY_MODEL
from .usage import record_call

_FIELD_MARKER = re.compile(r"`\[\[ ## (\w+) ## \]\]`(?: \(must be formatted as a valid Python ([^)]*)\))?")
# Characters that could forge an adapter marker (``[[ ## field ## ]]``) or break a line.
_UNSAFE_TEXT = re.compile(r"[\[\]#`{}\s]+")


@dataclass
class _Formatted:
    """What the adapter formatted most recently: enough to answer the LM call that follows."""

    adapter: Any
    signature: Any
    inputs: Dict[str, Any]
    messages: Any = None


_LAST_FORMAT: contextvars.ContextVar[Optional[_Formatted]] = contextvars.ContextVar(
    "dspex_dummy_last_format", default=None
)


class FormatRecorder(BaseCallback):
    """DSPy callback that records each adapter ``format`` call for :class:`DummyLM`.

    Install it once in ``dspy.settings.callbacks`` (the bridge does this for every program it
    runs). It only observes; it never changes what the adapter does.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending: Dict[str, _Formatted] = {}

    def on_adapter_format_start(self, call_id: str, instance: Any, inputs: Dict[str, Any]) -> None:
        self._pending[call_id] = _Formatted(instance, inputs.get("signature"), dict(inputs.get("inputs") or {}))

    def on_adapter_format_end(self, call_id: str, outputs: Any, exception: Optional[BaseException] = None) -> None:
        record = self._pending.pop(call_id, None)
        if record is not None and exception is None and record.signature is not None:
            record.messages = outputs
            _LAST_FORMAT.set(record)


#: The recorder the bridge installs; one instance so it can be found in the callback list.
FORMAT_RECORDER = FormatRecorder()


class DummyLM(dspy.BaseLM):
    """Deterministic offline LM that answers any signature with values of its output types.

    Values: ``str`` → a short sentence mentioning the input; ``int`` → 0..99; ``float`` →
    [0, 1); ``bool``; ``list[T]`` → 2 or 3 items; ``dict[str, T]`` → 2 entries;
    ``Optional[T]`` → a ``T``; ``Literal[...]`` → one of the options; pydantic models → their
    fields filled the same way. Anything else gets a string.
    """

    def __init__(self, trace_path: Optional[str] = None) -> None:
        # No cache and no retries: every call must exercise formatting and parsing, and a
        # dummy never fails transiently.
        super().__init__(model=DUMMY_MODEL, model_type="chat", cache=False, num_retries=0)
        self.trace_path = trace_path

    def forward(self, prompt: Optional[str] = None, messages: Optional[List[Dict[str, Any]]] = None, **kwargs: Any):
        """Answer one call with an OpenAI-shaped chat completion."""
        messages = messages if messages is not None else [{"role": "user", "content": prompt or ""}]
        if self.trace_path:
            append_trace(self.trace_path, messages)
        count = kwargs.get("n") or 1
        choices = []
        for index in range(count):
            text = complete(messages, variant=index)
            choices.append({"index": index, "finish_reason": "stop", "message": {"role": "assistant", "content": text}})
        prompt_tokens = sum(len(_content_text(m).split()) for m in messages)
        completion_tokens = sum(len(c["message"]["content"].split()) for c in choices)
        return {
            "id": "dummy-" + _digest(messages)[:16],
            "object": "chat.completion",
            "model": DUMMY_MODEL,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    async def aforward(
        self, prompt: Optional[str] = None, messages: Optional[List[Dict[str, Any]]] = None, **kwargs: Any
    ):
        """Async twin of :meth:`forward`; the dummy never blocks."""
        return self.forward(prompt=prompt, messages=messages, **kwargs)

    def update_history(self, entry: Dict[str, Any]) -> None:
        if record_call(self.model, entry):
            super().update_history(entry)


def append_trace(path: str, messages: Any) -> None:
    """Append one call's line to the trace file in a single ``O_APPEND`` write."""
    line = json.dumps({"pid": os.getpid(), "model": DUMMY_MODEL, "messages": messages}, default=str) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def complete(messages: List[Dict[str, Any]], variant: int = 0) -> str:
    """The completion text the dummy gives for ``messages``."""
    seed = _digest(messages) + (f"#{variant}" if variant else "")
    record = _LAST_FORMAT.get()
    if record is not None and (record.messages is messages or record.messages == messages):
        values = _Values(seed, _topic_from_inputs(record.inputs))
        outputs = {name: values.make(field.annotation, name) for name, field in record.signature.output_fields.items()}
        try:
            return record.adapter.format_assistant_message_content(record.signature, outputs)
        except NotImplementedError:
            return _chat_format(outputs)

    fields = _fields_from_prompt(messages)
    values = _Values(seed, _topic_from_messages(messages))
    if not fields:
        return values.make(str, "response")
    return _chat_format({name: values.make(annotation, name) for name, annotation in fields})


class _Values:
    """Generates typed values from a seed; each value's path keeps fields independent."""

    def __init__(self, seed: str, topic: str) -> None:
        self._seed = seed
        self._topic = topic

    def _number(self, path: str) -> int:
        digest = hashlib.sha256(f"{self._seed}\x00{path}".encode()).digest()
        return int.from_bytes(digest[:8], "big")

    def make(self, annotation: Any, path: str) -> Any:
        number = self._number(path)
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if annotation is bool:
            return number % 2 == 1
        if annotation is int:
            return number % 100
        if annotation is float:
            return (number % 1_000_000) / 1_000_000
        if origin is typing.Literal:
            return args[number % len(args)]
        if origin in (list, tuple, set, frozenset, typing.List, typing.Sequence):
            item = args[0] if args else str
            return [self.make(item, f"{path}[{index}]") for index in range(2 + number % 2)]
        if origin in (dict, typing.Dict, typing.Mapping):
            item = args[1] if len(args) == 2 else str
            return {f"key_{index + 1}": self.make(item, f"{path}.key_{index + 1}") for index in range(2)}
        if _is_union(origin):
            choices = [arg for arg in args if arg is not type(None)]
            return self.make(choices[0] if choices else str, path)
        if isinstance(annotation, enum.EnumMeta):
            members = list(annotation)
            return members[number % len(members)].value
        model_fields = getattr(annotation, "model_fields", None)
        if isinstance(annotation, type) and isinstance(model_fields, dict):
            return {name: self.make(info.annotation, f"{path}.{name}") for name, info in model_fields.items()}
        return self._sentence(path, number)

    def _sentence(self, path: str, number: int) -> str:
        label = path.split(".")[-1].split("[")[0].replace("_", " ").strip() or "value"
        return f"{label.capitalize()} {number % 0xFFFFFF:06x} about {self._topic}."


def _is_union(origin: Any) -> bool:
    if origin is typing.Union:
        return True
    # PEP 604 unions (``int | None``) have their own origin from Python 3.10 on.
    union_type = getattr(types, "UnionType", None)
    return union_type is not None and origin is union_type


def _chat_format(outputs: Dict[str, Any]) -> str:
    """Render outputs the way ``ChatAdapter`` expects them."""
    parts = []
    for name, value in outputs.items():
        text = value if isinstance(value, str) else json.dumps(value)
        parts.append(f"[[ ## {name} ## ]]\n{text}")
    parts.append("[[ ## completed ## ]]\n")
    return "\n\n".join(parts)


def _fields_from_prompt(messages: List[Dict[str, Any]]) -> List[Tuple[str, Any]]:
    """Output fields named in ChatAdapter's reminder in the last user message, if any."""
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        fields = []
        for name, type_name in _FIELD_MARKER.findall(_content_text(message)):
            if name != "completed":
                fields.append((name, _annotation_from_name(type_name) if type_name else str))
        return fields
    return []


def _annotation_from_name(type_name: str) -> Any:
    """Best-effort reading of a type name as DSPy prints it (``list[int]``, ``Literal['a']``)."""
    try:
        node = ast.parse(type_name.strip(), mode="eval").body
    except SyntaxError:
        return str
    return _annotation_from_node(node)


def _annotation_from_node(node: ast.AST) -> Any:
    simple = {"str": str, "int": int, "float": float, "bool": bool, "NoneType": type(None)}
    if isinstance(node, ast.Name):
        return simple.get(node.id, str)
    if not isinstance(node, ast.Subscript) or not isinstance(node.value, ast.Name):
        return str
    head = node.value.id
    inner = node.slice
    items = list(inner.elts) if isinstance(inner, ast.Tuple) else [inner]
    if head == "Literal":
        values = tuple(item.value for item in items if isinstance(item, ast.Constant))
        return typing.Literal[values] if values else str
    arguments = [_annotation_from_node(item) for item in items]
    if head in ("list", "List"):
        return list[arguments[0]]  # type: ignore[misc]
    if head in ("dict", "Dict") and len(arguments) == 2:
        return dict[str, arguments[1]]  # type: ignore[misc]
    if head in ("Optional", "Union"):
        choices = [arg for arg in arguments if arg is not type(None)]
        return choices[0] if choices else str
    return str


def _topic_from_inputs(inputs: Dict[str, Any]) -> str:
    for value in inputs.values():
        if isinstance(value, str) and value.strip():
            return _clean(value)
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
            return _clean(value[0])
    return "the request"


def _topic_from_messages(messages: List[Dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            text = re.sub(r"\[\[ ## \w+ ## \]\]", " ", _content_text(message))
            cleaned = _clean(text)
            if cleaned != "the request":
                return cleaned
    return "the request"


def _clean(text: str) -> str:
    """A short, marker-free excerpt; input text must never forge a field header."""
    words = _UNSAFE_TEXT.sub(" ", text).split()
    excerpt = " ".join(words)[:48].strip(" ,.;:'\"?!-")
    return excerpt or "the request"


def _content_text(message: Dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _digest(messages: Any) -> str:
    canonical = json.dumps(messages, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
