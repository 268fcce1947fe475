#!/usr/bin/env bash
# Local AWS stand-ins for tickpipe, on 127.0.0.1 only (see "Running locally" in the design):
#   Kinesis  - npm kinesis-local (kinesis-mock), run from a copy patched to bind 127.0.0.1
#   DynamoDB - npm dynalite
# Run `scripts/localstack.sh help` for subcommands and the environment it reads.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

LOG_PREFIX=localstack
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

readonly KINESIS_LOCAL_VERSION=0.6.2
readonly DYNALITE_VERSION=4.0.0
readonly NODE_MIN_MAJOR=20 # dynalite 4 declares node >= 20
readonly NPM_DIR=$REPO_ROOT/.local/npm
readonly KINESIS_PKG=$NPM_DIR/node_modules/kinesis-local
readonly KINESIS_MAIN=$KINESIS_PKG/main.loopback.js # the patched copy; main.js stays as shipped
readonly DYNALITE_CLI=$NPM_DIR/node_modules/dynalite/cli.js
# kinesis-local has no option for its bind address: its Scala.js bundle names the
# host in exactly one expression (ip4s Host.fromString), used for both ports.
# shellcheck disable=SC2016 # a literal '$' of the bundle, not a bash expansion
readonly BIND_ANY='Host$().em("0.0.0.0")'
# shellcheck disable=SC2016
readonly BIND_LOOPBACK='Host$().em("127.0.0.1")'

STREAM=${STREAM:-tickpipe-trades}
SHARDS=${SHARDS:-4}
TABLE=${TABLE:-tickpipe}
KINESIS_PORT=${KINESIS_PORT:-4568}
KINESIS_TLS_PORT=${KINESIS_TLS_PORT:-4567}
DYNAMO_PORT=${DYNAMO_PORT:-8000}
DYNAMO_PATH=${DYNAMO_PATH:-}
SHARD_LIMIT=${SHARD_LIMIT:-500}
KINESIS_LOG_LEVEL=${KINESIS_LOG_LEVEL:-WARN}
START_TIMEOUT=${START_TIMEOUT:-60}
STOP_TIMEOUT=${STOP_TIMEOUT:-10}
STATE_DIR=${STATE_DIR:-$REPO_ROOT/.local/run/stack}
[[ $STATE_DIR == /* ]] || STATE_DIR=$PWD/$STATE_DIR
# Kinesis keeps streams per region, so the stream is made in the region clients will use.
REGION=${AWS_REGION:-${AWS_DEFAULT_REGION:-us-east-1}}

usage() {
  prefix_lines <<EOF
usage: scripts/localstack.sh install | start [--free-ports] | stop | status
  install   npm-install kinesis-local@$KINESIS_LOCAL_VERSION and dynalite@$DYNALITE_VERSION into .local/npm
            and write kinesis-local's copy patched to bind 127.0.0.1 (idempotent)
  start     install if needed, start both on 127.0.0.1, wait until they answer, create the
            stream (at startup) and the table, write \$STATE_DIR/env; says so if already running
            --free-ports: pick free ports instead of the fixed ones (for tests beside a demo)
  stop      stop exactly the processes start started (idempotent)
  status    show what runs where; exit 0 only if both run and answer
environment (default):
  STATE_DIR (.local/run/stack)  PID files, logs, and the env file to source
  KINESIS_PORT (4568)  KINESIS_TLS_PORT (4567)  DYNAMO_PORT (8000)
  STREAM (tickpipe-trades)  SHARDS (4)  TABLE (tickpipe)  SHARD_LIMIT (500)
  DYNAMO_PATH (unset: in memory)  KINESIS_LOG_LEVEL (WARN)  AWS_REGION (us-east-1)
  START_TIMEOUT (60 s)  STOP_TIMEOUT (10 s)
EOF
}

# --- configuration checks -------------------------------------------------

# Names go into JSON bodies and the env file unquoted, so allow only the
# characters Kinesis and DynamoDB allow anyway.
check_name() {
  [[ $2 =~ ^[A-Za-z0-9_.-]{3,128}$ ]] || die "$1 must be 3-128 of A-Z a-z 0-9 _ . -, got '$2'"
}

check_config() {
  check_name STREAM "$STREAM"
  check_name TABLE "$TABLE"
  if ! is_uint "$SHARDS" || ((SHARDS < 1)); then
    die "SHARDS must be a positive number, got '$SHARDS'"
  fi
  is_uint "$SHARD_LIMIT" || die "SHARD_LIMIT must be a number, got '$SHARD_LIMIT'"
  ((SHARDS <= SHARD_LIMIT)) || die "SHARDS ($SHARDS) exceeds SHARD_LIMIT ($SHARD_LIMIT)"
  is_uint "$START_TIMEOUT" || die "START_TIMEOUT must be whole seconds, got '$START_TIMEOUT'"
  is_uint "$STOP_TIMEOUT" || die "STOP_TIMEOUT must be whole seconds, got '$STOP_TIMEOUT'"
}

check_ports() {
  check_port KINESIS_PORT "$KINESIS_PORT"
  check_port KINESIS_TLS_PORT "$KINESIS_TLS_PORT"
  check_port DYNAMO_PORT "$DYNAMO_PORT"
  if ((KINESIS_PORT == KINESIS_TLS_PORT || KINESIS_PORT == DYNAMO_PORT || KINESIS_TLS_PORT == DYNAMO_PORT)); then
    die "KINESIS_PORT, KINESIS_TLS_PORT and DYNAMO_PORT must differ ($KINESIS_PORT, $KINESIS_TLS_PORT, $DYNAMO_PORT)"
  fi
  local busy port taken=0
  busy=$(ports_in_use "$KINESIS_PORT" "$KINESIS_TLS_PORT" "$DYNAMO_PORT")
  for port in $busy; do
    case $port in
      "$KINESIS_PORT") warn "port $port (KINESIS_PORT, Kinesis HTTP) is already in use on 127.0.0.1" ;;
      "$KINESIS_TLS_PORT") warn "port $port (KINESIS_TLS_PORT, Kinesis HTTPS) is already in use on 127.0.0.1" ;;
      *) warn "port $port (DYNAMO_PORT, DynamoDB) is already in use on 127.0.0.1" ;;
    esac
    taken=1
  done
  ((taken == 0)) || die "cannot start: choose other ports, or pass --free-ports"
}

# --free-ports: let the kernel pick all three, so tests can run beside a demo.
pick_free_ports() {
  local out ports
  out=$(free_ports 3) || die "could not find free ports on 127.0.0.1"
  mapfile -t ports <<<"$out"
  ((${#ports[@]} == 3)) || die "could not find three free ports on 127.0.0.1"
  KINESIS_PORT=${ports[0]} KINESIS_TLS_PORT=${ports[1]} DYNAMO_PORT=${ports[2]}
}

# --- install --------------------------------------------------------------

installed_version() {
  [[ -f $1/package.json ]] || return 0
  node -p 'require(process.argv[1]).version' "$1/package.json" 2>/dev/null || true
}

packages_installed() {
  [[ $(installed_version "$KINESIS_PKG") == "$KINESIS_LOCAL_VERSION" ]] &&
    [[ $(installed_version "${DYNALITE_CLI%/*}") == "$DYNALITE_VERSION" ]]
}

npm_install() {
  require_cmd npm "it comes with Node.js"
  # A package.json of its own keeps npm from adopting one in a parent folder.
  [[ -f $NPM_DIR/package.json ]] ||
    printf '{ "name": "tickpipe-local-stack", "private": true }\n' >"$NPM_DIR/package.json"
  log "installing kinesis-local@$KINESIS_LOCAL_VERSION and dynalite@$DYNALITE_VERSION into ${NPM_DIR#"$REPO_ROOT"/}"
  if ! (cd "$NPM_DIR" && npm install --save-exact --no-audit --no-fund \
    "kinesis-local@$KINESIS_LOCAL_VERSION" "dynalite@$DYNALITE_VERSION") >"$NPM_DIR/npm-install.log" 2>&1; then
    tail -n 30 "$NPM_DIR/npm-install.log" | prefix_lines >&2
    die "npm install failed (full log: $NPM_DIR/npm-install.log)"
  fi
  packages_installed || die "npm install finished but the pinned versions are not in $NPM_DIR/node_modules"
}

# Write main.loopback.js, main.js with the bind host 0.0.0.0 replaced by
# 127.0.0.1. A copy, so main.js stays as npm installed it. Next to main.js so
# its source map still applies.
patch_kinesis() {
  local src=$KINESIS_PKG/main.js count tmp
  if [[ -f $KINESIS_MAIN ]] && grep -qF "$BIND_LOOPBACK" "$KINESIS_MAIN"; then
    return 0
  fi
  count=$(grep -oF "$BIND_ANY" "$src" | wc -l)
  ((count == 1)) || die "expected one '$BIND_ANY' in $src, found $count: cannot patch its bind address"
  tmp=$KINESIS_MAIN.$$.tmp
  # shellcheck disable=SC2016 # literal '$' in a sed script
  sed 's/Host\$()\.em("0\.0\.0\.0")/Host$().em("127.0.0.1")/' "$src" >"$tmp"
  if ! grep -qF "$BIND_LOOPBACK" "$tmp" || grep -qF '"0.0.0.0"' "$tmp"; then
    rm -f "$tmp"
    die "patching $src to bind 127.0.0.1 failed"
  fi
  mv "$tmp" "$KINESIS_MAIN"
  log "patched kinesis-local to bind 127.0.0.1: ${KINESIS_MAIN#"$REPO_ROOT"/}"
}

# ensure_installed [verbose]: install and patch unless done. Under a lock,
# because parallel tests each run `start` and share .local/npm.
ensure_installed() {
  local verbose=${1:-} lock_fd
  require_node "$NODE_MIN_MAJOR"
  require_cmd flock
  mkdir -p "$NPM_DIR"
  exec {lock_fd}>"$NPM_DIR/.install.lock"
  flock -w 300 "$lock_fd" || die "timed out waiting for another install ($NPM_DIR/.install.lock)"
  if packages_installed; then
    [[ -z $verbose ]] || log "kinesis-local@$KINESIS_LOCAL_VERSION and dynalite@$DYNALITE_VERSION already installed"
  else
    npm_install
  fi
  patch_kinesis
  exec {lock_fd}>&- # closed before any server starts, so none inherits the lock
}

cmd_install() {
  (($# == 0)) || die "install takes no arguments"
  require_node "$NODE_MIN_MAJOR"
  require_cmd npm "it comes with Node.js"
  ensure_installed verbose
}

# --- processes ------------------------------------------------------------

program_of() {
  case $1 in
    kinesis) echo "$KINESIS_MAIN" ;;
    dynamodb) echo "$DYNALITE_CLI" ;;
  esac
}

# our_pid NAME: print the PID in NAME's PID file if that process lives and is
# still the program we started there (a stale file's PID may have been reused).
our_pid() {
  local file=$STATE_DIR/$1.pid pid
  [[ -f $file ]] || return 1
  pid=$(<"$file")
  is_uint "$pid" && [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$(program_of "$1")" || return 1
  echo "$pid"
}

# Is any process of group PGID alive? Zombies do not count: a server that died
# while this script (its parent) still runs stays a zombie until we exit.
group_alive() {
  ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ { found = 1 } END { exit !found }'
}

# launch NAME COMMAND...: start a server in the background, PID in NAME.pid.
# setsid gives it its own session and process group (pgid = pid), so stop can
# signal the whole group and the server does not share the caller's terminal.
# setsid does not fork here (a background subshell of a script without job
# control is no group leader), so $! is the server's own PID. The cwd is the
# state dir, so anything a server writes relative to its cwd lands there.
launch() {
  local name=$1
  shift
  (cd "$STATE_DIR" && exec setsid "$@" </dev/null >"$STATE_DIR/$name.log" 2>&1) &
  echo "$!" >"$STATE_DIR/$name.pid"
}

start_kinesis() {
  # CREATE_STREAM_DURATION=0ms: streams (also those tests create) are ACTIVE at once.
  # SHARD_LIMIT: the default 50 open shards would stop tests that make many streams.
  # SHOULD_PERSIST_DATA=false: in memory, whatever the caller's environment says.
  # The cats-effect CPU-starvation check only floods the log on a busy 2-core machine.
  # Other kinesis-mock settings (e.g. UPDATE_SHARD_COUNT_DURATION) pass through from the environment.
  launch kinesis env \
    KINESIS_MOCK_CERT_PATH="$KINESIS_PKG/server.json" \
    KINESIS_MOCK_PLAIN_PORT="$KINESIS_PORT" \
    KINESIS_MOCK_TLS_PORT="$KINESIS_TLS_PORT" \
    AWS_REGION="$REGION" \
    INITIALIZE_STREAMS="$STREAM:$SHARDS" \
    CREATE_STREAM_DURATION=0ms \
    SHARD_LIMIT="$SHARD_LIMIT" \
    LOG_LEVEL="$KINESIS_LOG_LEVEL" \
    SHOULD_PERSIST_DATA=false \
    CATS_EFFECT_CPU_STARVATION_CHECK_INITIAL_DELAY=Inf \
    node "$KINESIS_MAIN"
  echo "http://127.0.0.1:$KINESIS_PORT" >"$STATE_DIR/kinesis.url"
}

start_dynamodb() {
  local args=(--host 127.0.0.1 --port "$DYNAMO_PORT" --createTableMs 0 --deleteTableMs 0 --updateTableMs 0)
  if [[ -n $DYNAMO_PATH ]]; then
    mkdir -p "$DYNAMO_PATH"
    args+=(--path "$(cd "$DYNAMO_PATH" && pwd -P)")
  fi
  launch dynamodb node "$DYNALITE_CLI" "${args[@]}"
  echo "http://127.0.0.1:$DYNAMO_PORT" >"$STATE_DIR/dynamodb.url"
}

# stop_service NAME: TERM the server's process group, KILL it after
# STOP_TIMEOUT, and forget it. Quiet and successful when it is not running.
stop_service() {
  local name=$1 pid target deadline
  if pid=$(our_pid "$name"); then
    # Signal the group only if the server leads one of its own; never ours.
    target=$pid
    [[ $(ps -o pgid= -p "$pid" | tr -d ' ') != "$pid" ]] || target=-$pid
    kill -TERM -- "$target" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while group_alive "$pid" && ((SECONDS < deadline)); do
      sleep 0.1
    done
    if group_alive "$pid"; then
      warn "$name (pid $pid) did not exit within ${STOP_TIMEOUT}s of SIGTERM; sending SIGKILL"
      kill -KILL -- "$target" 2>/dev/null || true
      deadline=$((SECONDS + 5))
      while group_alive "$pid" && ((SECONDS < deadline)); do
        sleep 0.1
      done
      ! group_alive "$pid" || die "$name (pid $pid) survived SIGKILL"
    fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$STATE_DIR/$name.pid" "$STATE_DIR/$name.url"
}

stop_all() {
  stop_service kinesis
  stop_service dynamodb
  rm -f "$STATE_DIR/env" # its endpoints are gone; a stale one would mislead
}

# --- readiness --------------------------------------------------------------

url_of() { cat "$STATE_DIR/$1.url" 2>/dev/null || true; }

kinesis_answers() { aws_call "$1" Kinesis_20131202.ListStreams '{"Limit":1}' >/dev/null; }
dynamodb_answers() { aws_call "$1" DynamoDB_20120810.ListTables '{"Limit":1}' >/dev/null; }

stream_active() {
  local out
  out=$(aws_call "$1" Kinesis_20131202.DescribeStreamSummary "{\"StreamName\":\"$STREAM\"}") &&
    json_has "$out" StreamStatus ACTIVE
}

table_active() {
  local out
  out=$(aws_call "$1" DynamoDB_20120810.DescribeTable "{\"TableName\":\"$TABLE\"}") &&
    json_has "$out" TableStatus ACTIVE
}

# running NAME: the server we started lives and answers an API call.
running() {
  our_pid "$1" >/dev/null && "$1_answers" "$(url_of "$1")"
}

show_log_tail() {
  warn "last lines of $STATE_DIR/$1.log:"
  tail -n 30 "$STATE_DIR/$1.log" 2>/dev/null | prefix_lines >&2 || true
}

# wait_until NAME WHAT CHECK...: poll CHECK until it succeeds; fail (with the
# log tail) if the server exits or START_TIMEOUT passes first.
wait_until() {
  local name=$1 what=$2 deadline=$((SECONDS + START_TIMEOUT))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ! our_pid "$name" >/dev/null; then
      show_log_tail "$name"
      die "$name exited while waiting for $what"
    fi
    if ((SECONDS >= deadline)); then
      show_log_tail "$name"
      die "timed out after ${START_TIMEOUT}s waiting for $what"
    fi
    sleep 0.2
  done
}

ensure_table() {
  local url=$1 out
  if out=$(aws_call "$url" DynamoDB_20120810.DescribeTable "{\"TableName\":\"$TABLE\"}"); then
    log "table $TABLE already exists"
  else
    [[ $out == *ResourceNotFoundException* ]] || die "DescribeTable $TABLE failed: $out"
    out=$(aws_call "$url" DynamoDB_20120810.CreateTable "$(table_definition)") ||
      [[ $out == *ResourceInUseException* ]] || die "CreateTable $TABLE failed: $out"
    log "created table $TABLE (pk S HASH, sk S RANGE, PAY_PER_REQUEST)"
  fi
  wait_until dynamodb "table $TABLE to be ACTIVE" table_active "$url"
}

table_definition() {
  cat <<EOF
{"TableName":"$TABLE",
 "AttributeDefinitions":[{"AttributeName":"pk","AttributeType":"S"},{"AttributeName":"sk","AttributeType":"S"}],
 "KeySchema":[{"AttributeName":"pk","KeyType":"HASH"},{"AttributeName":"sk","KeyType":"RANGE"}],
 "BillingMode":"PAY_PER_REQUEST"}
EOF
}

# Written last and atomically: whoever sees the env file sees a ready stack.
write_env_file() {
  local tmp=$STATE_DIR/env.$$.tmp
  {
    echo "KINESIS_ENDPOINT=$(url_of kinesis)"
    echo "DYNAMODB_ENDPOINT=$(url_of dynamodb)"
    echo "STREAM=$STREAM"
    echo "TABLE=$TABLE"
  } >"$tmp"
  mv "$tmp" "$STATE_DIR/env"
}

show_env_file() {
  log "env file $STATE_DIR/env:"
  prefix_lines <"$STATE_DIR/env"
}

# --- subcommands ------------------------------------------------------------

# If start fails or is interrupted after launching, stop what it launched.
START_DONE=0
cleanup_failed_start() {
  ((START_DONE == 1)) || {
    warn "start did not complete; stopping what it started"
    stop_all >&2
  }
}

cmd_start() {
  local use_free_ports=0 began=$SECONDS
  while (($#)); do
    case $1 in
      --free-ports) use_free_ports=1 ;;
      *) die "start: unknown argument '$1' (see: scripts/localstack.sh help)" ;;
    esac
    shift
  done
  check_config
  require_cmd curl
  require_cmd setsid
  mkdir -p "$STATE_DIR"

  if running kinesis && running dynamodb && [[ -f $STATE_DIR/env ]]; then
    log "already running (kinesis pid $(our_pid kinesis), dynamodb pid $(our_pid dynamodb))"
    show_env_file
    return 0
  fi
  if our_pid kinesis >/dev/null || our_pid dynamodb >/dev/null; then
    log "found a partly started or unresponsive stack in $STATE_DIR; stopping it first"
  fi
  stop_all

  ensure_installed
  ((use_free_ports == 0)) || pick_free_ports
  check_ports

  trap cleanup_failed_start EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  # Both start at once; kinesis-local takes a few seconds, dynalite well under one.
  start_kinesis
  start_dynamodb
  wait_until kinesis "Kinesis to answer on $(url_of kinesis)" kinesis_answers "$(url_of kinesis)"
  wait_until kinesis "stream $STREAM to be ACTIVE" stream_active "$(url_of kinesis)"
  wait_until dynamodb "DynamoDB to answer on $(url_of dynamodb)" dynamodb_answers "$(url_of dynamodb)"
  ensure_table "$(url_of dynamodb)"
  write_env_file
  START_DONE=1

  log "kinesis  $(url_of kinesis) (https on 127.0.0.1:$KINESIS_TLS_PORT), stream $STREAM with $SHARDS shards in $REGION, pid $(our_pid kinesis)"
  log "dynamodb $(url_of dynamodb) ($([[ -n $DYNAMO_PATH ]] && echo "data in $DYNAMO_PATH" || echo "in memory")), table $TABLE, pid $(our_pid dynamodb)"
  log "ready in $((SECONDS - began))s; logs and PID files in $STATE_DIR"
  show_env_file
}

cmd_stop() {
  (($# == 0)) || die "stop takes no arguments"
  if ! our_pid kinesis >/dev/null && ! our_pid dynamodb >/dev/null; then
    log "nothing running (state dir $STATE_DIR)"
  fi
  stop_all
}

# service_status NAME: one line about NAME; success if it runs and answers.
service_status() {
  local name=$1 pid url
  url=$(url_of "$name")
  if ! pid=$(our_pid "$name"); then
    log "$name: not running"
    return 1
  fi
  if ! "${name}_answers" "$url"; then
    log "$name: pid $pid alive but not answering at $url"
    return 1
  fi
  log "$name: running, pid $pid, $url"
}

cmd_status() {
  (($# == 0)) || die "status takes no arguments"
  local rc=0
  log "state dir $STATE_DIR"
  service_status kinesis || rc=1
  service_status dynamodb || rc=1
  if ((rc == 0)) && [[ -f $STATE_DIR/env ]]; then
    show_env_file
  fi
  return "$rc"
}

main() {
  local cmd=${1:-}
  (($# == 0)) || shift
  case $cmd in
    install) cmd_install "$@" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    help | -h | --help) usage ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
