#!/usr/bin/env bash
# Run every benchmark (full length unless arguments such as --quick are given) and keep each report in
# bench/results/<name>.md. Run on a quiet machine. Exit status: non-zero if any benchmark missed a target.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/results
status=0
for name in verify http gateway cluster; do
  extra=()
  [ "$name" = gateway ] && extra=(--scale)
  echo "== ${name}_bench.py ${extra[*]} $*" >&2
  .venv/bin/python "bench/${name}_bench.py" "${extra[@]}" "$@" | tee "bench/results/${name}.md" || status=1
done
exit "$status"
