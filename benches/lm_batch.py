#!/usr/bin/env python3
"""Rows/s of `dspex run` on a real (local, OpenAI-compatible) LM endpoint, next to the two
ways one Python process runs a DSPy program concurrently: `Module.batch(num_threads=C)` and
`acall` under asyncio with C calls at once, at the same total concurrency C, in one run.

    benches/lm_batch.py --dspex target/release/dspex            # 400 rows, 300 ms and 1 s
    benches/lm_batch.py --dspex ... --rows 200 --delays 0.3

The endpoint is tests/fixtures/lm_server.py: every call answers after a fixed delay, so
the ideal is C / delay rows/s. dspex runs at its defaults with `--workers 2` (2 x 8 slots,
so C = 16); the Python baselines get the same C and DSPy's native client (`api_base=`),
the fastest client DSPy has. Start-up (imports, worker start) is excluded on both sides:
dspex's summary line reports rows/s after start-up, and the Python side times only the
batch. CPU per row: the dspex host process's own (`--report-cpu`), the Python process's
own for the baselines.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = os.path.join(ROOT, "tests", "fixtures", "lm_server.py")

BASELINE = r"""
import asyncio, json, resource, sys, time
import dspy
mode, api_base, rows, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
lm = dspy.LM("openai/test-model", api_base=api_base, api_key="x", cache=False, num_retries=0)
dspy.configure(lm=lm)
predict = dspy.Predict("question -> answer")
questions = [f"question number {i}" for i in range(rows)]
predict(question="warm up")
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
start, cpu0 = time.perf_counter(), cpu()
if mode == "batch":
    examples = [dspy.Example(question=q).with_inputs("question") for q in questions]
    out = predict.batch(examples, num_threads=concurrency, disable_progress_bar=True)
else:
    async def main():
        gate = asyncio.Semaphore(concurrency)
        async def one(q):
            async with gate:
                return await predict.acall(question=q)
        return await asyncio.gather(*(one(q) for q in questions))
    out = asyncio.run(main())
elapsed, used = time.perf_counter() - start, cpu() - cpu0
assert len(out) == rows and all(o is not None for o in out)
print(json.dumps({"rows_per_s": rows / elapsed, "cpu_ms_per_row": 1000 * used / rows}))
"""


def start_server(delay):
    server = subprocess.Popen(
        [sys.executable, SERVER, "--delay", str(delay)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    line = server.stdout.readline()
    port = int(line.split()[1])
    return server, f"http://127.0.0.1:{port}/v1"


def venv_python(dspex):
    out = subprocess.run([dspex, "setup"], capture_output=True, text=True, check=True).stdout
    return re.search(r"^python: (.*)$", out, re.M).group(1)


def run_dspex(dspex, api_base, rows, workers, tmp):
    config = os.path.join(tmp, "bench.toml")
    with open(config, "w") as f:
        f.write(f'[lm]\nmodel = "openai/test-model"\napi_base = "{api_base}"\ncache = "off"\n')
    source = os.path.join(tmp, "in.jsonl")
    with open(source, "w") as f:
        for i in range(rows):
            f.write(json.dumps({"id": i, "question": f"question number {i}"}) + "\n")
    out = subprocess.run(
        [dspex, "run", "-s", "question -> answer", "-i", source, "-o", os.path.join(tmp, "out.jsonl"),
         "--workers", str(workers), "--config", config, "--report-cpu"],
        capture_output=True, text=True, cwd=tmp,
    )
    if out.returncode != 0:
        raise SystemExit(f"dspex run failed:\n{out.stderr}")
    summary = out.stderr.strip().splitlines()[-1]
    rate = float(re.search(r"\(([\d.]+) rows/s", summary).group(1))
    cpu = float(re.search(r"= ([\d.]+) ms/row", summary).group(1))
    return {"rows_per_s": rate, "cpu_ms_per_row": cpu, "summary": summary}


def run_python(python, mode, api_base, rows, concurrency):
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    out = subprocess.run(
        [python, "-c", BASELINE, mode, api_base, str(rows), str(concurrency)],
        capture_output=True, text=True, env=env,
    )
    if out.returncode != 0:
        raise SystemExit(f"python {mode} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dspex", default=os.path.join(ROOT, "target", "release", "dspex"))
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--delays", default="0.3,1.0")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-concurrency", type=int, default=8, help="dspex's default")
    args = parser.parse_args()
    args.dspex = os.path.abspath(args.dspex)
    python = venv_python(args.dspex)
    concurrency = args.workers * args.worker_concurrency
    print(f"rows={args.rows} workers={args.workers} C={concurrency} cores={os.cpu_count()}")
    for delay in (float(d) for d in args.delays.split(",")):
        server, api_base = start_server(delay)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                dspex = run_dspex(args.dspex, api_base, args.rows, args.workers, tmp)
            batch = run_python(python, "batch", api_base, args.rows, concurrency)
            acall = run_python(python, "acall", api_base, args.rows, concurrency)
        finally:
            server.terminate()
            server.wait()
        ideal = concurrency / delay
        best = max(batch["rows_per_s"], acall["rows_per_s"])
        print(f"\ndelay {delay * 1000:.0f} ms (ideal {ideal:.1f} rows/s)")
        for name, r in (("dspex run", dspex), ("Module.batch", batch), ("acall+asyncio", acall)):
            print(f"  {name:<14} {r['rows_per_s']:7.1f} rows/s  {r['cpu_ms_per_row']:6.2f} ms CPU/row")
        print(
            f"  dspex / best Python = {dspex['rows_per_s'] / best:.2f}x, "
            f"dspex / ideal = {dspex['rows_per_s'] / ideal:.2f}x"
        )


if __name__ == "__main__":
    main()
