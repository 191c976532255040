#!/usr/bin/env bash
# what: vllm bench serve against vllm serve (default model): 1/16/128/512 clients, with and without speculation (n-gram k=4, or SPEC_CONFIG)
# Device suite: `vllm bench serve` against `vllm serve` with the default model (SmolLM2-135M,
# its GGUF joined by an earlier call on the same warm machine, see tools/device_common.sh):
# 1 / 16 / 128 / 512 concurrent clients, without and with n-gram speculation (k=4); the run at
# 512 also measures a light probe request's ITL while the 512 streams run. One JSON per run
# and the server logs in $OUT/serve_bench.tar.gz, a summary in $OUT/serve_bench_summary.json.
#
# Needs the server's wheels (fastapi, starlette, pydantic, pydantic-core, annotated-types,
# typing-inspection, typing-extensions, annotated-doc, opentelemetry-api, uvicorn) in .whl/,
# which tools/device_common.sh installs. Budget: <= 8 min in all (BUDGET_S), every step
# time-boxed; a step that would start past the budget is skipped, results so far are kept.
# CPU smoke run of the same script (tiny model, small sweep):
#   OUT=/tmp/sb SERVE_MODEL=<tiny model folder> MAX_MODEL_LEN=512 CONCURRENCY="1 4" OUTPUT_LEN=8 \
#     bash tools/device/suites/serve_bench.sh
set -uo pipefail
. tools/device_common.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
BUDGET_S=${BUDGET_S:-450}
T0=$(date +%s)
R=$PWD/gpu_results/serve_bench; mkdir -p "$R"
trap 'python3 tools/device/suites/serve_bench_summary.py "$R" > "$OUT/serve_bench_summary.json" 2>"$R/summary.err"; tar czf "$OUT/serve_bench.tar.gz" -C gpu_results serve_bench' EXIT
left() { echo $(( BUDGET_S - ($(date +%s) - T0) )); }

SERVE_MODEL=${SERVE_MODEL:-$SMOL_GGUF}
CONCURRENCY=${CONCURRENCY:-"1 16 128 512"}
OUTPUT_LEN=${OUTPUT_LEN:-128}
if [ "$SERVE_MODEL" = "$SMOL_GGUF" ] && [ ! -f "$SMOL_GGUF" ]; then
  if [ -f .gguf/smol.part00 ] && [ -f .gguf/smol.part01 ]; then join_gguf
  else echo "no $SMOL_GGUF and no carried halves: run the GGUF join call first"; exit 3; fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$R/gpu.txt" \
  2>/dev/null || echo "cpu" > "$R/gpu.txt"
cat "$R/gpu.txt"
python3 -c "import fastapi, uvicorn, pydantic, httpx; print('server deps ok')" || exit 4

PORT=8011
MODEL=SmolLM2-135M-Instruct
# Prompts: the project's "medium" set (code with repeated structure: where n-gram drafting
# finds matches), greedy, exactly 128 tokens out each.
BENCH_ARGS=(--base-url "http://127.0.0.1:$PORT" --model "$MODEL" --dataset-name medium
            --output-len "$OUTPUT_LEN" --ignore-eos --temperature 0 --disable-tqdm --seed 0)
MAX_C=$(echo $CONCURRENCY | tr ' ' '\n' | sort -n | tail -1)

start_server() {  # $1 = label, then extra `vllm serve` flags
  local label=$1; shift
  # max-num-seqs: every client plus the probe run at once (none waits in the queue).
  python3 -m vllm.entrypoints.cli serve "$SERVE_MODEL" --served-model-name "$MODEL" \
    --host 127.0.0.1 --port $PORT --max-model-len "${MAX_MODEL_LEN:-2048}" --max-num-seqs $(( MAX_C + 8 )) \
    --disable-uvicorn-access-log "$@" > "$R/server_$label.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 180); do
    python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" \
      2>/dev/null && { echo "== $(date +%T) server $label up"; return 0; }
    kill -0 $SERVER_PID 2>/dev/null || { echo "server $label died"; tail -30 "$R/server_$label.log"; return 1; }
    sleep 1
  done
  echo "server $label not up in 180 s"; tail -30 "$R/server_$label.log"; return 1
}

stop_server() {
  kill -TERM $SERVER_PID 2>/dev/null; wait $SERVER_PID 2>/dev/null; SERVER_PID=
}

run_sweep() {  # $1 = label (spec_off / spec_ngram4)
  local label=$1 c n t probe
  for c in $CONCURRENCY; do
    n=$(( c < 8 ? 8 : 2 * c )); t=$(( c == MAX_C ? 150 : 90 )); probe=()
    [ $c -eq $MAX_C ] && probe=(--probe-request --probe-output-len 64)
    if [ "$(left)" -lt 25 ]; then echo "== budget spent: skipping $label c=$c"; continue; fi
    [ "$t" -gt "$(left)" ] && t=$(left)
    step "$t" python3 -m vllm.entrypoints.cli bench serve "${BENCH_ARGS[@]}" \
      --num-prompts $n --max-concurrency $c "${probe[@]}" \
      --metadata "spec=$label" "device=$(head -1 "$R/gpu.txt" | cut -d, -f1)" \
      --result-file "$R/${label}_c$c.json" > "$R/${label}_c$c.log" 2>&1
    grep -E "Successful|Failed|Output token throughput|median_ttft|p99_ttft|median_itl|p99_itl|probe p99_itl" "$R/${label}_c$c.log"
  done
}

if start_server spec_off; then run_sweep spec_off; fi
stop_server
# SPEC_LABEL / SPEC_CONFIG: the speculative server (default n-gram k=4; e.g. SPEC_LABEL=spec_eagle4
# SPEC_CONFIG='{"method": "eagle", "num_speculative_tokens": 4}' for the shipped EAGLE head)
SPEC_LABEL=${SPEC_LABEL:-spec_ngram4}
SPEC_CONFIG=${SPEC_CONFIG:-'{"method": "ngram", "num_speculative_tokens": 4}'}
if [ "$(left)" -gt 90 ] && start_server "$SPEC_LABEL" --speculative-config "$SPEC_CONFIG"; then
  run_sweep "$SPEC_LABEL"
fi
stop_server
echo "== $(date +%T) done in $(( $(date +%s) - T0 )) s"
