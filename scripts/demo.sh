#!/usr/bin/env bash
# Builds tickpipe and runs the whole pipeline on this machine, with no AWS account and
# no Finnhub token:
#
#   loadgen feed (synthetic Finnhub) -> ingestor -> local Kinesis -> Lambda runner
#     -> local DynamoDB -> dashboard at http://127.0.0.1:8080
#
# Ctrl-C stops everything it started: the ingestor flushes first, then the rest, then
# the stand-ins. Logs go to .local/run/demo/*.log.
#
# Environment: DEMO_RATE (synthetic trades/s, default 200), DEMO_SYMBOLS (comma list),
# and the ports of the defaults table in the README (TICKPIPE_DASHBOARD_LISTEN, ...).
set -euo pipefail
LOG_PREFIX=demo
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

readonly RUN_DIR="$REPO_ROOT/.local/run/demo"
readonly BIN="$REPO_ROOT/target/release"
readonly FEED_LISTEN=${LOADGEN_FEED_LISTEN:-127.0.0.1:9001}
readonly DASHBOARD_LISTEN=${TICKPIPE_DASHBOARD_LISTEN:-127.0.0.1:8080}
readonly RATE=${DEMO_RATE:-200}
readonly SYMBOLS=${DEMO_SYMBOLS:-AAPL,MSFT,AMZN,NVDA,TSLA,META,GOOGL,BINANCE:BTCUSDT,BINANCE:ETHUSDT,OANDA:EUR_USD}
declare -A PIDS=()

require_cmd cargo "install Rust with rustup"
mkdir -p "$RUN_DIR"

log "building release binaries (the first build takes a few minutes)"
cargo build --release --bins

export STATE_DIR="$REPO_ROOT/.local/run/stack"
"$REPO_ROOT/scripts/localstack.sh" start
# shellcheck disable=SC1091 # written by localstack.sh just above
. "$STATE_DIR/env"

# Local stand-ins accept any credentials; real AWS settings must not leak in.
export AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL
export AWS_ENDPOINT_URL_KINESIS=$KINESIS_ENDPOINT
export AWS_ENDPOINT_URL_DYNAMODB=$DYNAMODB_ENDPOINT
export TICKPIPE_STREAM=$STREAM TABLE_NAME=$TABLE

# shellcheck disable=SC2317 # reached through the trap below
stop_all() {
  trap - INT TERM EXIT
  log "stopping"
  # The ingestor first, so it can flush what it holds into Kinesis.
  local name
  for name in ingestor feed lambda dashboard; do
    [[ -n ${PIDS[$name]:-} ]] || continue
    kill -TERM "${PIDS[$name]}" 2>/dev/null || true
    wait "${PIDS[$name]}" 2>/dev/null || true
  done
  "$REPO_ROOT/scripts/localstack.sh" stop
  log "stopped; logs are in ${RUN_DIR#"$REPO_ROOT"/}"
}
trap stop_all INT TERM EXIT

# start NAME COMMAND...: run in the background, log to RUN_DIR/NAME.log.
start() {
  local name=$1
  shift
  "$@" >"$RUN_DIR/$name.log" 2>&1 &
  PIDS[$name]=$!
  log "started $name (pid $!), log in ${RUN_DIR#"$REPO_ROOT"/}/$name.log"
}

start feed "$BIN/loadgen" feed --listen "$FEED_LISTEN" --rate "$RATE"
# A longer linger than the default keeps the local Kinesis stand-in, which slows down as
# records pile up in a shard, responsive through a long demo.
start ingestor "$BIN/ingestor" --url "ws://$FEED_LISTEN" --symbols "$SYMBOLS" --linger 200ms
start lambda "$BIN/bootstrap" --local
start dashboard "$BIN/dashboard" --listen "$DASHBOARD_LISTEN"

log "pipeline running: open http://$DASHBOARD_LISTEN  (Ctrl-C stops everything)"
# Return when any part exits on its own, so a crash is not hidden behind a quiet page.
set +e
wait -n "${PIDS[@]}"
status=$?
set -e
log "a process exited (status $status); see the logs"
exit "$status"
