#!/usr/bin/env bash
# `make loadtest`: start the service on this machine on the synthetic demo bundle (built first when
# missing), run the open-loop load test against it, stop the service. About 1 minute once the bundle
# exists. Everything is loopback; histories live in the in-process store unless SIDREC_REDIS_URL is set.
#
# Environment: PY (python), BUNDLE (artifacts/demo/bundle), PORT (8765), RATES (5,10,20,40),
# STEP_SECONDS (10), REPORT (runs/loadtest/report.json), DATA (a prepared dataset whose test users'
# histories drive the requests; default: random histories over the catalogue).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PY:-python3}"
BUNDLE="${BUNDLE:-artifacts/demo/bundle}"
PORT="${PORT:-8765}"
REPORT="${REPORT:-runs/loadtest/report.json}"
mkdir -p "$(dirname "$REPORT")"

if [ ! -f "$BUNDLE/manifest.json" ]; then
  echo "loadtest: no bundle at $BUNDLE; building the synthetic demo bundle first"
  "$PY" -m training pipeline --source synthetic --out "$(dirname "$BUNDLE")"
fi

export SIDREC_API_KEY="${SIDREC_API_KEY:-loadtest-$("$PY" -c 'import secrets; print(secrets.token_hex(8))')}"
SIDREC_BUNDLE_PATH="$BUNDLE" SIDREC_HOST=127.0.0.1 SIDREC_PORT="$PORT" SIDREC_REDIS_URL="${SIDREC_REDIS_URL:-}" \
  "$PY" -m service > "$(dirname "$REPORT")/service.log" 2>&1 &
service_pid=$!
trap 'kill "$service_pid" 2>/dev/null || true; wait "$service_pid" 2>/dev/null || true' EXIT

"$PY" - "$PORT" "$service_pid" <<'PYEOF'
import os, sys, time, httpx
port, pid = sys.argv[1], int(sys.argv[2])
for _ in range(240):
    try:
        if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
            sys.exit(0)
    except httpx.TransportError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("loadtest: the service exited during start-up (see service.log beside the report)")
    time.sleep(0.5)
sys.exit("loadtest: the service was not ready within 120 s")
PYEOF

"$PY" -m deploy.loadtest --url "http://127.0.0.1:$PORT" --rates "${RATES:-5,10,20,40}" \
  --step-seconds "${STEP_SECONDS:-10}" --report "$REPORT" ${DATA:+--data "$DATA"}
