#!/usr/bin/env bash
# The 16-worker table of issue 18 ("Workers"), on a many-core machine with this checkout,
# in at most ~9 minutes (about 6 on 16 cores): the machine's ceiling (N independent
# processes doing clean + MinHash signatures + tokenize in memory vs 1), our default
# pipeline end to end with workers 1, 2, 4, 8, 16 (one thread each) on MB_X1 MB of unique
# text, the same at 16 workers on x10 that (1.28 GB by default), and a py-spy flame graph of
# the 16-worker run. Everything it writes goes under $OUT (default ./bench-device-out).
#
# Before: the shared corpus must be inside the checkout, in a git-ignored folder, because
# ../shared is not there on a machine that receives only the checkout. From the worktree:
#
#     mkdir -p .bench-data && cp -r ../shared/data/corpus ../shared/data/tokenizers .bench-data/
#     pip install py-spy          # or have it installed; without it the profile row says failed
#
# (.bench-data/ is in .gitignore; it is ~40 MB; the 1.4 GB of unique text is generated on the
# machine, from it, by scripts/bench_scale.py: copies of the corpus with their rare words
# permuted, so neither exact nor near dedup removes them.) Then:
#
#     OUT=/some/folder scripts/bench_device.sh            # MB_X1=128 FACTOR=10 by default
#
# Here (2 cores) it was tried small: MB_X1=2 FACTOR=10 MAX_WORKERS=2 scripts/bench_device.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/bench-device-out}
MB_X1=${MB_X1:-128}
FACTOR=${FACTOR:-10}
CEILING_MB=${CEILING_MB:-4}
MAX_WORKERS=${MAX_WORKERS:-$(nproc)}
DATA=${BENCH_DATA:-$PWD/.bench-data}
WORK=${WORK:-$(mktemp -d /tmp/bench-device-XXXXXX)}
mkdir -p "$OUT"
if [ ! -d "$DATA/corpus" ] || [ ! -f "$DATA/tokenizers/gpt2/tokenizer.json" ]; then
  echo "bench_device.sh: no corpus/tokenizer under $DATA; copy them first (see this script's header)" >&2
  exit 2
fi
# bench.py and bench_scale.py read $PREPROC_SHARED/data/{corpus,tokenizers}: a data/ link to $DATA.
mkdir -p "$WORK/shared"
ln -sfn "$DATA" "$WORK/shared/data"
export PREPROC_SHARED="$WORK/shared"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
  echo "# $(date -u +%FT%TZ) $(nproc) cores, $(python -c 'import os; print(os.getloadavg())') load"
  echo "# git $(git rev-parse --short HEAD 2>/dev/null || echo '?'): MB_X1=$MB_X1 FACTOR=$FACTOR MAX_WORKERS=$MAX_WORKERS"
} | tee "$OUT/bench-device.txt"
python scripts/bench_scale.py --work "$WORK/scale" --mb "$MB_X1" --factor "$FACTOR" --ceiling-mb "$CEILING_MB" \
  --max-workers "$MAX_WORKERS" --timeout 300 --profile-out "$OUT/pyspy-${MAX_WORKERS}workers.svg" \
  --json "$OUT/bench-scale.json" 2>&1 | tee -a "$OUT/bench-device.txt"
rm -rf "$WORK"
