"""Threads or asyncio for the bridge's concurrent requests: rows/s and CPU per LM call.

A dspex worker runs several requests at once because real LM calls are waits. Two designs
were on the table (issue 7, item 1): a pool of threads running the synchronous program, or
an event loop awaiting DSPy's ``module.acall``. This measures, against the test LM server
(``tests/fixtures/lm_server.py``, fixed delay), one ``dspy.Predict("question -> answer")``:

* ``threads``: a ``ThreadPoolExecutor(C)`` calling the program, in one process;
* ``asyncio``: ``await program.acall(...)`` under a semaphore of C, in one process;
* ``worker``: a real dspex worker (``python -m dspex_bridge``, ``DSPEX_WORKER_CONCURRENCY=C``)
  fed by a client that keeps C requests in flight; its CPU is the worker process's alone.

for each LM client: DSPy's native client (``api_base=`` argument) and LiteLLM (address in
``OPENAI_API_BASE``). Every configuration runs in a fresh process, after a warm-up of C
calls, so imports and connection set-up are not counted. CPU per call is user+system time
of that process (all its threads) over the rows.

Run (about 80 s on 2 cores)::

    /root/.cache/dspex/venvs/<hash>/bin/python benches/bridge_concurrency.py \\
        [--delay 0.3] [--rows-per-slot 12] [--concurrency 8 16] [--clients native litellm]

Results on the 2-core development machine, shared with other work (DSPy 3.4.1, Python
3.11.7, delay 0.3 s, 12 rows per slot, so 96 rows at C=8 and 192 at C=16; ideal = C / delay;
two runs agreed within 2 %):

    client     C  mode      rows/s  ideal % ideal cpu ms/call
    native     8  threads     25.9   26.7     97%        2.34
    native     8  asyncio     24.9   26.7     93%        2.70
    native     8  worker      25.7   26.7     97%        2.50
    native    16  threads     51.2   53.3     96%        2.04
    native    16  asyncio     48.4   53.3     91%        2.75
    native    16  worker      51.1   53.3     96%        2.24
    litellm    8  threads     25.1   26.7     94%        6.18
    litellm    8  asyncio     23.8   26.7     89%        5.41
    litellm    8  worker      25.0   26.7     94%        5.73
    litellm   16  threads     46.9   53.3     88%        5.86
    litellm   16  asyncio     43.7   53.3     82%        5.37
    litellm   16  worker      45.9   53.3     86%        6.56

Threads matched or beat asyncio on rows/s everywhere, and on CPU with DSPy's native client
(the one the bridge uses when ``api_base`` is given); with LiteLLM asyncio saved ~0.5 ms of
6 per call. Asyncio would also need every user module to implement ``aforward`` (most define
only ``forward``) and user ``@command`` functions to run in threads anyway, so the bridge
uses threads. The ``worker`` rows show what the bridge's framing and thread hand-off add on
top of plain threads: nothing measurable in rows/s, ~0.1-0.2 ms CPU per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON_DIR = os.path.join(REPO, "python")
LM_SERVER = os.path.join(REPO, "tests", "fixtures", "lm_server.py")
BENCHES = os.path.dirname(os.path.abspath(__file__))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def questions(count: int, offset: int = 0) -> list:
    return [f"What is the square of {index}?" for index in range(offset, offset + count)]


def make_program(client: str, api_base: str):
    import dspy

    if client == "native":
        lm = dspy.LM("openai/test", api_base=api_base, api_key="x", cache=False)
    else:
        os.environ["OPENAI_API_BASE"] = api_base
        lm = dspy.LM("openai/test", api_key="x", cache=False)
    dspy.configure(lm=lm)
    return dspy.Predict("question -> answer")


def run_threads(client: str, api_base: str, concurrency: int, rows: int) -> dict:
    program = make_program(client, api_base)
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda q: program(question=q).answer, questions(concurrency, rows)))
        cpu, started = cpu_seconds(), time.perf_counter()
        answers = list(pool.map(lambda q: program(question=q).answer, questions(rows)))
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    assert len(answers) == rows and all(answers)
    return {"seconds": seconds, "cpu": cpu}


def run_asyncio(client: str, api_base: str, concurrency: int, rows: int) -> dict:
    program = make_program(client, api_base)

    async def run_all(batch: list) -> list:
        gate = asyncio.Semaphore(concurrency)

        async def one(question: str) -> str:
            async with gate:
                return (await program.acall(question=question)).answer

        return await asyncio.gather(*(one(question) for question in batch))

    async def measured() -> dict:
        await run_all(questions(concurrency, rows))
        cpu, started = cpu_seconds(), time.perf_counter()
        answers = await run_all(questions(rows))
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        assert len(answers) == rows and all(answers)
        return {"seconds": seconds, "cpu": cpu}

    return asyncio.run(measured())


def process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_worker(client: str, api_base: str, concurrency: int, rows: int) -> dict:
    sys.path[:0] = [os.path.join(PYTHON_DIR, "tests")]
    from bridge_client import BridgeProcess

    env = {
        "DSPEX_WORKER_CONCURRENCY": str(concurrency),
        "DSPEX_HANDLERS": "bridge_concurrency_handlers",
        "DSPEX_PYTHON_PATH": BENCHES,
        "DSPEX_LOG_LEVEL": "WARNING",
    }
    if client == "native":
        env["BENCH_API_BASE"] = api_base
    else:
        env["OPENAI_API_BASE"] = api_base
    worker = BridgeProcess("fds", env=env)
    try:
        worker.call("ping", {"initialization": True})

        def pipelined(batch: list) -> None:
            pending = iter(batch)
            in_flight = 0
            for question in pending:
                worker.send("bench_predict", {"question": question})
                in_flight += 1
                if in_flight == concurrency:
                    break
            while in_flight:
                response = worker.recv()
                assert response["success"], response
                in_flight -= 1
                for question in pending:
                    worker.send("bench_predict", {"question": question})
                    in_flight += 1
                    break

        pipelined(questions(concurrency, rows))
        cpu, started = process_cpu(worker.process.pid), time.perf_counter()
        pipelined(questions(rows))
        seconds, cpu = time.perf_counter() - started, process_cpu(worker.process.pid) - cpu
    finally:
        worker.close()
    return {"seconds": seconds, "cpu": cpu}


MODES = {"threads": run_threads, "asyncio": run_asyncio, "worker": run_worker}


def child(args: argparse.Namespace) -> None:
    result = MODES[args.mode](args.client, args.api_base, args.child_concurrency, args.rows)
    sys.stdout.write(json.dumps(result) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delay", type=float, default=0.3)
    parser.add_argument("--rows-per-slot", type=int, default=12)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--clients", nargs="+", default=["native", "litellm"], choices=["native", "litellm"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    # Internal: one measurement in a fresh process.
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--api-base", help=argparse.SUPPRESS)
    parser.add_argument("--child-concurrency", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        child(args)
        return

    server = subprocess.Popen(
        [sys.executable, LM_SERVER, "--delay", str(args.delay)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    port = int(server.stdout.readline().split()[1])
    api_base = f"http://127.0.0.1:{port}/v1"
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONPATH": PYTHON_DIR}
    print(f"delay {args.delay}s, {args.rows_per_slot} rows per slot, {os.cpu_count()} cores")
    print(f"{'client':8} {'C':>3}  {'mode':8} {'rows/s':>7} {'ideal':>6} {'% ideal':>7} {'cpu ms/call':>11}")
    try:
        for client in args.clients:
            for concurrency in args.concurrency:
                rows = concurrency * args.rows_per_slot
                for mode in args.modes:
                    output = subprocess.run(
                        [
                            sys.executable,
                            __file__,
                            "--mode",
                            mode,
                            "--client",
                            client,
                            "--api-base",
                            api_base,
                            "--child-concurrency",
                            str(concurrency),
                            "--rows",
                            str(rows),
                        ],
                        env=env,
                        check=True,
                        capture_output=True,
                        text=True,
                    ).stdout
                    result = json.loads(output.strip().splitlines()[-1])
                    rate = rows / result["seconds"]
                    ideal = concurrency / args.delay
                    print(
                        f"{client:8} {concurrency:>3}  {mode:8} {rate:7.1f} {ideal:6.1f} {100 * rate / ideal:6.0f}% "
                        f"{1000 * result['cpu'] / rows:11.2f}",
                        flush=True,
                    )
    finally:
        server.stdin.close()
        server.wait()


if __name__ == "__main__":
    main()
