#!/usr/bin/env bash
# Runs every check and test of tickpipe: formatting, clippy, then the whole workspace's
# tests against real local stand-ins for Kinesis and DynamoDB, a real Chromium and
# AWS's own aggregation library.
#
# It installs what is missing (scripts/setup.sh), starts its own Kinesis and DynamoDB on
# free ports (so a running demo is left alone) and stops them afterwards. When
# TICKPIPE_TEST_KINESIS_ENDPOINT and TICKPIPE_TEST_DYNAMODB_ENDPOINT are already set,
# it uses those instead. Extra arguments go to `cargo test`.
set -euo pipefail
LOG_PREFIX="test"
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

require_cmd cargo "install Rust with rustup"
"$REPO_ROOT/scripts/setup.sh" all

if [[ -z ${TICKPIPE_TEST_KINESIS_ENDPOINT:-} || -z ${TICKPIPE_TEST_DYNAMODB_ENDPOINT:-} ]]; then
  export STATE_DIR="$REPO_ROOT/.local/run/test-stack-$$"
  trap '"$REPO_ROOT/scripts/localstack.sh" stop >/dev/null || true; rm -rf "$STATE_DIR"' EXIT
  "$REPO_ROOT/scripts/localstack.sh" start --free-ports
  # shellcheck disable=SC1091 # written by localstack.sh just above
  . "$STATE_DIR/env"
  export TICKPIPE_TEST_KINESIS_ENDPOINT=$KINESIS_ENDPOINT
  export TICKPIPE_TEST_DYNAMODB_ENDPOINT=$DYNAMODB_ENDPOINT
fi
export TICKPIPE_PYTHON="$REPO_ROOT/.local/venv/bin/python"
export CHROMIUM=${CHROMIUM:-$(command -v chromium)}

log "cargo fmt --check"
cargo fmt --all --check
log "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
log "cargo test --workspace (Kinesis $TICKPIPE_TEST_KINESIS_ENDPOINT, DynamoDB $TICKPIPE_TEST_DYNAMODB_ENDPOINT)"
cargo test --workspace "$@"
