# Sourced by tools/device/run.sh (and by any device script): environment, the carried wheels, a
# time-boxed step runner and the join of the default model's GGUF from its two carried halves.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:/tmp/site
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target /tmp/site .whl/*.whl
SMOL_GGUF=.gguf/smol.gguf
SMOL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

# step SECONDS CMD...: run CMD under a time box and report its exit code.
step() { local t=$1; shift; echo "== $(date +%T) $*"; timeout "$t" "$@"; echo "== rc=$?"; }

# join_gguf: .gguf/smol.part00 + .gguf/smol.part01 -> $SMOL_GGUF, checked; exits 3 if wrong.
join_gguf() {
  [ -f "$SMOL_GGUF" ] || cat .gguf/smol.part00 .gguf/smol.part01 > "$SMOL_GGUF"
  echo "$SMOL_SHA256  $SMOL_GGUF" | sha256sum -c - || exit 3
}

# have_gguf: true when the default model's GGUF is at $SMOL_GGUF (joined from its two halves if
# both are here, checked); false, without stopping anything, when it is not available.
have_gguf() {
  [ -f "$SMOL_GGUF" ] || { [ -f .gguf/smol.part00 ] && [ -f .gguf/smol.part01 ]; } || return 1
  join_gguf
}
