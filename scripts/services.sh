#!/usr/bin/env bash
# Local backing services for EventOps: a private PostgreSQL cluster, a single-node Apache
# Kafka 4.x broker (KRaft, broker+controller in one JVM), a Prometheus Alertmanager (Debian's
# prometheus-alertmanager, no clustering) and a Prometheus server (Debian's prometheus).
# Loopback only; all state lives in one directory.
# Mirrors what docker-compose.yml runs (there: postgres:16 + Redpanda + Alertmanager).
#
# Usage: scripts/services.sh {up|down|status|pg-up|pg-down|kafka-up|kafka-down|am-up|am-down|
#                             prom-up|prom-down|reset|env|logs}
#
#   up          start PostgreSQL, Kafka, Alertmanager and Prometheus (idempotent; fast when they
#               already run; recovers from stale pid files / postmaster.pid after a crash)
#   down        stop Prometheus, Alertmanager, Kafka (SIGTERM, then SIGKILL after a grace
#               period) and PostgreSQL (pg_ctl stop -m fast)
#   status      print what is up; exit 0 only if all are up
#   pg-up | pg-down | kafka-up | kafka-down | am-up | am-down | prom-up | prom-down
#               one service only
#   reset       down + delete the whole state directory (data, logs, downloaded jars)
#   env         print `export …` lines for the EventOps settings that point at these services
#   logs        print the paths of the log files
#
# Environment (defaults in brackets):
#   EVENTOPS_STATE_DIR              [<repo>/.services]  everything below lives here
#   EVENTOPS_PG_PORT                [55432]   PostgreSQL TCP port on 127.0.0.1
#   EVENTOPS_KAFKA_PORT             [59092]   Kafka PLAINTEXT listener on 127.0.0.1
#   EVENTOPS_KAFKA_CONTROLLER_PORT  [59093]   KRaft CONTROLLER listener on 127.0.0.1
#   EVENTOPS_ALERTMANAGER_PORT      [59094]   Alertmanager's HTTP API on 127.0.0.1
#   EVENTOPS_PROMETHEUS_PORT        [59095]   Prometheus' HTTP API and UI on 127.0.0.1
#   EVENTOPS_KAFKA_HEAP             [1g]      broker -Xmx
#   EVENTOPS_KAFKA_START_TIMEOUT    [90]      seconds to wait for the broker to answer
#   EVENTOPS_PG_START_TIMEOUT       [60]      seconds to wait for PostgreSQL
#   PYTHON                          [<repo>/.venv/bin/python]  used for the Kafka readiness probe
#   JAVA                            [java]
#
# Credentials (dev only): role `eventops` / password `eventops` (SUPERUSER), databases
# `eventops` and `mlflow` owned by it; scram-sha-256 over TCP 127.0.0.1.
#
# State layout:
#   <state>/pg/data          PGDATA (owned by the postgres system user when run as root)
#   <state>/pg/run           unix socket directory (private; the system cluster is never touched)
#   <state>/pg/postgres.log  server log
#   <state>/kafka/libs       jars from Maven Central (scripts/kafka/pom.xml), cached by pom sha256
#   <state>/kafka/data       log.dirs (KRaft metadata + topic data)
#   <state>/kafka/logs       server.log, controller.log, state-change.log (log4j2), kafka.out
#   <state>/kafka/server.properties, kafka.pid, cluster.id
#   <state>/alertmanager/    alertmanager.yml, data/ (its silences, notification log), am.log
#   <state>/prometheus/      prometheus.yml (written with no scrape jobs when absent; tests
#                            rewrite it and POST /-/reload: --web.enable-lifecycle), data/
#                            (the TSDB), prometheus.log, prometheus.pid
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
STATE_DIR="${EVENTOPS_STATE_DIR:-$REPO_DIR/.services}"
PG_PORT="${EVENTOPS_PG_PORT:-55432}"
KAFKA_PORT="${EVENTOPS_KAFKA_PORT:-59092}"
KAFKA_CPORT="${EVENTOPS_KAFKA_CONTROLLER_PORT:-59093}"
AM_PORT="${EVENTOPS_ALERTMANAGER_PORT:-59094}"
PROM_PORT="${EVENTOPS_PROMETHEUS_PORT:-59095}"
KAFKA_HEAP="${EVENTOPS_KAFKA_HEAP:-1g}"
KAFKA_START_TIMEOUT="${EVENTOPS_KAFKA_START_TIMEOUT:-90}"
PG_START_TIMEOUT="${EVENTOPS_PG_START_TIMEOUT:-60}"
PYTHON="${PYTHON:-$REPO_DIR/.venv/bin/python}"
JAVA="${JAVA:-java}"
KAFKA_POM="$REPO_DIR/scripts/kafka/pom.xml"
KAFKA_LOG4J="$REPO_DIR/scripts/kafka/log4j2.xml"

PG_ROLE=eventops
PG_PASSWORD=eventops
PG_DATABASES=(eventops mlflow)
PG_OS_USER=postgres
MARKER=.eventops-state

# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

for p in "$PG_PORT" "$KAFKA_PORT" "$KAFKA_CPORT" "$AM_PORT" "$PROM_PORT"; do
  [[ "$p" =~ ^[0-9]+$ ]] && [ "$p" -gt 0 ] && [ "$p" -lt 65536 ] || die "invalid port: $p"
done
[ "$KAFKA_PORT" != "$KAFKA_CPORT" ] || die "EVENTOPS_KAFKA_PORT and EVENTOPS_KAFKA_CONTROLLER_PORT must differ"
[ "$PG_PORT" != "$KAFKA_PORT" ] && [ "$PG_PORT" != "$KAFKA_CPORT" ] || die "EVENTOPS_PG_PORT collides with a Kafka port"

tail_log() { # tail_log <file> [lines]
  local f="$1" n="${2:-40}"
  if [ -f "$f" ]; then
    printf -- '----- last %s lines of %s -----\n' "$n" "$f" >&2
    tail -n "$n" "$f" >&2 || true
    printf -- '-----\n' >&2
  else
    log "(no log file at $f)"
  fi
}

port_open() { # port_open <port>: something accepts TCP connections on 127.0.0.1:<port>
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

who_listens() { # best-effort description of the listener on a port
  if command -v ss >/dev/null 2>&1; then
    ss -Hltnp "sport = :$1" 2>/dev/null | sed 's/^/    /' >&2 || true
  fi
}

pid_alive() { # the process exists and is not a zombie (a killed daemon may linger unreaped)
  [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
  local st
  st="$(sed -E 's/^.*\) (.).*$/\1/' "/proc/$1/stat" 2>/dev/null || true)"
  [ "$st" != Z ] && [ "$st" != X ]
}

ensure_state_dir() {
  mkdir -p "$STATE_DIR"
  STATE_DIR="$(cd "$STATE_DIR" && pwd -P)"
  [ -e "$STATE_DIR/$MARKER" ] || echo "EventOps local services state (scripts/services.sh)" >"$STATE_DIR/$MARKER"
  chmod 755 "$STATE_DIR" 2>/dev/null || true
}

resolve_state_dir() { # absolute path without creating it
  if [ -d "$STATE_DIR" ]; then STATE_DIR="$(cd "$STATE_DIR" && pwd -P)"; fi
}

with_lock() { # serialize up/down/reset (e.g. parallel test sessions)
  ensure_state_dir
  exec 9>"$STATE_DIR/.lock"
  if command -v flock >/dev/null 2>&1; then
    flock -w 300 9 || die "could not acquire $STATE_DIR/.lock within 300 s"
  fi
}

apt_install() {
  is_root || die "missing $* and not root: install it (apt-get install -y $*) and retry"
  command -v apt-get >/dev/null 2>&1 || die "missing $* and no apt-get on this machine"
  log "installing $* with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "$@" >&2
}

# ----------------------------------------------------------------------------------------------
# PostgreSQL
# ----------------------------------------------------------------------------------------------
PG_DIR="" PG_DATA="" PG_SOCK="" PG_LOG="" PG_BIN=""

pg_paths() {
  PG_DIR="$STATE_DIR/pg"
  PG_DATA="$PG_DIR/data"
  PG_LOG="$PG_DIR/postgres.log"
  PG_SOCK="$PG_DIR/run"
  # a unix socket path must fit in sun_path (107 bytes): fall back to a private dir in /tmp
  local sockfile="$PG_SOCK/.s.PGSQL.$PG_PORT"
  if [ "${#sockfile}" -gt 100 ]; then
    local h
    h="$(printf '%s' "$STATE_DIR" | sha256sum | cut -c1-12)"
    PG_SOCK="/tmp/eventops-pg-$h"
  fi
}

pg_find_bin() { # pg_find_bin [noinstall]
  if [ -n "$PG_BIN" ]; then return 0; fi
  local want="" cand=""
  [ -f "$PG_DATA/PG_VERSION" ] && want="$(cat "$PG_DATA/PG_VERSION")"
  if [ -n "$want" ] && [ -x "/usr/lib/postgresql/$want/bin/pg_ctl" ]; then
    PG_BIN="/usr/lib/postgresql/$want/bin"
    return 0
  fi
  cand="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -z "$cand" ] || [ ! -x "$cand/initdb" ]; then
    if [ "${1:-}" = noinstall ]; then return 1; fi
    apt_install postgresql
    cand="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    [ -n "$cand" ] && [ -x "$cand/initdb" ] || die "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin"
  fi
  if [ -n "$want" ]; then
    if [ "${1:-}" = noinstall ]; then return 1; fi
    die "data dir $PG_DATA was created by PostgreSQL $want but only $cand is installed; run '$0 reset' (deletes data) or install postgresql-$want"
  fi
  PG_BIN="$cand"
}

as_pg() { # run a command as the PostgreSQL OS user (initdb/postgres refuse root)
  if is_root; then
    (cd / && runuser -u "$PG_OS_USER" -- "$@")
  else
    "$@"
  fi
}

pg_ensure_traversable() {
  # The postgres user must be able to reach $PG_DIR: add o+x on any parent that blocks it.
  is_root || return 0
  local d="$PG_DIR" dirs=()
  while [ "$d" != "/" ] && [ -n "$d" ]; do dirs=("$d" "${dirs[@]}"); d="$(dirname "$d")"; done
  for d in "${dirs[@]}"; do
    [ -d "$d" ] || continue
    if ! runuser -u "$PG_OS_USER" -- test -x "$d" 2>/dev/null; then
      log "note: chmod o+x $d so the '$PG_OS_USER' user can reach the data directory"
      chmod o+x "$d"
    fi
  done
}

pg_prepare_dirs() {
  if is_root && ! id "$PG_OS_USER" >/dev/null 2>&1; then
    die "system user '$PG_OS_USER' does not exist (install the postgresql package)"
  fi
  mkdir -p "$PG_DIR" "$PG_SOCK"
  if is_root; then
    chown "$PG_OS_USER:" "$PG_DIR" "$PG_SOCK"
    if [ -d "$PG_DATA" ]; then chown -R "$PG_OS_USER:" "$PG_DATA"; fi
    if [ -f "$PG_LOG" ]; then chown "$PG_OS_USER:" "$PG_LOG"; fi
  fi
  chmod 755 "$PG_DIR"
  chmod 700 "$PG_SOCK"
  pg_ensure_traversable
}

pg_pid() { head -n 1 "$PG_DATA/postmaster.pid" 2>/dev/null || true; }

pg_running() { # our postmaster (pid from postmaster.pid) is alive and is a postgres process
  local pid
  pid="$(pg_pid)"
  pid_alive "$pid" && grep -qa -e postgres -e postmaster "/proc/$pid/cmdline" 2>/dev/null
}

pg_ready() {
  pg_find_bin noinstall || return 1
  "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 2 >/dev/null 2>&1
}

pg_initdb() {
  [ -f "$PG_DATA/PG_VERSION" ] && return 0
  pg_find_bin
  log "initializing PostgreSQL cluster in $PG_DATA ($("$PG_BIN/postgres" --version))"
  rm -rf "$PG_DATA"
  local locale_opt=(--no-locale)
  if locale -a 2>/dev/null | grep -qix 'c\.utf-\?8'; then locale_opt=(--locale=C.UTF-8); fi
  if ! as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -E UTF8 "${locale_opt[@]}" \
      --data-checksums --auth-local=peer --auth-host=scram-sha-256 >"$PG_DIR/initdb.log" 2>&1; then
    tail_log "$PG_DIR/initdb.log"
    rm -rf "$PG_DATA"
    die "initdb failed"
  fi
  # our settings live in an included file that is rewritten on every start (ports may change)
  echo "include_if_exists = 'eventops.conf'" | as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null
}

pg_write_conf() {
  local tmp
  tmp="$(mktemp)"
  cat >"$tmp" <<EOF
# Written by scripts/services.sh on every start; do not edit (edit the script).
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCK'
unix_socket_permissions = 0700
max_connections = 200
shared_buffers = 256MB
work_mem = 16MB
maintenance_work_mem = 256MB
effective_cache_size = 2GB
# durability stays ON: the test suite checks crash safety
fsync = on
synchronous_commit = on
full_page_writes = on
wal_level = minimal
max_wal_senders = 0
wal_buffers = 16MB
max_wal_size = 2GB
min_wal_size = 256MB
checkpoint_timeout = 15min
checkpoint_completion_target = 0.9
random_page_cost = 1.1
jit = off
timezone = 'UTC'
log_timezone = 'UTC'
password_encryption = 'scram-sha-256'
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
log_min_duration_statement = 2000
log_checkpoints = off
EOF
  as_pg tee "$PG_DATA/eventops.conf" <"$tmp" >/dev/null
  # pg_hba: peer for the postgres OS user on the private socket, scram everywhere else
  cat >"$tmp" <<'EOF'
# Written by scripts/services.sh. Loopback only.
# TYPE  DATABASE  USER      ADDRESS         METHOD
local   all       postgres                  peer
local   all       all                       scram-sha-256
host    all       all       127.0.0.1/32    scram-sha-256
host    all       all       ::1/128         scram-sha-256
EOF
  as_pg tee "$PG_DATA/pg_hba.conf" <"$tmp" >/dev/null
  rm -f "$tmp"
}

pg_clear_stale() {
  # After a crash/kill -9 the postmaster.pid (and socket lock files) may remain. PostgreSQL
  # itself ignores a stale pid file whose pid is dead, but not one whose pid got reused by an
  # unrelated process (common in containers): remove it when that pid is not a postgres process.
  local pidfile="$PG_DATA/postmaster.pid" pid
  [ -f "$pidfile" ] || return 0
  pg_running && return 0
  pid="$(pg_pid)"
  log "removing stale $pidfile (pid ${pid:-?} is not a running postmaster)"
  rm -f "$pidfile" "$PG_SOCK/.s.PGSQL.$PG_PORT" "$PG_SOCK/.s.PGSQL.$PG_PORT.lock"
}

pg_bootstrap_sql() {
  # create role + databases idempotently (as the postgres superuser over the private socket)
  local psql=("$PG_BIN/psql" -h "$PG_SOCK" -p "$PG_PORT" -U postgres -d postgres -X -q -v ON_ERROR_STOP=1)
  local sql
  sql="DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE') THEN
    CREATE ROLE $PG_ROLE LOGIN SUPERUSER PASSWORD '$PG_PASSWORD';
  END IF;
END \$\$;"
  local db
  for db in "${PG_DATABASES[@]}"; do
    sql+="
SELECT 'CREATE DATABASE $db OWNER $PG_ROLE' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$db')\\gexec"
  done
  if ! printf '%s\n' "$sql" | as_pg "${psql[@]}" >>"$PG_DIR/bootstrap.log" 2>&1; then
    tail_log "$PG_DIR/bootstrap.log" 20
    die "creating role/databases failed"
  fi
}

pg_up() {
  ensure_state_dir
  pg_paths
  if pg_running && pg_ready; then
    pg_find_bin
    pg_bootstrap_sql
    log "postgres: already up on 127.0.0.1:$PG_PORT"
    return 0
  fi
  pg_find_bin
  pg_prepare_dirs
  pg_initdb
  local i
  if pg_running; then
    # alive but not answering: still starting / in crash recovery, or running on another port
    log "postgres: pid $(pg_pid) is running but not ready on 127.0.0.1:$PG_PORT; waiting"
    for ((i = 0; i < PG_START_TIMEOUT * 5; i++)); do
      pg_running || break
      pg_ready && break
      sleep 0.2
    done
    if pg_running && ! pg_ready; then
      tail_log "$PG_LOG"
      die "postgres is running (pid $(pg_pid)) but not ready on port $PG_PORT; '$0 pg-down' and retry"
    fi
  fi
  if ! pg_running; then
    pg_clear_stale
    if port_open "$PG_PORT"; then
      who_listens "$PG_PORT"
      die "port 127.0.0.1:$PG_PORT is already in use by another process (not our PostgreSQL); set EVENTOPS_PG_PORT to a free port"
    fi
    pg_write_conf
    touch "$PG_LOG"
    if is_root; then chown "$PG_OS_USER:" "$PG_LOG"; fi
    log "postgres: starting on 127.0.0.1:$PG_PORT (log: $PG_LOG)"
    local attempt ok=0
    for attempt in 1 2 3 4 5; do
      # 9>&-: the postmaster must not inherit our lock file descriptor
      if as_pg "$PG_BIN/pg_ctl" start -D "$PG_DATA" -l "$PG_LOG" -w -t "$PG_START_TIMEOUT" >/dev/null 2>&1 9>&-; then
        ok=1
        break
      fi
      # after a kill -9 of the postmaster its children may still hold the shared memory for a
      # moment ("pre-existing shared memory block is still in use"): retry shortly
      if tail -n 5 "$PG_LOG" | grep -q "pre-existing shared memory block"; then
        log "postgres: old server processes still exiting; retry $attempt"
        sleep 2
        pg_clear_stale
        continue
      fi
      break
    done
    if [ "$ok" != 1 ]; then
      tail_log "$PG_LOG"
      die "postgres failed to start"
    fi
    for ((i = 0; i < PG_START_TIMEOUT * 5; i++)); do pg_ready && break; sleep 0.2; done
    if ! pg_ready; then
      tail_log "$PG_LOG"
      die "postgres started but pg_isready fails on 127.0.0.1:$PG_PORT"
    fi
  fi
  pg_bootstrap_sql
  log "postgres: up on 127.0.0.1:$PG_PORT (user $PG_ROLE, databases ${PG_DATABASES[*]})"
}

pg_down() {
  resolve_state_dir
  pg_paths
  if [ ! -f "$PG_DATA/PG_VERSION" ]; then log "postgres: not initialized"; return 0; fi
  if ! pg_running; then
    pg_clear_stale
    log "postgres: not running"
    return 0
  fi
  pg_find_bin
  log "postgres: stopping (fast, pid $(pg_pid))"
  if ! as_pg "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m fast -w -t 60 >/dev/null 2>&1; then
    log "postgres: fast shutdown timed out; using immediate"
    if ! as_pg "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m immediate -w -t 30 >/dev/null 2>&1; then
      # a postmaster stuck in I/O on a loaded machine: kill it and its children, then wait
      # (crash recovery on the next start, like after a power cut)
      local pid i
      pid="$(pg_pid)"
      log "postgres: immediate shutdown timed out; killing pid $pid"
      pkill -KILL -P "$pid" 2>/dev/null || true
      kill -KILL "$pid" 2>/dev/null || true
      for i in $(seq 1 120); do pg_running || break; sleep 0.5; done
      if pg_running; then tail_log "$PG_LOG"; die "could not stop postgres (pid $pid)"; fi
      pg_clear_stale
    fi
  fi
  log "postgres: stopped"
}

pg_status() {
  resolve_state_dir
  pg_paths
  if [ -f "$PG_DATA/PG_VERSION" ] && pg_running && pg_ready; then
    echo "postgres: up    127.0.0.1:$PG_PORT  pid $(pg_pid)  data $PG_DATA"
    return 0
  fi
  echo "postgres: down  (127.0.0.1:$PG_PORT, data $PG_DATA)"
  return 1
}

# ----------------------------------------------------------------------------------------------
# Kafka
# ----------------------------------------------------------------------------------------------
K_DIR="" K_LIBS="" K_DATA="" K_LOGS="" K_PROPS="" K_PID="" K_OUT=""

kafka_paths() {
  K_DIR="$STATE_DIR/kafka"
  K_LIBS="$K_DIR/libs"
  K_DATA="$K_DIR/data"
  K_LOGS="$K_DIR/logs"
  K_PROPS="$K_DIR/server.properties"
  K_PID="$K_DIR/kafka.pid"
  K_OUT="$K_LOGS/kafka.out"
}

kafka_pid() { # prints the pid of our broker if it runs, else fails
  local pid=""
  [ -f "$K_PID" ] && pid="$(cat "$K_PID" 2>/dev/null || true)"
  if pid_alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $K_PROPS"; then
    echo "$pid"
    return 0
  fi
  # pid file lost but our broker (identified by its own server.properties path) still runs?
  if command -v pgrep >/dev/null 2>&1; then
    pid="$(pgrep -f -x ".*kafka\.Kafka $K_PROPS" 2>/dev/null | head -n 1 || true)"
    if [ -n "$pid" ]; then
      echo "$pid" >"$K_PID"
      echo "$pid"
      return 0
    fi
  fi
  return 1
}

kafka_java_check() {
  if ! command -v "$JAVA" >/dev/null 2>&1; then
    apt_install openjdk-17-jre-headless
  fi
  local v
  v="$("$JAVA" -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2; exit}')"
  [ -n "$v" ] && [ "${v%%.*}" -ge 17 ] 2>/dev/null || die "Kafka 4.x needs Java 17+ (found '${v:-unknown}' from $JAVA)"
}

kafka_libs() {
  local want have=""
  want="$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)"
  [ -f "$K_DIR/libs.sha256" ] && have="$(cat "$K_DIR/libs.sha256")"
  if [ "$want" = "$have" ] && compgen -G "$K_LIBS/kafka_2.13-*.jar" >/dev/null; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || apt_install maven
  log "kafka: resolving jars from Maven Central (scripts/kafka/pom.xml) into $K_LIBS"
  rm -rf "$K_LIBS.tmp"
  if ! mvn -q -B -f "$KAFKA_POM" dependency:copy-dependencies \
      -DoutputDirectory="$K_LIBS.tmp" -DincludeScope=runtime >"$K_DIR/mvn.log" 2>&1; then
    tail_log "$K_DIR/mvn.log"
    rm -rf "$K_LIBS.tmp"
    die "mvn dependency:copy-dependencies failed"
  fi
  compgen -G "$K_LIBS.tmp/kafka_2.13-*.jar" >/dev/null || die "mvn did not produce kafka_2.13 jar (see $K_DIR/mvn.log)"
  rm -rf "$K_LIBS"
  mv "$K_LIBS.tmp" "$K_LIBS"
  echo "$want" >"$K_DIR/libs.sha256"
}

kafka_write_props() {
  cat >"$K_PROPS.tmp" <<EOF
# Written by scripts/services.sh on every start; edit the script, not this file.
node.id=1
process.roles=broker,controller
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CPORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CPORT
log.dirs=$K_DATA

# single node
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
# after a kill -9 the controller keeps the old broker registration until its session expires
# (default 9 s, seen as DUPLICATE_BROKER_REGISTRATION): shorter on one loopback node
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=1000

# topics are created explicitly (eventops topics create)
num.partitions=6
auto.create.topics.enable=false
delete.topic.enable=true

# 2 MB messages so 100 KB+ test payloads (and batches of them) fit
message.max.bytes=2097152
replica.fetch.max.bytes=2097152

# small machine
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=2
log.cleaner.dedupe.buffer.size=33554432
log.retention.hours=168
log.segment.bytes=268435456
EOF
  mv "$K_PROPS.tmp" "$K_PROPS"
}

kafka_format() {
  # Format once. The controller endpoint is recorded at format time (--standalone), so a changed
  # controller port needs a re-format (dev data is dropped, with a warning).
  local formatted_cport=""
  [ -f "$K_DIR/formatted.cport" ] && formatted_cport="$(cat "$K_DIR/formatted.cport")"
  if [ -f "$K_DATA/meta.properties" ] && [ "$formatted_cport" = "$KAFKA_CPORT" ]; then
    return 0
  fi
  if [ -f "$K_DATA/meta.properties" ]; then
    log "kafka: controller port changed ($formatted_cport -> $KAFKA_CPORT): re-formatting $K_DATA (topic data is dropped)"
  fi
  rm -rf "$K_DATA"
  local cid
  if [ -s "$K_DIR/cluster.id" ]; then
    cid="$(cat "$K_DIR/cluster.id")"
  else
    cid="$("$JAVA" -cp "$K_LIBS/*" kafka.tools.StorageTool random-uuid 2>"$K_LOGS/format.log" | tail -n 1)"
    [ -n "$cid" ] || { tail_log "$K_LOGS/format.log"; die "kafka StorageTool random-uuid failed"; }
    echo "$cid" >"$K_DIR/cluster.id"
  fi
  log "kafka: formatting $K_DATA (cluster id $cid)"
  if ! "$JAVA" -Dlog4j2.configurationFile="file:$KAFKA_LOG4J" -Dkafka.logs.dir="$K_LOGS" \
      -cp "$K_LIBS/*" kafka.tools.StorageTool format --standalone -t "$cid" -c "$K_PROPS" \
      >>"$K_LOGS/format.log" 2>&1; then
    tail_log "$K_LOGS/format.log"
    die "kafka StorageTool format failed"
  fi
  echo "$KAFKA_CPORT" >"$K_DIR/formatted.cport"
}

kafka_probe() { # one readiness probe: the broker answers a metadata request
  if [ -x "$PYTHON" ] && "$PYTHON" -c 'import confluent_kafka' >/dev/null 2>&1; then
    "$PYTHON" - "127.0.0.1:$KAFKA_PORT" >/dev/null 2>&1 <<'EOF'
import sys
from confluent_kafka.admin import AdminClient
admin = AdminClient({"bootstrap.servers": sys.argv[1], "log_level": 0, "socket.timeout.ms": 3000})
md = admin.list_topics(timeout=3)
sys.exit(0 if md.brokers else 1)
EOF
  else
    port_open "$KAFKA_PORT" && grep -q "Kafka Server started" <(tail -c "+$((${KAFKA_LOG_OFFSET:-0} + 1))" "$K_LOGS/server.log" 2>/dev/null)
  fi
}

kafka_start() { # start the JVM in the background (does not wait)
  ensure_state_dir
  kafka_paths
  mkdir -p "$K_DIR" "$K_LOGS"
  local pid
  if pid="$(kafka_pid)"; then
    KAFKA_STARTED=0
    return 0
  fi
  rm -f "$K_PID"
  [ -f "$KAFKA_LOG4J" ] || die "missing $KAFKA_LOG4J"
  local p
  for p in "$KAFKA_PORT" "$KAFKA_CPORT"; do
    if port_open "$p"; then
      who_listens "$p"
      die "port 127.0.0.1:$p is already in use by another process (not our Kafka); set EVENTOPS_KAFKA_PORT / EVENTOPS_KAFKA_CONTROLLER_PORT to free ports"
    fi
  done
  kafka_java_check
  kafka_libs
  kafka_write_props
  kafka_format
  KAFKA_LOG_OFFSET="$(stat -c %s "$K_LOGS/server.log" 2>/dev/null || echo 0)"
  printf '\n===== %s starting kafka =====\n' "$(date -Is)" >>"$K_OUT"
  log "kafka: starting on 127.0.0.1:$KAFKA_PORT (controller $KAFKA_CPORT, log: $K_LOGS/server.log)"
  # setsid: own session, so Ctrl-C / a killed process group of the caller does not stop it;
  # the inner shell writes its own pid and then exec's the JVM (same pid).
  setsid nohup bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$K_PID" \
    "$JAVA" "-Xmx$KAFKA_HEAP" -Xms256m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="file:$KAFKA_LOG4J" -Dkafka.logs.dir="$K_LOGS" \
    -cp "$K_LIBS/*" kafka.Kafka "$K_PROPS" >>"$K_OUT" 2>&1 </dev/null 9>&- &
  local i
  for ((i = 0; i < 50; i++)); do [ -s "$K_PID" ] && break; sleep 0.05; done
  KAFKA_STARTED=1
  KAFKA_START_TS="$(date +%s)"
}

kafka_tail_new_log() { # the server.log lines written since this start (or the last 40)
  local f="$K_LOGS/server.log" off="${KAFKA_LOG_OFFSET:-}"
  if [ -n "$off" ] && [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt "$off" ]; then
    printf -- '----- %s (this start, last 40 lines) -----\n' "$f" >&2
    tail -c "+$((off + 1))" "$f" | tail -n 40 >&2 || true
    printf -- '-----\n' >&2
  elif [ -z "$off" ]; then
    tail_log "$f" 40
  else
    log "(nothing new in $f)"
  fi
}

kafka_wait() {
  local pid deadline
  deadline=$(( $(date +%s) + KAFKA_START_TIMEOUT ))
  while :; do
    if ! pid="$(kafka_pid)"; then
      tail_log "$K_OUT" 20
      kafka_tail_new_log
      die "kafka exited during start-up"
    fi
    if port_open "$KAFKA_PORT" && kafka_probe; then break; fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      kafka_tail_new_log
      die "kafka (pid $pid) not ready on 127.0.0.1:$KAFKA_PORT after ${KAFKA_START_TIMEOUT}s"
    fi
    sleep 0.3
  done
  if [ "${KAFKA_STARTED:-0}" = 1 ]; then
    log "kafka: up on 127.0.0.1:$KAFKA_PORT (pid $pid, ready in $(( $(date +%s) - KAFKA_START_TS ))s)"
  else
    log "kafka: already up on 127.0.0.1:$KAFKA_PORT (pid $pid)"
  fi
}

kafka_up() { kafka_start; kafka_wait; }

kafka_down() {
  resolve_state_dir
  kafka_paths
  local pid
  if ! pid="$(kafka_pid)"; then
    rm -f "$K_PID"
    log "kafka: not running"
    return 0
  fi
  log "kafka: stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for ((i = 0; i < 300; i++)); do pid_alive "$pid" || break; sleep 0.1; done
  if pid_alive "$pid"; then
    log "kafka: still alive after 30 s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do pid_alive "$pid" || break; sleep 0.1; done
  fi
  rm -f "$K_PID"
  log "kafka: stopped"
}

kafka_status() {
  resolve_state_dir
  kafka_paths
  local pid
  if pid="$(kafka_pid)" && port_open "$KAFKA_PORT"; then
    echo "kafka:    up    127.0.0.1:$KAFKA_PORT  pid $pid  (controller 127.0.0.1:$KAFKA_CPORT)"
    return 0
  fi
  echo "kafka:    down  (127.0.0.1:$KAFKA_PORT)"
  return 1
}

# ----------------------------------------------------------------------------------------------
# Alertmanager
# ----------------------------------------------------------------------------------------------
AM_DIR="" AM_CONF="" AM_PID="" AM_LOG=""

am_paths() {
  AM_DIR="$STATE_DIR/alertmanager"
  AM_CONF="$AM_DIR/alertmanager.yml"
  AM_PID="$AM_DIR/am.pid"
  AM_LOG="$AM_DIR/am.log"
}

am_bin() {
  local b
  for b in prometheus-alertmanager alertmanager; do
    if command -v "$b" >/dev/null 2>&1; then command -v "$b"; return 0; fi
  done
  return 1
}

am_pid() {
  local pid=""
  [ -f "$AM_PID" ] && pid="$(cat "$AM_PID" 2>/dev/null || true)"
  if pid_alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--config.file=$AM_CONF"; then
    echo "$pid"
    return 0
  fi
  return 1
}

am_ready() { curl -fsS -m 2 "http://127.0.0.1:$AM_PORT/-/ready" >/dev/null 2>&1; }

am_up() {
  ensure_state_dir
  am_paths
  local pid bin
  if pid="$(am_pid)" && am_ready; then
    log "alertmanager: already up on 127.0.0.1:$AM_PORT (pid $pid)"
    return 0
  fi
  bin="$(am_bin)" || { apt_install prometheus-alertmanager; bin="$(am_bin)"; } || die "no alertmanager binary after installing prometheus-alertmanager"
  if port_open "$AM_PORT"; then
    die "port $AM_PORT is taken by $(who_listens "$AM_PORT"); set EVENTOPS_ALERTMANAGER_PORT to a free port"
  fi
  mkdir -p "$AM_DIR/data"
  # one route to a receiver without integrations: alerts are received, grouped and kept
  # (GET /api/v2/alerts); nothing is sent anywhere from here
  printf '%s\n' \
    'route:' \
    '  receiver: eventops-local' \
    '  group_by: [tenant, alertname, host]' \
    '  group_wait: 1s' \
    '  group_interval: 5s' \
    '  repeat_interval: 1h' \
    'receivers:' \
    '  - name: eventops-local' >"$AM_CONF"
  log "alertmanager: starting on 127.0.0.1:$AM_PORT (log: $AM_LOG)"
  setsid nohup bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$AM_PID" \
    "$bin" "--config.file=$AM_CONF" "--storage.path=$AM_DIR/data" \
    "--web.listen-address=127.0.0.1:$AM_PORT" "--cluster.listen-address=" \
    "--log.level=warn" >>"$AM_LOG" 2>&1 </dev/null 9>&- &
  local deadline=$(( $(date +%s) + 30 ))
  until am_ready; do
    if ! am_pid >/dev/null && [ "$(date +%s)" -ge "$(( deadline - 28 ))" ]; then
      tail_log "$AM_LOG" 20
      die "alertmanager exited during start-up"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      tail_log "$AM_LOG" 20
      die "alertmanager not ready on 127.0.0.1:$AM_PORT after 30s"
    fi
    sleep 0.2
  done
  log "alertmanager: up on 127.0.0.1:$AM_PORT (pid $(am_pid || echo '?'))"
}

am_down() {
  resolve_state_dir
  am_paths
  local pid i
  if ! pid="$(am_pid)"; then
    rm -f "$AM_PID"
    log "alertmanager: not running"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do pid_alive "$pid" || break; sleep 0.1; done
  if pid_alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$AM_PID"
  log "alertmanager: stopped"
}

am_status() {
  resolve_state_dir
  am_paths
  local pid
  if pid="$(am_pid)" && am_ready; then
    echo "alertmanager: up  127.0.0.1:$AM_PORT  pid $pid"
    return 0
  fi
  echo "alertmanager: down  (127.0.0.1:$AM_PORT)"
  return 1
}

# ----------------------------------------------------------------------------------------------
# Prometheus
# ----------------------------------------------------------------------------------------------
# Debian's binary run directly (not its systemd unit, which would listen on :9090 as the
# `prometheus` user): our own port, config and TSDB under the state directory.
PROM_DIR="" PROM_CONF="" PROM_PID="" PROM_LOG=""
PROM_START_TIMEOUT="${EVENTOPS_PROMETHEUS_START_TIMEOUT:-60}"

prom_paths() {
  PROM_DIR="$STATE_DIR/prometheus"
  PROM_CONF="$PROM_DIR/prometheus.yml"
  PROM_PID="$PROM_DIR/prometheus.pid"
  PROM_LOG="$PROM_DIR/prometheus.log"
}

prom_bin() {
  local b
  for b in /usr/bin/prometheus prometheus; do
    if command -v "$b" >/dev/null 2>&1; then command -v "$b"; return 0; fi
  done
  return 1
}

prom_pid() {
  local pid=""
  [ -f "$PROM_PID" ] && pid="$(cat "$PROM_PID" 2>/dev/null || true)"
  if pid_alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--config.file=$PROM_CONF"; then
    echo "$pid"
    return 0
  fi
  return 1
}

prom_ready() { curl -fsS -m 2 "http://127.0.0.1:$PROM_PORT/-/ready" >/dev/null 2>&1; }

prom_up() {
  ensure_state_dir
  prom_paths
  local pid bin
  if pid="$(prom_pid)" && prom_ready; then
    log "prometheus: already up on 127.0.0.1:$PROM_PORT (pid $pid)"
    return 0
  fi
  if pid="$(prom_pid)"; then # alive but not ready (still replaying its WAL?): stop and restart
    log "prometheus: pid $pid is not ready; restarting it"
    prom_down
    prom_paths
  fi
  rm -f "$PROM_PID"
  bin="$(prom_bin)" || { apt_install prometheus; bin="$(prom_bin)"; } || die "no prometheus binary after installing prometheus"
  if port_open "$PROM_PORT"; then
    die "port $PROM_PORT is taken by $(who_listens "$PROM_PORT"); set EVENTOPS_PROMETHEUS_PORT to a free port"
  fi
  mkdir -p "$PROM_DIR/data"
  if [ ! -s "$PROM_CONF" ]; then
    # no scrape jobs: tests (and you) write theirs here and POST /-/reload
    printf '%s\n' \
      '# Written by scripts/services.sh when absent; rewrite it and POST /-/reload.' \
      'global:' \
      '  scrape_interval: 15s' \
      '  evaluation_interval: 15s' \
      'scrape_configs: []' >"$PROM_CONF"
  fi
  log "prometheus: starting on 127.0.0.1:$PROM_PORT (log: $PROM_LOG)"
  setsid nohup bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PROM_PID" \
    "$bin" "--config.file=$PROM_CONF" "--storage.tsdb.path=$PROM_DIR/data" \
    "--web.listen-address=127.0.0.1:$PROM_PORT" "--web.enable-lifecycle" \
    "--storage.tsdb.retention.time=2d" "--log.level=warn" >>"$PROM_LOG" 2>&1 </dev/null 9>&- &
  local i
  for ((i = 0; i < 50; i++)); do [ -s "$PROM_PID" ] && break; sleep 0.05; done
  local deadline=$(( $(date +%s) + PROM_START_TIMEOUT ))
  until prom_ready; do
    if ! prom_pid >/dev/null; then
      tail_log "$PROM_LOG" 20
      die "prometheus exited during start-up"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      tail_log "$PROM_LOG" 20
      die "prometheus not ready on 127.0.0.1:$PROM_PORT after ${PROM_START_TIMEOUT}s"
    fi
    sleep 0.2
  done
  log "prometheus: up on 127.0.0.1:$PROM_PORT (pid $(prom_pid || echo '?'))"
}

prom_down() {
  resolve_state_dir
  prom_paths
  local pid i
  if ! pid="$(prom_pid)"; then
    rm -f "$PROM_PID"
    log "prometheus: not running"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do pid_alive "$pid" || break; sleep 0.1; done
  if pid_alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$PROM_PID"
  log "prometheus: stopped"
}

prom_status() {
  resolve_state_dir
  prom_paths
  local pid
  if pid="$(prom_pid)" && prom_ready; then
    echo "prometheus: up  127.0.0.1:$PROM_PORT  pid $pid"
    return 0
  fi
  echo "prometheus: down  (127.0.0.1:$PROM_PORT)"
  return 1
}

# ----------------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------------
cmd_env() {
  resolve_state_dir
  cat <<EOF
export EVENTOPS_PG_HOST=127.0.0.1
export EVENTOPS_PG_PORT=$PG_PORT
export EVENTOPS_PG_USER=$PG_ROLE
export EVENTOPS_PG_PASSWORD=$PG_PASSWORD
export EVENTOPS_PG_DATABASE=eventops
export EVENTOPS_MLFLOW_DATABASE=mlflow
export EVENTOPS_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
export EVENTOPS_ALERTMANAGER_URL=http://127.0.0.1:$AM_PORT
export EVENTOPS_PROMETHEUS_URL=http://127.0.0.1:$PROM_PORT
export EVENTOPS_PROMETHEUS_CONFIG=$STATE_DIR/prometheus/prometheus.yml
export MLFLOW_TRACKING_URI=postgresql+psycopg://$PG_ROLE:$PG_PASSWORD@127.0.0.1:$PG_PORT/mlflow
EOF
}

cmd_logs() {
  resolve_state_dir
  pg_paths
  kafka_paths
  echo "postgres: $PG_LOG"
  echo "kafka:    $K_LOGS/server.log  $K_LOGS/controller.log  $K_OUT"
  am_paths
  echo "alertmanager: $AM_LOG"
  prom_paths
  echo "prometheus: $PROM_LOG"
}

cmd_reset() {
  with_lock
  prom_down
  am_down
  kafka_down
  pg_down
  [ -n "$STATE_DIR" ] && [ "$STATE_DIR" != "/" ] || die "refusing to delete '$STATE_DIR'"
  [ -e "$STATE_DIR/$MARKER" ] || die "refusing to delete $STATE_DIR: no $MARKER marker"
  pg_paths
  case "$PG_SOCK" in "$STATE_DIR"/*) ;; *) rm -rf "$PG_SOCK" ;; esac
  log "deleting $STATE_DIR"
  exec 9>&-
  rm -rf "$STATE_DIR"
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
}

main() {
  local cmd="${1:-}"
  case "$cmd" in
    up)
      with_lock
      kafka_start      # the JVM boots while PostgreSQL starts
      pg_up
      am_up
      prom_up
      kafka_wait
      log "all services up (${SECONDS}s)"
      ;;
    down) with_lock; prom_down; am_down; kafka_down; pg_down ;;
    pg-up) with_lock; pg_up ;;
    pg-down) with_lock; pg_down ;;
    kafka-up) with_lock; kafka_up ;;
    kafka-down) with_lock; kafka_down ;;
    am-up) with_lock; am_up ;;
    am-down) with_lock; am_down ;;
    prom-up) with_lock; prom_up ;;
    prom-down) with_lock; prom_down ;;
    status)
      local rc=0
      pg_status || rc=1
      kafka_status || rc=1
      am_status || rc=1
      prom_status || rc=1
      return "$rc"
      ;;
    reset) cmd_reset ;;
    env) cmd_env ;;
    logs) cmd_logs ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
