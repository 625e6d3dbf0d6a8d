#!/usr/bin/env python3
"""Rows/s of `dspex run` on a real (local, OpenAI-compatible) LM endpoint, next to the two
ways one Python process runs a DSPy program concurrently: `Module.batch(num_threads=C)` and
`acall` under asyncio with C calls at once, at the same total concurrency C, in one run.

    benches/lm_batch.py --dspex target/release/dspex            # 400 rows, 300 ms and 1 s
    benches/lm_batch.py --dspex ... --rows 200 --delays 0.3
    benches/lm_batch.py --dspex ... --delays 0.3 --cap 4       # an endpoint that allows 4

The endpoint is tests/fixtures/lm_server.py: every call answers after a fixed delay, so
the ideal is C / delay rows/s. dspex runs at its defaults with `--workers 2` (2 x 8 slots,
so C = 16); the Python baselines get the same C and DSPy's native client (`api_base=`),
the fastest client DSPy has. Start-up (imports, worker start) is excluded on both sides:
dspex's summary line reports rows/s after start-up, and the Python side times only the
batch. CPU per row: the dspex host process's own (`--report-cpu`), the Python process's
own for the baselines.

With ``--cap N`` the endpoint answers 429 to any call above N at once, as a provider with a
concurrency limit does, and the ideal becomes N / delay. The Python baselines then keep
DSPy's default retries (``num_retries=3``, backing off on 429) and run to the end
(``max_errors`` = rows) so their failed rows can be counted; for each runner the table adds
the rows that failed and the 429s the server answered, and rows/s counts only the rows that
succeeded (a row that fails on a 429 fails fast).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = os.path.join(ROOT, "tests", "fixtures", "lm_server.py")

BASELINE = r"""
import asyncio, json, resource, sys, time
import dspy
mode, api_base, rows, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
num_retries = int(sys.argv[5])
lm = dspy.LM("openai/test-model", api_base=api_base, api_key="x", cache=False, num_retries=num_retries)
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
    out, _, errors = predict.batch(
        examples, num_threads=concurrency, max_errors=rows, return_failed_examples=True,
        disable_progress_bar=True,
    )
    failed = len(errors)
else:
    async def main():
        gate = asyncio.Semaphore(concurrency)
        async def one(q):
            async with gate:
                return await predict.acall(question=q)
        return await asyncio.gather(*(one(q) for q in questions), return_exceptions=True)
    out = asyncio.run(main())
    failed = sum(isinstance(o, BaseException) for o in out)
elapsed, used = time.perf_counter() - start, cpu() - cpu0
assert len(out) == rows
print(json.dumps({"rows_per_s": rows / elapsed, "cpu_ms_per_row": 1000 * used / rows, "failed": failed}))
"""


def start_server(delay, cap=None):
    command = [sys.executable, SERVER, "--delay", str(delay)]
    if cap is not None:
        command += ["--max-concurrency", str(cap)]
    server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    port = int(line.split()[1])
    return server, f"http://127.0.0.1:{port}/v1"


def server_429s(api_base):
    """The 429s the server has answered since the last call (which resets its counters)."""
    root = api_base.rsplit("/v1", 1)[0]
    with urllib.request.urlopen(f"{root}/stats") as answer:
        refused = json.load(answer)["status_429"]
    urllib.request.urlopen(urllib.request.Request(f"{root}/reset", data=b"{}", method="POST")).close()
    return refused


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
    # Exit code 1: some rows failed (counted below); anything else is the run's own failure.
    if out.returncode not in (0, 1):
        raise SystemExit(f"dspex run failed:\n{out.stderr}")
    summary = out.stderr.strip().splitlines()[-1]
    rate = float(re.search(r"\(([\d.]+) rows/s", summary).group(1))
    cpu = float(re.search(r"= ([\d.]+) ms/row", summary).group(1))
    failed = int(re.search(r"(\d+) failed", summary).group(1))
    return {"rows_per_s": rate, "cpu_ms_per_row": cpu, "failed": failed, "summary": summary}


def run_python(python, mode, api_base, rows, concurrency, num_retries):
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    out = subprocess.run(
        [python, "-c", BASELINE, mode, api_base, str(rows), str(concurrency), str(num_retries)],
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
    parser.add_argument("--cap", type=int, default=None, help="the server answers 429 above this many calls")
    args = parser.parse_args()
    args.dspex = os.path.abspath(args.dspex)
    python = venv_python(args.dspex)
    concurrency = args.workers * args.worker_concurrency
    capped = f" cap={args.cap} (429 above)" if args.cap else ""
    print(f"rows={args.rows} workers={args.workers} C={concurrency}{capped} cores={os.cpu_count()}")
    # Without a cap the baselines get no retries (nothing fails); with one, DSPy's default.
    num_retries = 3 if args.cap else 0
    for delay in (float(d) for d in args.delays.split(",")):
        server, api_base = start_server(delay, args.cap)
        runs = []
        try:
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(("dspex run", run_dspex(args.dspex, api_base, args.rows, args.workers, tmp)))
            runs[-1][1]["refused"] = server_429s(api_base)
            for name, mode in (("Module.batch", "batch"), ("acall+asyncio", "acall")):
                runs.append((name, run_python(python, mode, api_base, args.rows, concurrency, num_retries)))
                runs[-1][1]["refused"] = server_429s(api_base)
        finally:
            server.terminate()
            server.wait()
        for _, r in runs:
            # A row that failed (fast, on a 429) is no row done: rates count rows that succeeded.
            r["ok_per_s"] = r["rows_per_s"] * (args.rows - r.get("failed", 0)) / args.rows
        dspex, batch, acall = (r for _, r in runs)
        ideal = min(concurrency, args.cap or concurrency) / delay
        best = max(batch["ok_per_s"], acall["ok_per_s"])
        print(f"\ndelay {delay * 1000:.0f} ms (ideal {ideal:.1f} rows/s)")
        for name, r in runs:
            line = f"  {name:<14} {r['ok_per_s']:7.1f} rows/s  {r['cpu_ms_per_row']:6.2f} ms CPU/row"
            if args.cap:
                line += f"  {r['failed']:4d} rows failed  {r['refused']:5d} calls refused (429)"
            print(line)
        print(
            f"  dspex / best Python = {dspex['ok_per_s'] / best:.2f}x, "
            f"dspex / ideal = {dspex['ok_per_s'] / ideal:.2f}x"
        )


if __name__ == "__main__":
    main()
