#!/usr/bin/env bash
# The README's first command, in a fresh virtual environment holding only what `pip install -e .`
# installs (no test extras): the default job must exit 0 with samples.png, loss.png (drawn with Pillow),
# the grids and checkpoints the README lists, and its closing "done:" line.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python -m venv "$work/venv"
"$work/venv/bin/pip" install -q torch==2.13.0
"$work/venv/bin/pip" install -q -e "$root"
cd "$work"
start=$(date +%s)
set +e
"$work/venv/bin/meanflow" train --set logging.progress=false > out.txt 2> err.txt
rc=$?
set -e
echo "fresh env: meanflow train exited $rc after $(( $(date +%s) - start )) s"
tail -n 3 out.txt
run="runs/00000-digits-meanflow"
fail() { echo "fresh env: FAILED: $1"; cat err.txt; exit 1; }
[ "$rc" -eq 0 ] || fail "exit code $rc"
[ -s "$run/samples.png" ] || fail "no samples.png"
[ -s "$run/loss.png" ] || fail "no loss.png"
for f in samples/step-0001000.png samples/step-0002000.png metrics.json \
         checkpoints/ckpt-0001000.safetensors checkpoints/ckpt-0002000.safetensors config.yaml config.json log.jsonl; do
  [ -s "$run/$f" ] || fail "no $f (the README lists it)"
done
tail -n 1 out.txt | grep -q "^done: 2000 steps" || fail "no closing line"
ls "$run"
echo "fresh env: OK"
