#!/usr/bin/env bash
# Runs `lmflow bench` and its torch reference (bench/reference.py) on this machine, each
# measurement in its own process, and prints a markdown table of the ratios.
#
#   bench/compare.sh [--quick]                       # the default rows below
#   bench/compare.sh [--quick] train cpu-small lora  # one row: train SHAPE METHOD
#   bench/compare.sh [--quick] decode cpu-small 16   # one row: decode SHAPE BATCH
#
# Default rows: train cpu-small lora, train cpu-small full, decode cpu-small batch 1 and batch 16
# (prompt 32, 128 new tokens). --quick: 1 warm-up + 1 timed step, 16 new tokens, 1 repeat (smoke run).
# LMFLOW (default target/release/lmflow, built if missing) and PYTHON (default
# .venv-bench/bin/python, created from bench/requirements.txt if missing) pick the two sides.
# Every raw JSON line is appended to bench/results/<date>-<hostname>.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
ROW=()
for a in "$@"; do
    if [[ $a == --quick ]]; then QUICK=1; else ROW+=("$a"); fi
done

if [[ -z ${LMFLOW:-} ]]; then
    LMFLOW=target/release/lmflow
    [[ -x $LMFLOW ]] || cargo build --release -p lmflow-cli --locked
fi
if [[ -z ${PYTHON:-} ]]; then
    PYTHON=.venv-bench/bin/python
    if [[ ! -x $PYTHON ]]; then
        python3 -m venv .venv-bench
        .venv-bench/bin/pip install -r bench/requirements.txt
    fi
fi

if ((QUICK)); then
    TRAIN_FLAGS=(--steps 1 --warmup 1)
    DECODE_FLAGS=(--prompt 32 --new-tokens 16 --repeats 1)
else
    TRAIN_FLAGS=(--steps 5 --warmup 2)
    DECODE_FLAGS=(--prompt 32 --new-tokens 128 --repeats 3)
fi

# One row per line: the bench arguments both sides get.
if ((${#ROW[@]})); then
    case ${ROW[0]} in
        train) ROWS=("train --shape ${ROW[1]:-cpu-small} --method ${ROW[2]:-lora} ${TRAIN_FLAGS[*]}") ;;
        decode) ROWS=("decode --shape ${ROW[1]:-cpu-small} --batch ${ROW[2]:-1} ${DECODE_FLAGS[*]}") ;;
        *) echo "usage: $0 [--quick] [train SHAPE METHOD | decode SHAPE BATCH]" >&2; exit 2 ;;
    esac
else
    ROWS=(
        "train --shape cpu-small --method lora ${TRAIN_FLAGS[*]}"
        "train --shape cpu-small --method full ${TRAIN_FLAGS[*]}"
        "decode --shape cpu-small --batch 1 ${DECODE_FLAGS[*]}"
        "decode --shape cpu-small --batch 16 ${DECODE_FLAGS[*]}"
    )
fi

mkdir -p bench/results
RESULTS=bench/results/$(date +%F)-$(hostname).jsonl
PAIRS=$(mktemp)
trap 'rm -f "$PAIRS"' EXIT

# run SIDE CMD...: one JSON line on stdout, or an error line if the side failed.
run() {
    local side=$1 out
    shift
    echo "[$side] $*" >&2
    if out=$("$@" | tail -n 1) && [[ $out == "{"* ]]; then
        echo "$out"
    else
        echo "{\"impl\": \"$side\", \"error\": \"failed: $*\"}"
    fi
}

for row in "${ROWS[@]}"; do
    read -ra args <<<"$row"
    rs=$(run lmflow-rs "$LMFLOW" bench "${args[@]}")
    ref=$(run reference "$PYTHON" bench/reference.py "${args[@]}")
    printf '%s\n%s\n' "$rs" "$ref" >>"$RESULTS"
    printf '%s\t%s\t%s\n' "$row" "$rs" "$ref" >>"$PAIRS"
done

python3 - "$PAIRS" <<'PYEOF'
import json, sys

def fmt(x):
    return "—" if x is None else f"{x:.1f}"

print("load average (1, 5, 15 min) at the end:", *open("/proc/loadavg").read().split()[:3])
print("| work | lmflow-rs | reference | ratio |")
print("|---|---|---|---|")
for line in open(sys.argv[1]):
    row, rs, ref = line.rstrip("\n").split("\t")
    rs, ref = json.loads(rs), json.loads(ref)
    a = row.split()
    name = (f"train {a[2]} {a[4]}" if a[0] == "train"
            else f"decode {a[2]} b{a[a.index('--batch') + 1]}")
    keys = ["tok_s"] if a[0] == "train" else ["prefill_tok_s", "decode_tok_s"]
    for k in keys + ["peak_rss_mib"]:
        x, y = rs.get(k), ref.get(k)
        ratio = f"{x / y:.2f}" if x and y else "—"
        unit = "MiB" if k == "peak_rss_mib" else "tok/s"
        label = {"tok_s": "", "prefill_tok_s": " prefill", "decode_tok_s": " decode", "peak_rss_mib": " peak RSS"}[k]
        print(f"| {name}{label} ({unit}) | {fmt(x)} | {fmt(y)} | {ratio} |")
    for side in (rs, ref):
        if "error" in side:
            print(f"\n{side['impl']}: {side['error']}")
print()
print("Speed ratio = lmflow-rs tok/s / reference tok/s (higher is better for lmflow-rs);")
print("memory ratio = lmflow-rs peak RSS / reference peak RSS (lower is better).")
PYEOF
echo "raw JSON lines appended to $RESULTS"
