"""Code in the user's working directory is data, never imported (issue 9, item 2).

The host starts workers the way these tests do: cwd = the bridge root, ``PYTHONSAFEPATH=1``,
``PYTHONPATH`` = the bridge root, and the user's directory in ``DSPEX_WORKDIR``, which the
worker enters before importing anything of the user's. A ``dspy.py`` or a ``dspex_bridge/``
planted there would announce itself by writing a marker file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from gate import runtime_env

from bridge_client import PYTHON_DIR, BridgeProcess

SpawnFn = Callable[..., BridgeProcess]

PLANTED = "import pathlib\npathlib.Path({marker!r}).write_text('imported {what}')\n"


def plant(workdir: Path, markers: Path) -> None:
    (workdir / "dspy.py").write_text(PLANTED.format(marker=str(markers / "dspy"), what="dspy.py"))
    package = workdir / "dspex_bridge"
    package.mkdir()
    (package / "__init__.py").write_text(PLANTED.format(marker=str(markers / "dspex_bridge"), what="dspex_bridge"))
    (package / "__main__.py").write_text(PLANTED.format(marker=str(markers / "main"), what="__main__"))
    (workdir / "runtime_handlers.py").write_text(PLANTED.format(marker=str(markers / "handlers"), what="handlers"))


def test_modules_planted_in_the_working_directory_are_never_imported(spawn: SpawnFn, tmp_path: Path) -> None:
    workdir, markers = tmp_path / "work", tmp_path / "markers"
    workdir.mkdir()
    markers.mkdir()
    plant(workdir, markers)
    (workdir / "data.txt").write_text("user data")
    worker = spawn("fds", env=runtime_env(DSPEX_WORKDIR=str(workdir)))
    assert worker.call("ping", {"initialization": True})["status"] == "ok"
    # User code still finds its relative files: the worker runs in the user's directory.
    assert worker.call("read_relative", {"path": "data.txt"}) == {"text": "user data", "cwd": str(workdir)}
    dspy_file = worker.call("dspy_origin")["file"]
    assert not dspy_file.startswith(str(workdir))
    assert "site-packages" in dspy_file
    assert sorted(os.listdir(markers)) == []


def test_the_worker_starts_from_the_bridge_root(spawn: SpawnFn, tmp_path: Path) -> None:
    # Without DSPEX_WORKDIR the worker stays where the host started it.
    worker = spawn("fds", env=runtime_env())
    (tmp_path / "data.txt").write_text("absolute")
    result = worker.call("read_relative", {"path": str(tmp_path / "data.txt")})
    assert result == {"text": "absolute", "cwd": PYTHON_DIR}


def test_a_missing_working_directory_is_an_environment_error(spawn: SpawnFn, tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    worker = spawn("fds", env={"DSPEX_WORKDIR": str(missing)})
    assert worker.wait() == 2
    log = worker.stderr_log()
    assert f"DSPEX_WORKDIR={str(missing)!r} cannot be entered" in log
    assert "No such file or directory" in log
