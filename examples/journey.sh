#!/usr/bin/env bash
# The whole lorareg journey against the embedded default (lorareg serve: SQLite, local blobs,
# an in-process worker), with tiny models built on the fly:
#   register a base -> push an adapter with metrics and provenance -> merge it and pull the
#   merged model -> promote to staging -> canary on prod behind gates, good live metrics until
#   promoted -> push a worse version, canary it, bad live metrics -> it rolls back by itself ->
#   the channel history shows every step.
# Run from a clone after the README's install command: ./examples/journey.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || { python3 -m venv .venv; PY=.venv/bin/python; }
# Merges and the tiny models need torch (pinned CPU build first), transformers and peft.
"$PY" -m pip install --quiet --disable-pip-version-check torch==2.13.0
"$PY" -m pip install --quiet --disable-pip-version-check -e '.[worker]' transformers peft
LOREG="$(dirname "$PY")/lorareg"

WORK=$(mktemp -d)
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export LORAREG_HOME="$WORK/.lorareg" LORAREG_URL="http://127.0.0.1:$PORT"
export LORAREG_WORKER_POLL_SECONDS=0.2 LORAREG_CONFIG="$WORK/cli.json"
export LORAREG_FINGERPRINT_CACHE="$WORK/fingerprints.sqlite"
"$LOREG" serve --port "$PORT" >"$WORK/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 1 100); do curl -fs "$LORAREG_URL/healthz" >/dev/null 2>&1 && break; sleep 0.2; done

step() { printf '\n== %s\n' "$*"; }
lr() { echo "+ lorareg $*" >&2; "$LOREG" "$@"; }
json() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

step "tiny base and adapters"
"$PY" examples/make_tiny_models.py "$WORK/models"

step "register the base (fingerprint, uploaded so workers can fetch it)"
lr base register "$WORK/models/base" --name tiny/llama --revision r1 --upload

step "push v1 with eval metrics and provenance, then merge and pull the merged model"
lr push "$WORK/models/adapter-v1" --adapter demo/bot --base tiny/llama@r1 \
   --metric accuracy=0.91 --git-commit 0a1b2c3 --ci-run-url https://ci.example/runs/1
lr merge demo/bot@1 --wait
lr pull demo/bot@1 --merged -o "$WORK/merged"
ls "$WORK/merged"

step "v1 becomes stable on prod and staging"
lr promote demo/bot@1 --channel prod --now
lr promote demo/bot@1 --channel staging --now

report() {  # VERSION ERRORS: one batch of live measurements for a version
    lr live report "demo/bot@$1" --requests 1000 --errors "$2" --value latency_p95_ms=100 >/dev/null
}
canary() {  # STABLE CANDIDATE CANDIDATE_ERRORS EXPECTED: a canary fed live data until it ends
    local rid status=""
    rid=$(lr --json promote "demo/bot@$2" --channel prod --steps 50,100 --interval 1s \
          --gate "eval.accuracy >= stable - 0.05" --gate "live.error_rate <= 0.02" \
          --gate "live.latency_p95_ms <= stable * 1.1" | json 'd["rollout"]["id"]')
    for _ in $(seq 1 60); do
        status=$(lr --json rollout status "$rid" | json 'd["status"]')
        case "$status" in promoted|aborted) break ;; esac
        report "$1" 1; report "$2" "$3"; sleep 0.5
    done
    lr rollout status "$rid"
    [ "$status" = "$4" ] || { echo "expected $4, got $status" >&2; exit 1; }
}

step "v2: canary on prod with gates, good live metrics -> promoted"
lr push "$WORK/models/adapter-v2" --adapter demo/bot --base tiny/llama@r1 --metric accuracy=0.93
canary 1 2 1 promoted

step "v3: worse; canary, bad live metrics -> rolled back by itself, v2 keeps serving"
lr push "$WORK/models/adapter-v3" --adapter demo/bot --base tiny/llama@r1 --metric accuracy=0.92
canary 2 3 200 aborted
lr resolve demo/bot:prod --key user-42

step "history of prod"
lr history demo/bot:prod
echo
echo "journey complete"
