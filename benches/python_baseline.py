"""Plain-Python baselines for `benches/cli_vs_python.sh`: the same DSPy Predict with the same
dummy LM that `dspex run` uses, driven by DSPy's own `Module.batch` (threads) or by
`concurrent.futures.ProcessPoolExecutor`.

Run with the managed venv's interpreter and the bridge on PYTHONPATH (the shell script does
this), so DSPy's version and the LM class are exactly the ones the dspex workers run.

Prints one JSON object: rows, mode, seconds for the rows alone, rows/s, and the start-up
seconds (importing DSPy, starting worker processes) that came before.
"""

import argparse
import json
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor

_PROGRAM = None


def _setup():
    """Configure DSPy the way the dspex bridge does for the dummy LM; return a Predict."""
    global _PROGRAM
    if _PROGRAM is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        import dspy
        from dspex_bridge.dummy_lm import FORMAT_RECORDER, DummyLM

        dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
        dspy.configure(lm=DummyLM(), callbacks=[FORMAT_RECORDER])
        _PROGRAM = dspy.Predict("question -> answer")
    return _PROGRAM


def _answer(question):
    return _setup()(question=question).answer


def _questions(path):
    with open(path, encoding="utf-8") as rows:
        return [json.loads(line)["question"] for line in rows if line.strip()]


def run_batch(questions, workers):
    started = time.perf_counter()
    program = _setup()
    import dspy

    ready = time.perf_counter()
    examples = [dspy.Example(question=q).with_inputs("question") for q in questions]
    results = program.batch(examples, num_threads=workers, disable_progress_bar=True)
    done = time.perf_counter()
    assert len(results) == len(questions) and all(r.answer for r in results)
    return ready - started, done - ready


def run_process_pool(questions, workers, chunksize):
    started = time.perf_counter()
    with ProcessPoolExecutor(workers, initializer=_setup) as pool:
        # Warm every worker (import DSPy, build the program) before timing the rows.
        list(pool.map(_answer, ["warm-up"] * workers * 2, chunksize=1))
        ready = time.perf_counter()
        answers = list(pool.map(_answer, questions, chunksize=chunksize))
        done = time.perf_counter()
    assert len(answers) == len(questions) and all(answers)
    return ready - started, done - ready


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mode", choices=["batch", "process_pool"], required=True)
    parser.add_argument("--chunksize", type=int, default=1)
    args = parser.parse_args()
    questions = _questions(args.input)
    if args.mode == "batch":
        startup, seconds = run_batch(questions, args.workers)
        label = f"Module.batch(num_threads={args.workers})"
    else:
        startup, seconds = run_process_pool(questions, args.workers, args.chunksize)
        label = f"ProcessPoolExecutor({args.workers}), chunksize={args.chunksize}"
    print(
        json.dumps(
            {
                "mode": label,
                "rows": len(questions),
                "seconds": round(seconds, 3),
                "rows_per_s": round(len(questions) / seconds, 1),
                "startup_s": round(startup, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
