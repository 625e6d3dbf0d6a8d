#!/usr/bin/env bash
# Rows/s of `dspex run` (release build, dummy LM) next to plain Python doing the same DSPy
# Predict with the same dummy LM class, in the same session; plus the CPU time the dspex
# process itself used per row (its own getrusage, workers excluded).
#
#   benches/cli_vs_python.sh            # 2000 rows, 2 workers
#   ROWS=5000 WORKERS=4 benches/cli_vs_python.sh
#
# The Python baselines run with the managed venv's interpreter and the unpacked bridge
# (paths printed by `dspex setup`), so DSPy and DummyLM are exactly what the workers run.
set -euo pipefail

ROWS=${ROWS:-2000}
WORKERS=${WORKERS:-2}
repo=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cargo build --release --quiet --bin dspex --manifest-path "$repo/Cargo.toml"
bin=${CARGO_TARGET_DIR:-$repo/target}/release/dspex

"$bin" setup >"$tmp/setup.txt" 2>/dev/null
python=$(sed -n 's/^python: //p' "$tmp/setup.txt")
bridge=$(sed -n 's/^bridge: //p' "$tmp/setup.txt")

"$python" - "$ROWS" >"$tmp/in.jsonl" <<'PY'
import json, sys
for i in range(int(sys.argv[1])):
    print(json.dumps({"id": i, "question": f"What is the square of {i}?"}))
PY

echo "rows=$ROWS workers=$WORKERS python=$("$python" -c 'import platform; print(platform.python_version())') cores=$(nproc)"

# dspex: the summary line carries rows/s (start-up excluded) and, with DSPEX_REPORT_CPU,
# the dspex process's own user+sys CPU time (RUSAGE_SELF: its threads, not the workers).
start=$(date +%s.%N)
DSPEX_REPORT_CPU=1 "$bin" run --signature "question -> answer" --input "$tmp/in.jsonl" \
    --output "$tmp/out.jsonl" --workers "$WORKERS" 2>"$tmp/run.err"
end=$(date +%s.%N)
test "$(wc -l <"$tmp/out.jsonl")" -eq "$ROWS"
echo "dspex run:          $(grep -o '[0-9]* rows ok.*' "$tmp/run.err")"
echo "dspex run wall:     $("$python" -c "print(round($end - $start, 2))") s including Python start-up"

for args in "--mode batch" "--mode process_pool --chunksize 1" "--mode process_pool --chunksize 50"; do
    # shellcheck disable=SC2086
    PYTHONPATH="$bridge" "$python" "$repo/benches/python_baseline.py" \
        --input "$tmp/in.jsonl" --workers "$WORKERS" $args
done
