# shellcheck shell=bash
# Shared helpers for tickpipe's bash scripts. Source it after `set -euo pipefail`;
# it only defines REPO_ROOT and functions. Set LOG_PREFIX first: every line a
# script prints starts with "$LOG_PREFIX: ", so output from several scripts (and
# from CI) can be told apart.

# The repo root comes from this file's location, not the caller's cwd, so the
# scripts work from anywhere (tests run them from their own temp dirs).
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
# shellcheck disable=SC2034 # used by the scripts that source this file
readonly REPO_ROOT

log() { printf '%s: %s\n' "${LOG_PREFIX:-tickpipe}" "$*"; }
warn() { log "$@" >&2; }
die() {
  warn "error: $*"
  exit 1
}

# Prefix each line of stdin, for tails of logs and output of other tools.
prefix_lines() {
  local line
  while IFS= read -r line || [[ -n $line ]]; do
    log "  | $line"
  done
}

# require_cmd NAME [HINT]: fail clearly when a tool is not on PATH.
require_cmd() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' is required but was not found on PATH${2:+ ($2)}"
}

# require_node MIN_MAJOR: node must exist and be recent enough.
require_node() {
  local min=$1 major
  require_cmd node "install Node.js $min or newer"
  major=$(node -p 'process.versions.node.split(".")[0]')
  ((major >= min)) || die "node $min or newer is required, found $(node --version)"
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# check_port NAME VALUE: a port must be a number in 1..65535.
check_port() {
  if ! is_uint "$2" || (($2 < 1 || $2 > 65535)); then
    die "$1 must be a port number (1-65535), got '$2'"
  fi
}

# free_ports N: print N distinct ports that are free on 127.0.0.1, one a line.
# All N sockets are bound at once (port 0, the kernel picks) so the ports are
# distinct; they are closed before returning, so there is a small window in
# which another process could take one; the caller's own check reports that.
free_ports() {
  node -e '
    const net = require("net");
    const n = Number(process.argv[1]);
    const servers = [];
    const done = () => {
      if (servers.length < n) return;
      const ports = servers.map((s) => s.address().port);
      let open = servers.length;
      servers.forEach((s) => s.close(() => { if (--open === 0) console.log(ports.join("\n")); }));
    };
    for (let i = 0; i < n; i++) {
      const s = net.createServer();
      s.on("error", (e) => { console.error(e.message); process.exit(1); });
      s.listen({ host: "127.0.0.1", port: 0, exclusive: true }, () => { servers.push(s); done(); });
    }
  ' "$1"
}

# ports_in_use PORT...: print those of the ports that cannot be bound on
# 127.0.0.1 (someone listens there, on 127.0.0.1 or on 0.0.0.0), one a line.
# Binding, not connecting, is the test the servers themselves will face.
ports_in_use() {
  node -e '
    const net = require("net");
    const tryPort = (port) => new Promise((resolve) => {
      const s = net.createServer();
      s.once("error", () => resolve(false));
      s.listen({ host: "127.0.0.1", port, exclusive: true }, () => s.close(() => resolve(true)));
    });
    (async () => {
      for (const p of process.argv.slice(1)) if (!(await tryPort(Number(p)))) console.log(p);
    })();
  ' "$@"
}

# aws_call ENDPOINT TARGET [JSON_BODY]: one AWS JSON-protocol call with curl,
# e.g. aws_call http://127.0.0.1:4568 Kinesis_20131202.ListStreams '{}'.
# Prints the response body. Returns 0 on HTTP 2xx, 1 on another HTTP status,
# 2 when nothing answered. The local stand-ins do not verify signatures but
# reject requests without a SigV4-shaped Authorization header and X-Amz-Date,
# so both are sent with a dummy signature. Kinesis scopes streams by region and
# by account (a 12-digit access key id selects another account), so the region
# is the caller's AWS_REGION and the key id is deliberately not 12 digits.
aws_call() {
  local endpoint=$1 target=$2 body=${3:-"{}"}
  local service content_type amz_date region out code
  case $target in
    Kinesis_*) service=kinesis content_type=application/x-amz-json-1.1 ;;
    DynamoDB_*) service=dynamodb content_type=application/x-amz-json-1.0 ;;
    *)
      warn "aws_call: unknown target '$target'"
      return 2
      ;;
  esac
  amz_date=$(date -u +%Y%m%dT%H%M%SZ)
  region=${AWS_REGION:-${AWS_DEFAULT_REGION:-us-east-1}}
  out=$(curl -sS --max-time "${AWS_CALL_TIMEOUT:-5}" -X POST "$endpoint/" \
    -H "Content-Type: $content_type" \
    -H "X-Amz-Target: $target" \
    -H "X-Amz-Date: $amz_date" \
    -H "Authorization: AWS4-HMAC-SHA256 Credential=AKIDLOCALSTACK/${amz_date:0:8}/$region/$service/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=0000000000000000000000000000000000000000000000000000000000000000" \
    --data-binary "$body" -w '\n%{http_code}' 2>/dev/null) || return 2
  code=${out##*$'\n'}
  printf '%s\n' "${out%$'\n'*}"
  [[ $code == 2?? ]]
}

# json_has TEXT KEY VALUE: does compact or spaced JSON TEXT contain "KEY":"VALUE"?
# Enough for status fields such as "StreamStatus":"ACTIVE"; no JSON parser needed.
json_has() {
  [[ $1 =~ \""$2"\"[[:space:]]*:[[:space:]]*\""$3"\" ]]
}
