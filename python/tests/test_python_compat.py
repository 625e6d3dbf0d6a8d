"""The bridge supports Python 3.9+; only 3.11 runs here, so check the syntax level statically."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dspex_bridge"
SOURCES = sorted(PACKAGE.glob("*.py")) + [Path(__file__).resolve().parent / "fixtures" / "legacy_stdio_bridge.py"]


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: path.name)
def test_source_parses_as_python_3_9(path: Path) -> None:
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))


def test_every_module_defers_postponed_annotations() -> None:
    # PEP 604/585 annotations in signatures would fail at import time on 3.9 without this.
    for path in sorted(PACKAGE.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        if "def " in source and "->" in source:
            assert "from __future__ import annotations" in source, path.name
