#!/usr/bin/env bash
# Device call B: join the default model's GGUF (halves carried in two calls), check its sha256,
# then the SmolLM2 benchmarks. Time-boxed steps; results in $OUT/b.tar.gz (EXIT trap).
set -uo pipefail
. tools/device_common.sh
join_gguf
G=$SMOL_GGUF
R=$PWD/gpu_results/b; mkdir -p "$R"
trap 'tar czf "$OUT/b.tar.gz" -C gpu_results b' EXIT
step 150 python3 tools/benchmarks/bench_decode.py --model "$G" --parts a,c --output "$R/bench_decode_smollm2.json" > "$R/bench_decode_smollm2.log" 2>&1; grep -E "^\[(a|c)\]|Error" "$R/bench_decode_smollm2.log"
step 200 python3 tools/benchmarks/bench_spec.py --model "$G" --hf --output "$R/bench_spec.json" > "$R/bench_spec.log" 2>&1; grep -E "tok/s|Error" "$R/bench_spec.log" | tail -40
step 200 python3 tools/benchmarks/bench_nwor.py --model "$G" --models smollm2 --output "$R/bench_nwor_smollm2.json" > "$R/bench_nwor_smollm2.log" 2>&1; grep -E "^(smollm2|SmolLM2)|Error" "$R/bench_nwor_smollm2.log"
