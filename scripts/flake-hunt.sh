#!/usr/bin/env bash
# Run the whole test suite N times and print, per test that failed at least once, how often and
# the first line of each distinct failure. A test that fails even once is a bug to understand.
#
#   scripts/flake-hunt.sh 20            # 20 full runs
#   scripts/flake-hunt.sh 20 --load     # ... with two CPU-burning processes beside them, as on a
#                                       #     shared CI box
#   scripts/flake-hunt.sh 5 --load -- tests/e2e   # pytest arguments after --
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:?usage: scripts/flake-hunt.sh N [--load] [-- PYTEST-ARGS]}
shift
load=0
if [ "${1:-}" = "--load" ]; then load=1; shift; fi
if [ "${1:-}" = "--" ]; then shift; fi
out=$(mktemp -d)
burners=()
stop_burners() { for pid in "${burners[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap stop_burners EXIT
if [ "$load" = 1 ]; then
  for _ in 1 2; do python3 -c 'while True: pass' & burners+=("$!"); done
fi
for i in $(seq 1 "$runs"); do
  start=$(date +%s)
  if python3 -m pytest -q -p no:cacheprovider --junitxml="$out/run-$i.xml" "$@" >"$out/run-$i.log" 2>&1; then
    result=passed
  else
    result=FAILED
  fi
  echo "run $i/$runs: $result in $(( $(date +%s) - start )) s ($(tail -n 1 "$out/run-$i.log"))"
done
python3 - "$out" "$runs" <<'PY'
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

out, runs = Path(sys.argv[1]), int(sys.argv[2])
failures: dict[str, list[str]] = defaultdict(list)
for report in sorted(out.glob("run-*.xml")):
    for case in ET.parse(report).iter("testcase"):
        for bad in list(case.iter("failure")) + list(case.iter("error")):
            name = f"{case.get('classname')}::{case.get('name')}"
            failures[name].append((bad.get("message") or "").splitlines()[0][:160] if bad.get("message") else "?")
print(f"\n{len(failures)} test(s) failed at least once in {runs} runs (logs: {out})")
for name, messages in sorted(failures.items(), key=lambda kv: -len(kv[1])):
    print(f"{len(messages):3d}/{runs}  {name}")
    for message in sorted(set(messages)):
        print(f"          {message}")
PY
