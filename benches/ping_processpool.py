"""Baseline for examples/bench_ping.rs: a trivial task through ProcessPoolExecutor(2).

python3 benches/ping_processpool.py [N]
"""
import sys
import time
from concurrent.futures import ProcessPoolExecutor


def ping(_):
    return {"status": "ok"}


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(ping, range(200)))  # warm up: workers started
        started = time.perf_counter()
        futures = [pool.submit(ping, i) for i in range(n)]
        for f in futures:
            f.result()
        elapsed = time.perf_counter() - started
    print(f"ProcessPoolExecutor(2): {n / elapsed:9.0f} tasks/s ({elapsed:.3f}s for {n})")


if __name__ == "__main__":
    main()
