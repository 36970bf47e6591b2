#!/usr/bin/env bash
# Generation benchmark: lmflow-rs Generator against transformers generate, same model and machine.
#   scripts/bench_generate.sh [BATCH] [PROMPT_LEN] [NEW_TOKENS] [REPEATS]
# CARGO_PROFILE_FLAG=--release for a release build (default: dev profile, dependencies at opt-level 3).
# The model (random LLaMA, hidden 256, 4 layers) is created in target/bench-llama on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MODEL=target/bench-llama
ARGS=("${1:-1}" "${2:-128}" "${3:-64}" "${4:-3}")
HF=$("$PY" tests/fixtures/bench_generate.py "$MODEL" "${ARGS[@]}")
RS=$(cargo run -q ${CARGO_PROFILE_FLAG:-} -p lmflow-infer --example bench_generate -- "$MODEL" "${ARGS[@]}")
echo "transformers: $HF"
echo "lmflow-rs:    $RS"
"$PY" - "$HF" "$RS" <<'PYEOF'
import json, sys
hf, rs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for k in ("prefill_tok_s", "decode_tok_s"):
    print(f"{k}: lmflow-rs {rs[k]:.1f}, transformers {hf[k]:.1f}, ratio lmflow/transformers {rs[k] / hf[k]:.2f}")
PYEOF
