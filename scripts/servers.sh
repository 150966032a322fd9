#!/usr/bin/env bash
# Make sure the servers the tests need answer on loopback:
#   Redis 127.0.0.1:6379, PostgreSQL 127.0.0.1:5432 (user postgres, trust, db "test"),
#   ZooKeeper 127.0.0.1:2181, memcached 127.0.0.1:11211, MariaDB 127.0.0.1:3306 (root, no password,
#   db "test").
# And the multi-node engines, on loopback ports of their own:
#   redis-cluster       6 nodes, 3 masters + 3 replicas, on 127.0.0.1:7000-7005 (bus ports: port + 10000);
#   redis-sentinel      master 127.0.0.1:6390, replica 127.0.0.1:6391, sentinels 127.0.0.1:26390-26392,
#                       service "mymaster" (down after 1 s, failover timeout 3 s);
#   zookeeper-ensemble  3 nodes, clients on 127.0.0.1:2191-2193 (quorum port: client port + 700,
#                       election port: client port + 1700).
# The ports (and the database name) follow AIODURABLEDICT_REDIS_URL, AIODURABLEDICT_POSTGRES_URL,
# AIODURABLEDICT_ZOOKEEPER, AIODURABLEDICT_MEMCACHED and AIODURABLEDICT_MYSQL_URL when they are set, and
# the engines' follow AIODURABLEDICT_REDIS_CLUSTER (6 "host:port", comma-separated),
# AIODURABLEDICT_REDIS_SENTINEL (3 sentinels), AIODURABLEDICT_REDIS_SENTINEL_SERVERS (the master, then
# the replica), AIODURABLEDICT_REDIS_SENTINEL_SERVICE and AIODURABLEDICT_ZOOKEEPER_ENSEMBLE (3 nodes).
#
# Usage: scripts/servers.sh start|stop|status [SERVER...] | env | install
#   start   for each server: if something already answers on its port, leave it alone; otherwise
#           install its Debian package when missing, start it as a daemon and wait until it answers.
#           An engine's missing nodes are started and join the others; an engine that answers but is
#           broken (a cluster whose state is "fail", sentinels that disagree, no leader) is an error.
#   stop    stop only the servers that this script started (pids are kept in the state dir).
#   status  say which servers answer, and whether each engine is healthy; exit 1 if any is not.
#   SERVER  any of redis postgres zookeeper memcached mariadb redis-cluster redis-sentinel
#           zookeeper-ensemble (default: all of them).
#   env     print the environment variables the tests read (eval-able).
#   install install whichever of the servers' Debian packages is missing (the fault tests run
#           private instances, so they need the binaries even where the shared servers run elsewhere).
#
# Each wait for a server started here is bounded by $AIODURABLEDICT_SERVERS_WAIT seconds (default 90);
# an engine found running gets $AIODURABLEDICT_SERVERS_SETTLE seconds (default 20) to look healthy.
# State (pids, logs, data) lives in $AIODURABLEDICT_SERVERS_DIR (default: <project>/.servers).
# PostgreSQL data, when this script has to create a cluster, lives under /tmp (the postgres user
# must be able to reach it, which a project folder under /root would not allow).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${AIODURABLEDICT_SERVERS_DIR:-$ROOT/.servers}"
WAIT_SECONDS="${AIODURABLEDICT_SERVERS_WAIT:-90}"
HOST=127.0.0.1

# "host:port" of a URL or address ($1), or $2 when $1 is empty.
hostport() {
    local rest="${1:-$2}"
    rest="${rest#*://}"
    rest="${rest#*@}"
    rest="${rest%%/*}"
    rest="${rest%%\?*}"
    echo "$rest"
}

# The ports come from the same variables the tests read, so a non-default port set there is the one
# started and checked here. Only loopback addresses are managed.
REDIS_ADDR="$(hostport "${AIODURABLEDICT_REDIS_URL:-}" "$HOST:6379")"
PG_ADDR="$(hostport "${AIODURABLEDICT_POSTGRES_URL:-}" "$HOST:5432")"
ZK_ADDR="$(hostport "${AIODURABLEDICT_ZOOKEEPER:-}" "$HOST:2181")"
MC_ADDR="$(hostport "${AIODURABLEDICT_MEMCACHED:-}" "$HOST:11211")"
MY_ADDR="$(hostport "${AIODURABLEDICT_MYSQL_URL:-}" "$HOST:3306")"

# Ports of a comma-separated address list ($1, or $2 when empty) into the array named $3, which must
# end up with $4 entries.
list_ports() {
    local list="${1:-$2}" item items
    local -n into="$3"
    into=()
    IFS=',' read -r -a items <<<"$list"
    for item in "${items[@]}"; do
        item="$(hostport "$item" "")"
        [[ -n "$item" ]] || continue
        ADDRS+=("$item")
        into+=("${item##*:}")
    done
    if ((${#into[@]} != $4)) && [[ "${CMD:-}" != env ]]; then
        printf 'servers: ERROR: %s must name %s addresses, not "%s"\n' "$5" "$4" "$list" >&2
        exit 1
    fi
}
CMD="${1:-}"
ADDRS=("$REDIS_ADDR" "$PG_ADDR" "$ZK_ADDR" "$MC_ADDR" "$MY_ADDR")
list_ports "${AIODURABLEDICT_REDIS_CLUSTER:-}" \
    "$HOST:7000,$HOST:7001,$HOST:7002,$HOST:7003,$HOST:7004,$HOST:7005" RC_PORTS 6 AIODURABLEDICT_REDIS_CLUSTER
list_ports "${AIODURABLEDICT_REDIS_SENTINEL:-}" "$HOST:26390,$HOST:26391,$HOST:26392" \
    SN_PORTS 3 AIODURABLEDICT_REDIS_SENTINEL
list_ports "${AIODURABLEDICT_REDIS_SENTINEL_SERVERS:-}" "$HOST:6390,$HOST:6391" \
    SD_PORTS 2 AIODURABLEDICT_REDIS_SENTINEL_SERVERS
list_ports "${AIODURABLEDICT_ZOOKEEPER_ENSEMBLE:-}" "$HOST:2191,$HOST:2192,$HOST:2193" \
    ZE_PORTS 3 AIODURABLEDICT_ZOOKEEPER_ENSEMBLE
SN_SERVICE="${AIODURABLEDICT_REDIS_SENTINEL_SERVICE:-mymaster}"
[[ "$SN_SERVICE" != *[!A-Za-z0-9_.-]* ]] || { echo "servers: ERROR: bad sentinel service name $SN_SERVICE" >&2; exit 1; }
# Redis Cluster's bus and ZooKeeper's peer ports sit at fixed offsets from the client ports.
RC_BUS_OFFSET=10000
ZE_QUORUM_OFFSET=700
ZE_ELECTION_OFFSET=1700
for addr in "${ADDRS[@]}"; do
    case "${addr%:*}" in
        127.0.0.1 | localhost) ;;
        *)
            if [[ "${1:-}" != env ]]; then
                printf 'servers: ERROR: only 127.0.0.1 is managed here, not %s (unset the AIODURABLEDICT_* variable)\n' "$addr" >&2
                exit 1
            fi
            ;;
    esac
done
REDIS_PORT="${REDIS_ADDR##*:}"
PG_PORT="${PG_ADDR##*:}"
ZK_PORT="${ZK_ADDR##*:}"
MC_PORT="${MC_ADDR##*:}"
MY_PORT="${MY_ADDR##*:}"
PG_DB="${AIODURABLEDICT_POSTGRES_URL:-postgres://postgres@$HOST:5432/test}"
PG_DB="${PG_DB#*://}"
PG_DB="${PG_DB#*/}"
PG_DB="${PG_DB%%\?*}"
[[ -n "$PG_DB" && "$PG_DB" != *[!A-Za-z0-9_]* ]] || PG_DB=test

log() { printf 'servers: %s\n' "$*" >&2; }
die() { printf 'servers: ERROR: %s\n' "$*" >&2; exit 1; }

# --- probes -------------------------------------------------------------------------------------

# True when a TCP connection to 127.0.0.1:$1 succeeds within two seconds.
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

# Send $2 to port $1 and succeed when the reply contains $3 (protocol-level liveness check).
ask() {
    local port="$1" request="$2" expect="$3" reply
    reply="$(timeout 3 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "%b" "$2" >&3
        IFS= read -r -t 2 line <&3 || true
        printf "%s" "$line"
        exec 3<&- 3>&-' "$HOST" "$port" "$request" 2>/dev/null)" || return 1
    [[ "$reply" == *"$expect"* ]]
}

# The whole reply to $2 sent to port $1 (four-letter words: the server closes after its reply).
ask_all() {
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "%b" "$2" >&3
        cat <&3' "$HOST" "$1" "$2" 2>/dev/null || true
}

# redis-cli against port $1 (bounded, carriage returns dropped); empty output when it fails.
rcli() {
    local port="$1"
    shift
    timeout 5 redis-cli -h "$HOST" -p "$port" "$@" 2>/dev/null | tr -d '\r' || true
}
# The value of field $2 in the output of "INFO $3" (or "CLUSTER INFO" when $3 is "cluster-info").
redis_field() {
    if [[ "$3" == cluster-info ]]; then
        rcli "$1" cluster info | sed -n "s/^$2://p"
    else
        rcli "$1" info "$3" | sed -n "s/^$2://p"
    fi
}
redis_port_ready() { ask "$1" 'PING\r\n' '+PONG'; }

redis_ready() { redis_port_ready "$REDIS_PORT"; }
memcached_ready() { ask "$MC_PORT" 'version\r\n' 'VERSION'; }
# "srvr" reports the version once the server takes sessions ("ruok" says imok earlier). Four-letter
# words must be allowed, as ours are; a server we did not start may not allow them, so "the port is
# open" is what decides whether to leave a server alone.
zookeeper_ready() { ask "$ZK_PORT" 'srvr' 'Zookeeper version'; }
mariadb_ready() {
    if command -v mariadb >/dev/null; then
        mariadb --protocol=tcp -h "$HOST" -P "$MY_PORT" -u root --connect-timeout=2 -e 'select 1' >/dev/null 2>&1
    else
        port_open "$MY_PORT"
    fi
}
postgres_ready() {
    if command -v pg_isready >/dev/null; then
        pg_isready -q -h "$HOST" -p "$PG_PORT" -t 2
    else
        port_open "$PG_PORT"
    fi
}

# Wait until "$2" succeeds (bounded), or fail with the log file $3 shown.
wait_ready() {
    local name="$1" check="$2" logfile="${3:-}" deadline=$((SECONDS + WAIT_SECONDS))
    until "$check"; do
        if ((SECONDS >= deadline)); then
            if [[ -n "$logfile" && -f "$logfile" ]]; then
                log "last lines of $logfile:"
                tail -n 30 "$logfile" >&2 || true
            fi
            die "$name did not answer on $HOST within ${WAIT_SECONDS}s"
        fi
        sleep 0.2
    done
}

# --- helpers ------------------------------------------------------------------------------------

as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        die "need root (or passwordless sudo) to run: $*"
    fi
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null || die "packages missing ($*) and apt-get is not available; install them by hand"
    if ((APT_UPDATED == 0)); then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    # Package scripts would start the daemons with their own settings (and, for PostgreSQL, an auth
    # the tests cannot use); a policy-rc.d that says "no" keeps them stopped so that we start them.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null && as_root chmod 755 "$policy" && added_policy=1
    fi
    local rc=0
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 || rc=$?
    ((added_policy)) && as_root rm -f "$policy"
    ((rc == 0)) || die "apt-get install $* failed"
}

# Run "$@" detached (own session, stdin from /dev/null, output to log $2), its pid into $1.
# The pid is written by the process itself right before exec, so it is the server's own pid.
spawn() {
    local pidfile="$1" logfile="$2"
    shift 2
    rm -f "$pidfile"
    # 9>&-: the server must not inherit (and so hold forever) this script's lock.
    setsid bash -c 'echo $$ > "$0"; exec "$@"' "$pidfile" "$@" </dev/null >>"$logfile" 2>&1 9>&- &
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -s "$pidfile" ]] && return 0
        sleep 0.1
    done
    die "could not start: $*"
}

alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

# Pick the user a server should drop to when we are root.
service_user() {
    local u
    for u in "$@"; do
        if id "$u" >/dev/null 2>&1; then
            echo "$u"
            return
        fi
    done
    echo nobody
}

# --- Redis --------------------------------------------------------------------------------------

start_redis() {
    if port_open "$REDIS_PORT"; then
        log "redis: something answers on $HOST:$REDIS_PORT; leaving it alone"
        return
    fi
    command -v redis-server >/dev/null || apt_install redis-server
    # Installing the package may have started it already.
    port_open "$REDIS_PORT" && { wait_ready redis redis_ready; return; }
    mkdir -p "$STATE/redis"
    spawn "$STATE/redis.pid" "$STATE/redis.log" redis-server \
        --bind "$HOST" --port "$REDIS_PORT" --protected-mode yes \
        --save '' --appendonly no --dir "$STATE/redis" --daemonize no
    wait_ready redis redis_ready "$STATE/redis.log"
    log "redis: started (pid $(cat "$STATE/redis.pid"))"
}

# --- MariaDB (for ModelDict on MySQL) ----------------------------------------------------------

start_mariadb() {
    if port_open "$MY_PORT"; then
        log "mariadb: something answers on $HOST:$MY_PORT; leaving it alone"
    else
        command -v mariadbd >/dev/null || apt_install mariadb-server
        # The server drops to the mysql user, which cannot reach a project folder under /root.
        local data="/tmp/aiodurabledict-mariadb-$MY_PORT" user
        user="$(service_user mysql)"
        if [[ ! -d "$data/mysql" ]]; then
            mkdir -p "$data"
            chown "$user" "$data" 2>/dev/null || true
            log "mariadb: initialising $data"
            mariadb-install-db --no-defaults --user="$user" --datadir="$data" \
                --auth-root-authentication-method=normal >"$STATE/mariadb.log" 2>&1 \
                || die "mariadb-install-db failed (see $STATE/mariadb.log)"
        fi
        spawn "$STATE/mariadb.pid" "$STATE/mariadb.log" mariadbd --no-defaults --user="$user" \
            --datadir="$data" --bind-address="$HOST" --port="$MY_PORT" --socket="$data/mariadb.sock" \
            --pid-file="$data/mariadbd.pid" --skip-log-bin
        log "mariadb: started (pid $(cat "$STATE/mariadb.pid"))"
    fi
    wait_ready mariadb mariadb_ready "$STATE/mariadb.log"
    if command -v mariadb >/dev/null; then
        mariadb --protocol=tcp -h "$HOST" -P "$MY_PORT" -u root \
            -e 'CREATE DATABASE IF NOT EXISTS test CHARACTER SET utf8mb4 COLLATE utf8mb4_bin' \
            || die "mariadb: cannot create the database test as root over TCP"
    fi
}

# --- memcached ----------------------------------------------------------------------------------

start_memcached() {
    if port_open "$MC_PORT"; then
        log "memcached: something answers on $HOST:$MC_PORT; leaving it alone"
        return
    fi
    command -v memcached >/dev/null || apt_install memcached
    port_open "$MC_PORT" && { wait_ready memcached memcached_ready; return; }
    local user_opt=()
    # memcached refuses to run as root unless told which user to become.
    [[ $EUID -eq 0 ]] && user_opt=(-u "$(service_user memcache nobody)")
    spawn "$STATE/memcached.pid" "$STATE/memcached.log" memcached \
        -l "$HOST" -p "$MC_PORT" -U 0 -m 128 -c 4096 "${user_opt[@]}"
    wait_ready memcached memcached_ready "$STATE/memcached.log"
    log "memcached: started (pid $(cat "$STATE/memcached.pid"))"
}

# --- ZooKeeper ----------------------------------------------------------------------------------

zookeeper_jar() {
    local jar
    for jar in /usr/share/java/zookeeper.jar /usr/share/zookeeper/zookeeper.jar; do
        [[ -f "$jar" ]] && { echo "$jar"; return 0; }
    done
    return 1
}

start_zookeeper() {
    if port_open "$ZK_PORT"; then
        log "zookeeper: something answers on $HOST:$ZK_PORT; leaving it alone"
        return
    fi
    zookeeper_jar >/dev/null || apt_install zookeeper
    command -v java >/dev/null || apt_install default-jre-headless
    local jar cp
    jar="$(zookeeper_jar)" || die "zookeeper is installed but its jar was not found under /usr/share/java"
    # The jar's manifest names its dependencies; add an slf4j binding so its log is readable.
    cp="$jar"
    [[ -f /usr/share/java/slf4j-simple.jar ]] && cp="$cp:/usr/share/java/slf4j-simple.jar"
    mkdir -p "$STATE/zookeeper/data"
    cat >"$STATE/zookeeper/zoo.cfg" <<EOF
tickTime=2000
dataDir=$STATE/zookeeper/data
clientPort=$ZK_PORT
clientPortAddress=$HOST
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,stat,mntr
EOF
    spawn "$STATE/zookeeper.pid" "$STATE/zookeeper.log" java -Xmx512m \
        -Dzookeeper.admin.enableServer=false \
        -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
        -cp "$cp" org.apache.zookeeper.server.ZooKeeperServerMain "$STATE/zookeeper/zoo.cfg"
    wait_ready zookeeper zookeeper_ready "$STATE/zookeeper.log"
    log "zookeeper: started (pid $(cat "$STATE/zookeeper.pid"))"
}

# --- PostgreSQL ---------------------------------------------------------------------------------

pg_bindir() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [[ -x "$d/postgres" ]] && { echo "$d"; return 0; }
    done
    command -v postgres >/dev/null && { dirname "$(command -v postgres)"; return 0; }
    return 1
}

psql_q() {
    PGCONNECT_TIMEOUT=5 psql -X -w -q -h "$HOST" -p "$PG_PORT" -U postgres "$@"
}

# The Debian cluster configured for our port, as "version name", if any.
pg_debian_cluster() {
    local conf ver name port
    for conf in /etc/postgresql/*/*/postgresql.conf; do
        [[ -f "$conf" ]] || continue
        ver="$(basename "$(dirname "$(dirname "$conf")")")"
        name="$(basename "$(dirname "$conf")")"
        port="$(sed -nE 's/^[[:space:]]*port[[:space:]]*=[[:space:]]*([0-9]+).*/\1/p' "$conf" | tail -n1)"
        if [[ "${port:-5432}" == "$PG_PORT" ]]; then
            echo "$ver $name"
            return 0
        fi
    done
    return 1
}

# True when the Debian cluster "$1 $2" lets anybody log in over IPv4 loopback without a password.
pg_cluster_trusts_loopback() {
    local hba="/etc/postgresql/$1/$2/pg_hba.conf"
    [[ -r "$hba" ]] && grep -qE '^[[:space:]]*host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"
}

start_private_postgres() {
    local bindir data user
    bindir="$(pg_bindir)" || die "postgres binaries not found under /usr/lib/postgresql"
    data="$(cat "$STATE/postgres.datadir" 2>/dev/null || true)"
    if [[ -z "$data" || ! -d "$data" ]]; then
        data="$(mktemp -d /tmp/aiodurabledict-pg.XXXXXX)"
        echo "$data" >"$STATE/postgres.datadir"
    fi
    local run=()
    if [[ $EUID -eq 0 ]]; then
        # PostgreSQL refuses to run as root: run it as "postgres", owning its data dir.
        user="$(service_user postgres)"
        [[ "$user" == postgres ]] || die "user postgres does not exist"
        chown -R postgres: "$data"
        chmod 700 "$data"
        run=(setpriv --reuid=postgres --regid="$(id -g postgres)" --init-groups)
    fi
    if [[ ! -f "$data/PG_VERSION" ]]; then
        "${run[@]}" "$bindir/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --no-sync >>"$STATE/postgres.log" 2>&1 \
            || { tail -n 20 "$STATE/postgres.log" >&2; die "initdb failed"; }
    fi
    "${run[@]}" "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w -t "$WAIT_SECONDS" \
        -o "-c listen_addresses=$HOST -p $PG_PORT -k $data -c fsync=off" start >>"$STATE/postgres.log" 2>&1 9>&- \
        || { tail -n 20 "$data/server.log" >&2 || true; die "postgres did not start (data dir $data)"; }
    head -n1 "$data/postmaster.pid" >"$STATE/postgres.pid"
    log "postgres: started private cluster in $data (pid $(cat "$STATE/postgres.pid"))"
}

start_postgres() {
    if port_open "$PG_PORT"; then
        log "postgres: something answers on $HOST:$PG_PORT; leaving it alone"
    else
        local cluster
        pg_bindir >/dev/null || apt_install postgresql
        command -v psql >/dev/null || apt_install postgresql-client
        # shellcheck disable=SC2086
        if cluster="$(pg_debian_cluster)" && pg_cluster_trusts_loopback $cluster; then
            log "postgres: starting Debian cluster $cluster"
            # shellcheck disable=SC2086
            as_root pg_ctlcluster $cluster start 9>&- || die "pg_ctlcluster $cluster start failed"
            echo "$cluster" >"$STATE/postgres.cluster"
        else
            # No cluster, or one whose auth the tests cannot use: run our own, leaving the system's as it is.
            start_private_postgres
        fi
        wait_ready postgres postgres_ready "$STATE/postgres.log"
    fi
    ensure_test_db
}

ensure_test_db() {
    if ! command -v psql >/dev/null; then
        log "postgres: psql not found; cannot check that database \"test\" exists"
        return
    fi
    wait_ready postgres postgres_ready
    local out
    if ! out="$(psql_q -d postgres -tAc "select 1 from pg_database where datname = '$PG_DB'" 2>&1)"; then
        die "cannot log in to postgres on $HOST:$PG_PORT as user postgres without a password: $out
  (the tests expect trust auth on loopback; add 'host all all 127.0.0.1/32 trust' to pg_hba.conf)"
    fi
    if [[ "$out" != 1 ]]; then
        psql_q -d postgres -c "create database $PG_DB" >/dev/null || die "could not create database $PG_DB"
        log "postgres: created database $PG_DB"
    fi
}

# --- multi-node engines: shared helpers ---------------------------------------------------------

# An engine found already running gets this long to settle before it counts as broken.
SETTLE_SECONDS="${AIODURABLEDICT_SERVERS_SETTLE:-20}"

# Retry "$@" every 0.2 s for at most $1 seconds; false when it never succeeded.
retry_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# Fail with $1 after the last lines of the logs named after it (about 30 lines in all).
die_broken() {
    local why="$1" logfile lines
    shift
    lines=$((30 / ($# > 0 ? $# : 1)))
    ((lines >= 4)) || lines=4
    for logfile in "$@"; do
        [[ -f "$logfile" ]] || continue
        log "last lines of $logfile:"
        tail -n "$lines" "$logfile" >&2 || true
    done
    die "$why"
}

need_redis() {
    command -v redis-server >/dev/null || apt_install redis-server
    command -v redis-cli >/dev/null || apt_install redis-tools
}

# --- Redis Cluster ------------------------------------------------------------------------------

RC_DIR="$STATE/redis-cluster"

# Empty when every node of the cluster answers and agrees that all is well; otherwise what is wrong.
redis_cluster_problems() {
    local port nodes=${#RC_PORTS[@]} masters=$((${#RC_PORTS[@]} / 2)) info state slots known size role link
    for port in "${RC_PORTS[@]}"; do
        info="$(rcli "$port" cluster info)"
        if [[ -z "$info" ]]; then
            echo "$HOST:$port does not answer CLUSTER INFO"
            continue
        fi
        state="$(sed -n 's/^cluster_state://p' <<<"$info")"
        slots="$(sed -n 's/^cluster_slots_ok://p' <<<"$info")"
        known="$(sed -n 's/^cluster_known_nodes://p' <<<"$info")"
        size="$(sed -n 's/^cluster_size://p' <<<"$info")"
        [[ "$state" == ok ]] || echo "$HOST:$port says cluster_state:${state:-?}"
        [[ "$slots" == 16384 ]] || echo "$HOST:$port serves ${slots:-0} of 16384 slots"
        [[ "$known" == "$nodes" ]] || echo "$HOST:$port knows ${known:-?} nodes, not $nodes"
        [[ "$size" == "$masters" ]] || echo "$HOST:$port counts ${size:-?} masters, not $masters"
        role="$(redis_field "$port" role replication)"
        if [[ "$role" == slave ]]; then
            link="$(redis_field "$port" master_link_status replication)"
            [[ "$link" == up ]] || echo "replica $HOST:$port has its master link ${link:-?}"
        fi
    done
}
redis_cluster_ok() { [[ -z "$(redis_cluster_problems)" ]]; }

# True when the node on port $1 is in no cluster yet (it knows itself only and serves no slot).
redis_cluster_node_fresh() {
    [[ "$(redis_field "$1" cluster_known_nodes cluster-info)" == 1 &&
        "$(redis_field "$1" cluster_slots_assigned cluster-info)" == 0 ]]
}

start_redis_cluster() {
    need_redis
    local port started=0 fresh=0 logs=() addrs=() wait
    for port in "${RC_PORTS[@]}"; do
        logs+=("$STATE/redis-cluster-$port.log")
        addrs+=("$HOST:$port")
        if port_open "$port"; then
            continue
        fi
        # A node that ran here before finds its cluster again through its nodes.conf.
        mkdir -p "$RC_DIR/$port"
        spawn "$STATE/redis-cluster-$port.pid" "$STATE/redis-cluster-$port.log" redis-server \
            --bind "$HOST" --port "$port" --protected-mode yes --daemonize no \
            --cluster-enabled yes --cluster-port $((port + RC_BUS_OFFSET)) \
            --cluster-config-file "$RC_DIR/$port/nodes.conf" --cluster-node-timeout 2000 \
            --cluster-replica-validity-factor 0 --cluster-allow-replica-migration no \
            --save '' --appendonly no --repl-diskless-sync-delay 0 --dir "$RC_DIR/$port" --loglevel warning
        started=$((started + 1))
    done
    # Fresh and restarted nodes need a few seconds; a cluster that was already running gets less.
    wait="$WAIT_SECONDS"
    ((started == 0)) && wait="$SETTLE_SECONDS"
    for port in "${RC_PORTS[@]}"; do
        retry_for "$wait" redis_port_ready "$port" \
            || die_broken "redis-cluster: nothing answers PING on $HOST:$port" "$STATE/redis-cluster-$port.log"
        redis_cluster_node_fresh "$port" && fresh=$((fresh + 1))
    done
    if ((fresh == ${#RC_PORTS[@]})); then
        log "redis-cluster: creating a cluster of ${addrs[*]}"
        timeout "$WAIT_SECONDS" redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
            >"$RC_DIR/create.log" 2>&1 || die_broken "redis-cluster: redis-cli --cluster create failed" \
            "$RC_DIR/create.log" "${logs[@]}"
    elif ((fresh > 0)); then
        die_broken "redis-cluster: BROKEN: $fresh of the nodes on ${addrs[*]} are in no cluster and the others are
  (to start afresh: scripts/servers.sh stop redis-cluster; rm -rf $RC_DIR)" "${logs[@]}"
    fi
    if ! retry_for "$wait" redis_cluster_ok; then
        log "redis-cluster: BROKEN after ${wait}s:"
        redis_cluster_problems | sed 's/^/  /' >&2
        die_broken "redis-cluster on ${addrs[*]} answers but is not healthy
  (to start afresh: scripts/servers.sh stop redis-cluster; rm -rf $RC_DIR)" "${logs[@]}"
    fi
    if ((started == 0)); then
        log "redis-cluster: a healthy cluster answers on ${addrs[*]}; leaving it alone"
    else
        log "redis-cluster: ok on ${addrs[*]} ($started node(s) started)"
    fi
}

# --- Redis Sentinel -----------------------------------------------------------------------------

SN_DIR="$STATE/redis-sentinel"

# Field $2 of "SENTINEL MASTER <service>" asked of the sentinel on port $1.
sentinel_field() {
    rcli "$1" sentinel master "$SN_SERVICE" | awk -v f="$2" 'NR % 2 == 1 { k = $0 } NR % 2 == 0 && k == f { print; exit }'
}
# "host:port" of the master as the sentinel on port $1 reports it (empty when it does not know).
sentinel_master_of() {
    rcli "$1" sentinel get-master-addr-by-name "$SN_SERVICE" | paste -sd: -
}

# Empty when the master, its replica and the three sentinels agree that all is well; otherwise
# what is wrong.
redis_sentinel_problems() {
    local port master="" seen flags role
    for port in "${SN_PORTS[@]}"; do
        seen="$(sentinel_master_of "$port")"
        if [[ -z "$seen" ]]; then
            echo "sentinel $HOST:$port does not name a master for \"$SN_SERVICE\""
            continue
        fi
        [[ -z "$master" ]] && master="$seen"
        [[ "$seen" == "$master" ]] || echo "sentinel $HOST:$port names master $seen, another names $master"
        flags="$(sentinel_field "$port" flags)"
        [[ "$flags" == master ]] || echo "sentinel $HOST:$port flags the master $flags"
        [[ "$(sentinel_field "$port" num-slaves)" == 1 ]] \
            || echo "sentinel $HOST:$port knows $(sentinel_field "$port" num-slaves) replicas, not 1"
        [[ "$(sentinel_field "$port" num-other-sentinels)" == 2 ]] \
            || echo "sentinel $HOST:$port knows $(sentinel_field "$port" num-other-sentinels) other sentinels, not 2"
    done
    [[ -n "$master" ]] || return 0
    for port in "${SD_PORTS[@]}"; do
        if [[ "$HOST:$port" == "$master" ]]; then
            role="$(redis_field "$port" role replication)"
            [[ "$role" == master ]] || echo "$HOST:$port is the sentinels' master but says role:${role:-? (no answer)}"
        else
            [[ "$(redis_field "$port" role replication)" == slave &&
                "$(redis_field "$port" master_port replication)" == "${master##*:}" &&
                "$(redis_field "$port" master_link_status replication)" == up ]] \
                || echo "$HOST:$port is not a replica in sync with $master"
        fi
    done
}
redis_sentinel_ok() { [[ -z "$(redis_sentinel_problems)" ]]; }

# The master now: as running sentinels name it, else the running server that says it is one, else
# the first of AIODURABLEDICT_REDIS_SENTINEL_SERVERS.
sentinel_current_master() {
    local port seen
    for port in "${SN_PORTS[@]}"; do
        seen="$(sentinel_master_of "$port")"
        [[ -n "$seen" ]] && { echo "$seen"; return; }
    done
    for port in "${SD_PORTS[@]}"; do
        [[ "$(redis_field "$port" role replication)" == master ]] && { echo "$HOST:$port"; return; }
    done
    echo "$HOST:${SD_PORTS[0]}"
}

# True when every server but the master $1 replicates it with its link up.
sentinel_replicas_linked() {
    local port
    for port in "${SD_PORTS[@]}"; do
        [[ "$HOST:$port" == "$1" ]] && continue
        [[ "$(redis_field "$port" master_link_status replication)" == up ]] || return 1
    done
}

start_redis_sentinel() {
    need_redis
    local port started=0 answering=0 master logs=() wait
    for port in "${SD_PORTS[@]}" "${SN_PORTS[@]}"; do
        port_open "$port" && answering=$((answering + 1))
    done
    # Nothing of an earlier set runs: start afresh, not from the roles it had left in its files.
    ((answering == 0)) && rm -rf "$SN_DIR"
    master="$(sentinel_current_master)"
    for port in "${SD_PORTS[@]}"; do
        logs+=("$STATE/sentinel-redis-$port.log")
        port_open "$port" && continue
        mkdir -p "$SN_DIR/$port"
        # A config file, so that the sentinels can rewrite the roles they give.
        {
            printf 'bind %s\nport %s\nprotected-mode yes\ndaemonize no\ndir %s\n' "$HOST" "$port" "$SN_DIR/$port"
            # A replica syncs at once, not after the default 5 s wait for others.
            printf 'save ""\nappendonly no\nrepl-diskless-sync-delay 0\nloglevel warning\n'
            if [[ "$HOST:$port" != "$master" ]]; then
                printf 'replicaof %s %s\n' "${master%:*}" "${master##*:}"
            fi
        } >"$SN_DIR/$port/redis.conf"
        spawn "$STATE/sentinel-redis-$port.pid" "$STATE/sentinel-redis-$port.log" \
            redis-server "$SN_DIR/$port/redis.conf"
        started=$((started + 1))
    done
    if ((started > 0)); then
        # Sentinels find replicas in the master's INFO, asked at once and then every 10 s: have the
        # replica connected before they start.
        retry_for "$WAIT_SECONDS" sentinel_replicas_linked "$master" \
            || die_broken "redis-sentinel: the replica of $master did not sync" "${logs[@]}"
    fi
    for port in "${SN_PORTS[@]}"; do
        logs+=("$STATE/sentinel-$port.log")
        port_open "$port" && continue
        mkdir -p "$SN_DIR/$port"
        cat >"$SN_DIR/$port/sentinel.conf" <<CONF
bind $HOST
port $port
daemonize no
dir $SN_DIR/$port
loglevel warning
sentinel monitor $SN_SERVICE ${master%:*} ${master##*:} 2
sentinel down-after-milliseconds $SN_SERVICE 1000
sentinel failover-timeout $SN_SERVICE 3000
sentinel parallel-syncs $SN_SERVICE 1
CONF
        spawn "$STATE/sentinel-$port.pid" "$STATE/sentinel-$port.log" \
            redis-server "$SN_DIR/$port/sentinel.conf" --sentinel
        started=$((started + 1))
    done
    wait="$WAIT_SECONDS"
    ((started == 0)) && wait="$SETTLE_SECONDS"
    for port in "${SD_PORTS[@]}" "${SN_PORTS[@]}"; do
        retry_for "$wait" redis_port_ready "$port" \
            || die_broken "redis-sentinel: nothing answers PING on $HOST:$port" "${logs[@]}"
    done
    # Timers for a 1 s down-after (they are not saved: set at every start). By default a sentinel
    # PINGs every second, so one late reply looks like a dead master; it reads roles from INFO
    # every 10 s and hears of the other sentinels every 2 s; a 2 s stall idles it (TILT) for 30 s.
    for port in "${SN_PORTS[@]}"; do
        [[ "$(rcli "$port" sentinel debug ping-period 200 info-period 1000 publish-period 500 \
            ask-period 200 tilt-period 5000)" == OK ]] || log "redis-sentinel: $HOST:$port refused SENTINEL DEBUG"
    done
    if ! retry_for "$wait" redis_sentinel_ok; then
        log "redis-sentinel: BROKEN after ${wait}s:"
        redis_sentinel_problems | sed 's/^/  /' >&2
        die_broken "redis-sentinel (sentinels on ${SN_PORTS[*]}, servers on ${SD_PORTS[*]}) answers but is not healthy
  (to start afresh: scripts/servers.sh stop redis-sentinel)" "${logs[@]}"
    fi
    if ((started == 0)); then
        log "redis-sentinel: a healthy set answers (master $(sentinel_current_master)); leaving it alone"
    else
        log "redis-sentinel: ok, master $(sentinel_current_master), service $SN_SERVICE ($started process(es) started)"
    fi
}

# --- ZooKeeper ensemble -------------------------------------------------------------------------

ZE_DIR="$STATE/zookeeper-ensemble"

# "leader", "follower", ... as the node on port $1 reports it (empty when it does not serve).
zookeeper_mode() { ask_all "$1" srvr | tr -d '\r' | sed -n 's/^Mode: //p'; }

# Empty when every node serves and exactly one leads; otherwise what is wrong.
zookeeper_ensemble_problems() {
    local port mode leaders=0
    for port in "${ZE_PORTS[@]}"; do
        mode="$(zookeeper_mode "$port")"
        case "$mode" in
            leader) leaders=$((leaders + 1)) ;;
            follower) ;;
            *) echo "$HOST:$port does not serve (srvr: mode ${mode:-none})" ;;
        esac
    done
    ((leaders == 1)) || echo "$leaders leaders, not 1"
}
zookeeper_ensemble_ok() { [[ -z "$(zookeeper_ensemble_problems)" ]]; }

start_zookeeper_ensemble() {
    zookeeper_jar >/dev/null || apt_install zookeeper
    command -v java >/dev/null || apt_install default-jre-headless
    local jar cp port i started=0 servers="" logs=()
    jar="$(zookeeper_jar)" || die "zookeeper is installed but its jar was not found under /usr/share/java"
    cp="$jar"
    [[ -f /usr/share/java/slf4j-simple.jar ]] && cp="$cp:/usr/share/java/slf4j-simple.jar"
    for i in "${!ZE_PORTS[@]}"; do
        port="${ZE_PORTS[$i]}"
        servers+="server.$((i + 1))=$HOST:$((port + ZE_QUORUM_OFFSET)):$((port + ZE_ELECTION_OFFSET))"$'\n'
    done
    for i in "${!ZE_PORTS[@]}"; do
        port="${ZE_PORTS[$i]}"
        logs+=("$STATE/zookeeper-ensemble-$port.log")
        port_open "$port" && continue
        # The data folder (and its myid) stays: a node started again rejoins with what it had.
        mkdir -p "$ZE_DIR/$port/data"
        echo $((i + 1)) >"$ZE_DIR/$port/data/myid"
        # Short ticks: a dead leader's followers see its socket close and elect another at once; a
        # frozen one is given up after syncLimit ticks (2 s).
        cat >"$ZE_DIR/$port/zoo.cfg" <<CONF
tickTime=250
initLimit=20
syncLimit=8
dataDir=$ZE_DIR/$port/data
clientPort=$port
clientPortAddress=$HOST
maxClientCnxns=0
maxSessionTimeout=60000
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,stat,mntr
$servers
CONF
        spawn "$STATE/zookeeper-ensemble-$port.pid" "$STATE/zookeeper-ensemble-$port.log" java \
            -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
            -Dzookeeper.admin.enableServer=false \
            -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
            -cp "$cp" org.apache.zookeeper.server.quorum.QuorumPeerMain "$ZE_DIR/$port/zoo.cfg"
        started=$((started + 1))
    done
    local wait="$WAIT_SECONDS"
    ((started == 0)) && wait="$SETTLE_SECONDS"
    if ! retry_for "$wait" zookeeper_ensemble_ok; then
        log "zookeeper-ensemble: BROKEN after ${wait}s:"
        zookeeper_ensemble_problems | sed 's/^/  /' >&2
        die_broken "zookeeper-ensemble on ${ZE_PORTS[*]} answers but is not healthy
  (to start afresh: scripts/servers.sh stop zookeeper-ensemble; rm -rf $ZE_DIR)" "${logs[@]}"
    fi
    if ((started == 0)); then
        log "zookeeper-ensemble: a healthy ensemble answers on ${ZE_PORTS[*]}; leaving it alone"
    else
        log "zookeeper-ensemble: ok on ${ZE_PORTS[*]} ($started node(s) started)"
    fi
}

# --- stop / status ------------------------------------------------------------------------------

stop_pidfile() {
    local name="$1" pidfile="$STATE/$1.pid" pid i
    [[ -f "$pidfile" ]] || return 0
    pid="$(cat "$pidfile")"
    if alive "$pid"; then
        log "$name: stopping pid $pid"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            log "$name: pid $pid did not stop in 15s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
}

# Stop every server whose pid file matches $STATE/$1-<port>.pid: all are asked at once, then waited for.
stop_family() {
    local pidfile pid pids=() files=() i
    for pidfile in "$STATE/$1"-[0-9]*.pid; do
        [[ -f "$pidfile" ]] || continue
        files+=("$pidfile")
        pid="$(cat "$pidfile")"
        if alive "$pid"; then
            log "$(basename "$pidfile" .pid): stopping pid $pid"
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    for pid in "${pids[@]}"; do
        for ((i = 0; i < 150; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            log "pid $pid did not stop in 15s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    ((${#files[@]} == 0)) || rm -f "${files[@]}"
}

stop_postgres() {
    if [[ -f "$STATE/postgres.cluster" ]]; then
        local cluster
        cluster="$(cat "$STATE/postgres.cluster")"
        log "postgres: stopping Debian cluster $cluster"
        # shellcheck disable=SC2086
        as_root pg_ctlcluster $cluster stop || log "postgres: pg_ctlcluster $cluster stop failed"
        rm -f "$STATE/postgres.cluster"
    fi
    if [[ -f "$STATE/postgres.pid" ]]; then
        local pid i
        pid="$(cat "$STATE/postgres.pid")"
        if alive "$pid"; then
            log "postgres: stopping pid $pid"
            kill -INT "$pid" 2>/dev/null || true # fast shutdown
            for ((i = 0; i < 300; i++)); do
                alive "$pid" || break
                sleep 0.1
            done
            alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$STATE/postgres.pid"
    fi
}

status_one() {
    local name="$1" port="$2" owner=""
    if [[ -f "$STATE/$name.pid" ]] && alive "$(cat "$STATE/$name.pid")"; then
        owner=" (started by this script, pid $(cat "$STATE/$name.pid"))"
    elif [[ "$name" == postgres && -f "$STATE/postgres.cluster" ]]; then
        owner=" (Debian cluster $(cat "$STATE/postgres.cluster") started by this script)"
    fi
    if port_open "$port"; then
        printf '%-24s %s:%-5s up%s\n' "$name" "$HOST" "$port" "$owner"
        return 0
    fi
    printf '%-24s %s:%-5s DOWN%s\n' "$name" "$HOST" "$port" "$owner"
    return 1
}

# Each node's line, then the engine's health from $3 (a function printing what is wrong).
status_engine() {
    local engine="$1" prefix="$2" problems="$3" port rc=0 wrong
    shift 3
    for port in "$@"; do
        status_one "$prefix-$port" "$port" || rc=1
    done
    wrong="$("$problems")"
    if [[ -z "$wrong" ]]; then
        printf '%-24s healthy\n' "$engine"
    else
        printf '%-24s BROKEN:\n' "$engine"
        sed 's/^/    /' <<<"$wrong"
        rc=1
    fi
    return "$rc"
}

print_env() {
    cat <<EOF
export AIODURABLEDICT_REDIS_URL="\${AIODURABLEDICT_REDIS_URL:-redis://$HOST:$REDIS_PORT/0}"
export AIODURABLEDICT_POSTGRES_URL="\${AIODURABLEDICT_POSTGRES_URL:-postgres://postgres@$HOST:$PG_PORT/$PG_DB}"
export AIODURABLEDICT_ZOOKEEPER="\${AIODURABLEDICT_ZOOKEEPER:-$HOST:$ZK_PORT}"
export AIODURABLEDICT_MEMCACHED="\${AIODURABLEDICT_MEMCACHED:-$HOST:$MC_PORT}"
export AIODURABLEDICT_MYSQL_URL="\${AIODURABLEDICT_MYSQL_URL:-mysql://root:@$HOST:$MY_PORT/test}"
export AIODURABLEDICT_REDIS_CLUSTER="\${AIODURABLEDICT_REDIS_CLUSTER:-$(addr_list "${RC_PORTS[@]}")}"
export AIODURABLEDICT_REDIS_SENTINEL="\${AIODURABLEDICT_REDIS_SENTINEL:-$(addr_list "${SN_PORTS[@]}")}"
export AIODURABLEDICT_REDIS_SENTINEL_SERVICE="\${AIODURABLEDICT_REDIS_SENTINEL_SERVICE:-$SN_SERVICE}"
export AIODURABLEDICT_REDIS_SENTINEL_SERVERS="\${AIODURABLEDICT_REDIS_SENTINEL_SERVERS:-$(addr_list "${SD_PORTS[@]}")}"
export AIODURABLEDICT_ZOOKEEPER_ENSEMBLE="\${AIODURABLEDICT_ZOOKEEPER_ENSEMBLE:-$(addr_list "${ZE_PORTS[@]}")}"
EOF
}

# "127.0.0.1:p1,127.0.0.1:p2,..." for the ports given.
addr_list() {
    local port out=()
    for port in "$@"; do
        out+=("$HOST:$port")
    done
    (IFS=,; echo "${out[*]}")
}

# --- install ------------------------------------------------------------------------------------

# The binaries the fault tests run privately, whether or not a shared server answers already.
install_all() {
    local missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v redis-cli >/dev/null || missing+=(redis-tools)
    command -v memcached >/dev/null || missing+=(memcached)
    zookeeper_jar >/dev/null || missing+=(zookeeper)
    command -v java >/dev/null || missing+=(default-jre-headless)
    pg_bindir >/dev/null || missing+=(postgresql)
    command -v mariadbd >/dev/null || missing+=(mariadb-server)
    command -v psql >/dev/null || missing+=(postgresql-client)
    if ((${#missing[@]})); then
        apt_install "${missing[@]}"
    else
        log "redis-server, redis-cli, memcached, zookeeper, java, postgresql and mariadb are installed"
    fi
}

# --- main ---------------------------------------------------------------------------------------

ALL_SERVERS=(redis postgres zookeeper memcached mariadb redis-cluster redis-sentinel zookeeper-ensemble)
cmd="${1:-}"
case "$cmd" in
    start | stop | status) ;;
    env | install) (($# == 1)) || cmd=usage ;;
    *) cmd=usage ;;
esac
if [[ "$cmd" == usage ]]; then
    echo "usage: $0 start|stop|status [SERVER...] | env | install" >&2
    echo "  SERVER: ${ALL_SERVERS[*]}" >&2
    exit 2
fi
shift
servers=("$@")
((${#servers[@]})) || servers=("${ALL_SERVERS[@]}")
for server in "${servers[@]}"; do
    [[ " ${ALL_SERVERS[*]} " == *" $server "* ]] || die "unknown server $server (known: ${ALL_SERVERS[*]})"
done
# True when server $1 is among those asked for.
wanted() { [[ " ${servers[*]} " == *" $1 "* ]]; }

if [[ "$cmd" == env ]]; then
    print_env
    exit 0
fi

# One run at a time: two concurrent starts would both find a port free and race for it.
if [[ "$cmd" == start || "$cmd" == stop ]]; then
    mkdir -p "$STATE"
    exec 9>"$STATE/run.lock"
    flock -w 300 9 || die "another scripts/servers.sh holds $STATE/run.lock"
fi

case "$cmd" in
    install)
        install_all
        ;;
    start)
        if wanted redis; then start_redis; fi
        if wanted postgres; then start_postgres; fi
        if wanted zookeeper; then start_zookeeper; fi
        if wanted memcached; then start_memcached; fi
        if wanted mariadb; then start_mariadb; fi
        if wanted redis-cluster; then start_redis_cluster; fi
        if wanted redis-sentinel; then start_redis_sentinel; fi
        if wanted zookeeper-ensemble; then start_zookeeper_ensemble; fi
        log "${servers[*]}: all answer on $HOST (env: scripts/servers.sh env)"
        ;;
    stop)
        # Sentinels first: they would otherwise fail over from the master stopped before them.
        if wanted redis-sentinel; then
            stop_family sentinel
            stop_family sentinel-redis
        fi
        if wanted redis-cluster; then stop_family redis-cluster; fi
        if wanted zookeeper-ensemble; then stop_family zookeeper-ensemble; fi
        if wanted mariadb; then stop_pidfile mariadb; fi
        if wanted memcached; then stop_pidfile memcached; fi
        if wanted zookeeper; then stop_pidfile zookeeper; fi
        if wanted redis; then stop_pidfile redis; fi
        if wanted postgres; then stop_postgres; fi
        ;;
    status)
        rc=0
        if wanted redis; then status_one redis "$REDIS_PORT" || rc=1; fi
        if wanted postgres; then status_one postgres "$PG_PORT" || rc=1; fi
        if wanted zookeeper; then status_one zookeeper "$ZK_PORT" || rc=1; fi
        if wanted memcached; then status_one memcached "$MC_PORT" || rc=1; fi
        if wanted mariadb; then status_one mariadb "$MY_PORT" || rc=1; fi
        if wanted redis-cluster; then
            status_engine redis-cluster redis-cluster redis_cluster_problems "${RC_PORTS[@]}" || rc=1
        fi
        if wanted redis-sentinel; then
            for port in "${SN_PORTS[@]}"; do
                status_one "sentinel-$port" "$port" || rc=1
            done
            status_engine redis-sentinel sentinel-redis redis_sentinel_problems "${SD_PORTS[@]}" || rc=1
        fi
        if wanted zookeeper-ensemble; then
            status_engine zookeeper-ensemble zookeeper-ensemble zookeeper_ensemble_problems "${ZE_PORTS[@]}" || rc=1
        fi
        exit "$rc"
        ;;
esac
