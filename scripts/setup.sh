#!/usr/bin/env bash
# Installs what tickpipe's demo and tests need beyond the Rust toolchain, into the
# git-ignored .local/ folder where possible:
#
#   stack    the local Kinesis and DynamoDB stand-ins (npm, pinned; see localstack.sh)
#   python   a virtualenv with AWS's aws-kinesis-agg, for the aggregation interop test
#   browser  Debian's Chromium, for the dashboard's browser test (needs root)
#   all      all three (the default)
#
# Every part is idempotent: a second run checks and does nothing.
set -euo pipefail
LOG_PREFIX=setup
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Pinned versions: aws-kinesis-agg imports six without declaring it.
readonly PY_PACKAGES=(aws-kinesis-agg==1.2.3 six==1.17.0)
readonly VENV="$REPO_ROOT/.local/venv"

setup_stack() {
  "$REPO_ROOT/scripts/localstack.sh" install
}

setup_python() {
  if [[ -x $VENV/bin/python ]] &&
    "$VENV/bin/python" -c 'import aws_kinesis_agg.aggregator, six' 2>/dev/null; then
    log "python: aws-kinesis-agg already installed in .local/venv"
    return
  fi
  require_cmd python3 "install Python 3 with its venv module"
  log "python: creating .local/venv with ${PY_PACKAGES[*]}"
  python3 -m venv "$VENV" || die "python3 -m venv failed; install Python's venv module"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}" ||
    die "pip could not install ${PY_PACKAGES[*]}"
}

setup_browser() {
  if command -v chromium >/dev/null 2>&1; then
    log "browser: $(chromium --version 2>/dev/null | head -n1) already installed"
    return
  fi
  if [[ $(id -u) -ne 0 ]]; then
    die "Chromium is missing and installing it needs root: run 'sudo apt-get install -y chromium'"
  fi
  require_cmd apt-get "the browser test needs Debian's chromium package"
  log "browser: installing Debian's chromium package"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null ||
    die "apt-get could not install chromium"
  log "browser: $(chromium --version 2>/dev/null | head -n1)"
}

main() {
  local part=${1:-all}
  case $part in
  stack) setup_stack ;;
  python) setup_python ;;
  browser) setup_browser ;;
  all)
    setup_stack
    setup_python
    setup_browser
    ;;
  -h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) die "unknown part '$part'; use stack, python, browser or all" ;;
  esac
}

main "$@"
