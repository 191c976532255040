#!/usr/bin/env bash
# Run one device suite: bash tools/device/run.sh SUITE [ARGS...]   (list them: --list)
#
# A suite is any tools/device/suites/SUITE.sh. It runs from the repository root in a child bash
# with the device environment (tools/device_common.sh: PYTHONPATH, carried wheels, and the
# functions step / join_gguf / have_gguf), R=gpu_results/SUITE as its results folder and OUT as
# the folder that comes back. Whatever is in R when the suite ends, however it ends, is packed
# into $OUT/SUITE.tar.gz (EXIT trap): a suite that runs out of time keeps what finished.
# Exit status: the suite's; 2 for an unknown suite.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
SUITES=tools/device/suites

list_suites() {
  # the first "# what:" line of each suite says what it measures
  for f in "$SUITES"/*.sh; do
    printf '  %-18s %s\n' "$(basename "$f" .sh)" "$(sed -n 's/^# what: //p' "$f" | head -1)"
  done
}

if [ $# -lt 1 ] || [ "$1" = --list ] || [ "$1" = -h ] || [ "$1" = --help ]; then
  echo "usage: bash tools/device/run.sh SUITE [ARGS...]; suites:"
  list_suites
  [ $# -ge 1 ] && exit 0 || exit 2
fi
SUITE=$1; shift
if [ ! -f "$SUITES/$SUITE.sh" ]; then
  echo "unknown suite '$SUITE'; suites:" >&2
  list_suites >&2
  exit 2
fi

export OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
. tools/device_common.sh
export SMOL_GGUF SMOL_SHA256
export -f step join_gguf have_gguf
export R=$PWD/gpu_results/$SUITE
mkdir -p "$R"
# ncu reports are large and re-creatable from the CSVs next to them: not packed
trap 'find "$R" -name "*.ncu-rep" -delete; tar czf "$OUT/$SUITE.tar.gz" -C gpu_results "$SUITE";
      echo "== $(date +%T) $SUITE: results in $OUT/$SUITE.tar.gz"' EXIT
command -v nvidia-smi > /dev/null && nvidia-smi > "$R/nvidia_smi.txt" 2>&1
echo "== $(date +%T) suite $SUITE $*"
bash "$SUITES/$SUITE.sh" "$@"
