#!/usr/bin/env python3
"""CPU time one dspex worker spends per `execute_program` row, with no host in the way.

    benches/worker_cpu.py --dspex target/release/dspex                 # 5000 rows, 3 runs
    benches/worker_cpu.py --dspex target/release/dspex --bridge DIR    # another bridge tree

The requests (the frames `dspex run` sends for `question -> answer` on the dummy LM, digest
included) are written to a file first; a real worker process reads them from that file on
fd 3 and writes its responses to another file on fd 4, so nothing it does waits on a pipe
or a host. The worker's CPU (user + system, from its rusage) for N rows minus its CPU for
0 rows, over N, is its own cost per row: DSPy's call plus the bridge's request path. Each
run is printed, with `concurrency` 1 and the default 8 side by side; compare two bridge
trees (`--bridge`) in one session, alternating, rather than across sessions.
"""

import argparse
import fcntl
import json
import os
import resource
import subprocess
import sys
import tempfile

DEFINITION = {
    "program_id": "bench",
    "module": "predict",
    "signature": {
        "name": None,
        "instructions": None,
        "inputs": [{"name": "question", "type": "str", "desc": None, "prefix": None}],
        "outputs": [{"name": "answer", "type": "str", "desc": None, "prefix": None}],
    },
}


def frame(request_id, command, args):
    body = json.dumps({"id": request_id, "command": command, "args": args, "timestamp": "2026-01-01T00:00:00Z"})
    return protocol.encode_frame(body.encode())


def write_requests(path, rows):
    with open(path, "wb") as out:
        out.write(frame(0, "ping", {"initialization": True}))
        for i in range(rows):
            args = {
                "program_id": "bench",
                "definition": DEFINITION,
                "digest": "bench-digest",
                "inputs": {"question": f"What is the square of {i}?"},
            }
            out.write(frame(i + 1, "execute_program", args))


def worker_cpu(python, bridge, requests, responses, concurrency):
    """CPU seconds a worker used to answer every frame in ``requests``."""
    env = dict(
        os.environ,
        PYTHONPATH=bridge,
        DSPEX_TRANSPORT="fds",
        DSPEX_WORKER_CONCURRENCY=str(concurrency),
        DSPEX_LM=json.dumps({"model": "dummy"}),
        DSPEX_PRELOAD_DSPY="1",
        DSPEX_LOG_LEVEL="error",
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(requests, "rb") as inp, open(responses, "wb") as out:
        # The worker takes its streams on fds 3 and 4 (moved out of the way first, in case
        # either file already is 3 or 4).
        def streams():
            high_in = fcntl.fcntl(inp.fileno(), fcntl.F_DUPFD, 10)
            high_out = fcntl.fcntl(out.fileno(), fcntl.F_DUPFD, 10)
            for high, fd in ((high_in, 3), (high_out, 4)):
                os.dup2(high, fd)
                os.set_inheritable(fd, True)

        child = subprocess.run(
            [python, "-m", "dspex_bridge", "--mode", "pool-worker", "--worker-id", "bench"],
            env=env,
            close_fds=False,
            preexec_fn=streams,
            stderr=subprocess.DEVNULL,
        )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if child.returncode != 0:
        sys.exit(f"worker exited with {child.returncode}")
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def check_answers(responses, rows):
    count = 0
    with open(responses, "rb") as stream:
        while (payload := protocol.read_frame(stream)) is not None:
            reply = json.loads(payload)
            assert reply["success"], reply
            count += 1
    assert count == rows + 1, f"{count} answers for {rows} rows and a ping"


def setup_paths(dspex):
    out = subprocess.run([dspex, "setup"], check=True, capture_output=True, text=True).stdout
    paths = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    return paths["python"], paths["bridge"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dspex", required=True, help="a dspex binary (for the managed venv and bridge)")
    parser.add_argument("--bridge", action="append", help="bridge tree(s) to compare (default: dspex's own)")
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    python, bridge = setup_paths(args.dspex)
    bridges = args.bridge or [bridge]
    # The frames are the bridge's own (stdlib only, so this interpreter can import it).
    global protocol
    sys.path.insert(0, bridges[0])
    from dspex_bridge import protocol
    with tempfile.TemporaryDirectory() as tmp:
        empty, full, responses = (os.path.join(tmp, name) for name in ("empty.bin", "full.bin", "out.bin"))
        write_requests(empty, 0)
        write_requests(full, args.rows)
        for run in range(args.runs):
            for tree in bridges:
                for concurrency in (1, 8):
                    base = worker_cpu(python, tree, empty, responses, concurrency)
                    total = worker_cpu(python, tree, full, responses, concurrency)
                    check_answers(responses, args.rows)
                    per_row = 1000 * (total - base) / args.rows
                    result = {"run": run, "bridge": tree, "concurrency": concurrency, "cpu_ms_per_row": round(per_row, 3)}
                    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
