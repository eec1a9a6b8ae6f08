# Sourced by scripts/dev and scripts/test: installs and starts what Herald
# needs on a Debian machine when it is missing. Idempotent; prints what it does.

herald_log() { printf '==> %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Build dependencies of librdkafka (compiled from source by rdkafka's
# cmake-build) and the engines Herald talks to.
ensure_packages() {
  local wanted=(build-essential cmake pkg-config libssl-dev libcurl4-openssl-dev zlib1g-dev
                postgresql redis-server curl python3 python3-pip)
  # The dashboard's browser tests drive Debian's Chromium through ChromeDriver.
  if [ "${HERALD_SKIP_BROWSER:-}" != 1 ]; then
    wanted+=(chromium chromium-driver)
  fi
  local missing=()
  for p in "${wanted[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    herald_log "installing ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is not installed: install Rust (https://rustup.rs) first" >&2
    exit 1
  fi
  if command -v rustup >/dev/null 2>&1; then
    for c in rustfmt clippy; do
      rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
    done
  fi
}

ensure_postgres() {
  if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    herald_log "starting PostgreSQL"
    local version
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$version" ]; then
      echo "PostgreSQL is installed but has no cluster under /etc/postgresql" >&2
      exit 1
    fi
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 1 60); do
      pg_isready -h 127.0.0.1 -p 5432 -q && break
      sleep 0.5
    done
  fi
  # Herald connects over TCP as postgres. A fresh Debian cluster asks for a
  # password there; give it one then, and tell the tests.
  if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc 'SELECT 1' >/dev/null 2>&1 </dev/null; then
    herald_log "setting a password for the postgres role (local development)"
    as_root su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
    export TEST_POSTGRES_URL="postgres://postgres:postgres@127.0.0.1:5432"
    export HERALD_POSTGRES__URL="postgres://postgres:postgres@127.0.0.1:5432/herald"
  fi
}

ensure_redis() {
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    herald_log "starting Redis"
    mkdir -p /tmp/herald-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp/herald-redis --logfile /tmp/herald-redis/redis.log
    for _ in $(seq 1 60); do
      redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break
      sleep 0.25
    done
  fi
}

# The OpenAPI document is checked with openapi-spec-validator (PyPI).
ensure_openapi_validator() {
  if ! python3 -c 'import openapi_spec_validator' >/dev/null 2>&1; then
    herald_log "installing openapi-spec-validator"
    python3 -m pip install -q openapi-spec-validator 2>/dev/null \
      || python3 -m pip install -q --break-system-packages openapi-spec-validator
  fi
}

# The API is fuzzed from its OpenAPI document with schemathesis (PyPI),
# pinned so that a new release's checks cannot change a run's verdict.
SCHEMATHESIS_VERSION=4.32.5
ensure_schemathesis() {
  if [ "$(python3 -m schemathesis.cli --version 2>/dev/null | sed -n 's/.*version //p')" != "$SCHEMATHESIS_VERSION" ]; then
    herald_log "installing schemathesis $SCHEMATHESIS_VERSION"
    python3 -m pip install -q "schemathesis==$SCHEMATHESIS_VERSION" 2>/dev/null \
      || python3 -m pip install -q --break-system-packages "schemathesis==$SCHEMATHESIS_VERSION"
  fi
}

# A client generated from the OpenAPI document (openapi-python-client, PyPI,
# pinned) runs the quick start in a test.
OPENAPI_PYTHON_CLIENT_VERSION=0.29.1
ensure_openapi_python_client() {
  # (A command substitution, not `| grep -q`: under pipefail, grep leaving
  # early would fail the pipe and reinstall every time.)
  if [ "$(python3 -m pip show openapi-python-client 2>/dev/null | sed -n 's/^Version: //p')" != "$OPENAPI_PYTHON_CLIENT_VERSION" ]; then
    herald_log "installing openapi-python-client $OPENAPI_PYTHON_CLIENT_VERSION"
    python3 -m pip install -q "openapi-python-client==$OPENAPI_PYTHON_CLIENT_VERSION" 2>/dev/null \
      || python3 -m pip install -q --break-system-packages "openapi-python-client==$OPENAPI_PYTHON_CLIENT_VERSION"
  fi
}

# Node.js and npm (Debian's), for the JavaScript clients the tests and the
# benchmarks drive.
ensure_node() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    herald_log "installing nodejs and npm"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq nodejs npm >/dev/null
  fi
}

# A Python virtual environment at $1 (for clients whose dependencies stay out
# of the system Python).
ensure_venv() {
  [ -x "$1/bin/python" ] && return 0
  python3 -m venv "$1" 2>/dev/null || {
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$1"
  }
}

# The third-party clients the simulator's conformance tests drive
# (tests/tests/conformance.rs), pinned: @parse/node-apn (npm) and Google's
# Firebase Admin SDK for Python (PyPI), under target/conformance. Only the
# test script needs them.
NODE_APN_VERSION=8.1.0
FIREBASE_ADMIN_VERSION=7.7.0
ensure_conformance_clients() {
  local dir=${HERALD_CONFORMANCE_DIR:-${CARGO_TARGET_DIR:-target}/conformance}
  ensure_node
  if [ "$(cd "$dir/node" 2>/dev/null && node -p "require('@parse/node-apn/package.json').version" 2>/dev/null)" != "$NODE_APN_VERSION" ]; then
    herald_log "installing @parse/node-apn $NODE_APN_VERSION in $dir/node"
    mkdir -p "$dir/node"
    npm install --silent --no-audit --no-fund --prefix "$dir/node" "@parse/node-apn@$NODE_APN_VERSION"
  fi
  if [ "$("$dir/venv/bin/python" -c 'import firebase_admin; print(firebase_admin.__version__)' 2>/dev/null)" != "$FIREBASE_ADMIN_VERSION" ]; then
    herald_log "installing firebase-admin $FIREBASE_ADMIN_VERSION in $dir/venv"
    ensure_venv "$dir/venv"
    "$dir/venv/bin/pip" install -q "firebase-admin==$FIREBASE_ADMIN_VERSION"
  fi
}

# The Kubernetes manifests are checked with kubernetes-validate (PyPI), which
# carries the API schemas (no cluster needed).
ensure_kubernetes_validate() {
  if ! command -v kubernetes-validate >/dev/null 2>&1; then
    herald_log "installing kubernetes-validate"
    python3 -m pip install -q kubernetes-validate 2>/dev/null \
      || python3 -m pip install -q --break-system-packages kubernetes-validate
  fi
}

# A real Apache Kafka broker (KRaft) from Maven Central, for the tests that
# replay the incident on Kafka itself (scripts/kafka installs Java and Maven
# first when they are missing). Not part of ensure_all: `herald dev` runs an
# embedded broker.
ensure_kafka() {
  # shellcheck source=scripts/kafka
  source "$(dirname "${BASH_SOURCE[0]}")/kafka"
  ensure_kafka_jars
}

ensure_all() {
  ensure_packages
  ensure_rust
  ensure_openapi_validator
  ensure_schemathesis
  ensure_openapi_python_client
  ensure_kubernetes_validate
  ensure_postgres
  ensure_redis
}
