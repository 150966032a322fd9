#!/usr/bin/env bash
# Make sure the servers the tests need answer on loopback:
#   Redis 127.0.0.1:6379, PostgreSQL 127.0.0.1:5432 (user postgres, trust, db "test"),
#   ZooKeeper 127.0.0.1:2181, memcached 127.0.0.1:11211, MariaDB 127.0.0.1:3306 (root, no password,
#   db "test").
# The ports (and the database name) follow AIODURABLEDICT_REDIS_URL, AIODURABLEDICT_POSTGRES_URL,
# AIODURABLEDICT_ZOOKEEPER, AIODURABLEDICT_MEMCACHED and AIODURABLEDICT_MYSQL_URL when they are set.
#
# Usage: scripts/servers.sh start|stop|status|env|install
#   start   for each server: if something already answers on its port, leave it alone; otherwise
#           install its Debian package when missing, start it as a daemon and wait until it answers.
#   stop    stop only the servers that this script started (pids are kept in the state dir).
#   status  say which servers answer; exit 1 if any does not.
#   env     print the environment variables the tests read (eval-able).
#   install install whichever of the servers' Debian packages is missing (the fault tests run
#           private instances, so they need the binaries even where the shared servers run elsewhere).
#
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
for addr in "$REDIS_ADDR" "$PG_ADDR" "$ZK_ADDR" "$MC_ADDR" "$MY_ADDR"; do
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

redis_ready() { ask "$REDIS_PORT" 'PING\r\n' '+PONG'; }
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
        printf '%-10s %s:%-5s up%s\n' "$name" "$HOST" "$port" "$owner"
        return 0
    fi
    printf '%-10s %s:%-5s DOWN%s\n' "$name" "$HOST" "$port" "$owner"
    return 1
}

print_env() {
    cat <<EOF
export AIODURABLEDICT_REDIS_URL="\${AIODURABLEDICT_REDIS_URL:-redis://$HOST:$REDIS_PORT/0}"
export AIODURABLEDICT_POSTGRES_URL="\${AIODURABLEDICT_POSTGRES_URL:-postgres://postgres@$HOST:$PG_PORT/$PG_DB}"
export AIODURABLEDICT_ZOOKEEPER="\${AIODURABLEDICT_ZOOKEEPER:-$HOST:$ZK_PORT}"
export AIODURABLEDICT_MEMCACHED="\${AIODURABLEDICT_MEMCACHED:-$HOST:$MC_PORT}"
export AIODURABLEDICT_MYSQL_URL="\${AIODURABLEDICT_MYSQL_URL:-mysql://root:@$HOST:$MY_PORT/test}"
EOF
}

# --- install ------------------------------------------------------------------------------------

# The binaries the fault tests run privately, whether or not a shared server answers already.
install_all() {
    local missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v memcached >/dev/null || missing+=(memcached)
    zookeeper_jar >/dev/null || missing+=(zookeeper)
    command -v java >/dev/null || missing+=(default-jre-headless)
    pg_bindir >/dev/null || missing+=(postgresql)
    command -v mariadbd >/dev/null || missing+=(mariadb-server)
    command -v psql >/dev/null || missing+=(postgresql-client)
    if ((${#missing[@]})); then
        apt_install "${missing[@]}"
    else
        log "redis-server, memcached, zookeeper, java, postgresql and mariadb are installed"
    fi
}

# --- main ---------------------------------------------------------------------------------------

cmd="${1:-}"
case "$cmd" in
    start | stop | status | env | install) ;;
    *)
        echo "usage: $0 start|stop|status|env|install" >&2
        exit 2
        ;;
esac

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
        start_redis
        start_postgres
        start_zookeeper
        start_memcached
        start_mariadb
        log "all servers answer on $HOST (env: scripts/servers.sh env)"
        ;;
    stop)
        stop_pidfile mariadb
        stop_pidfile memcached
        stop_pidfile zookeeper
        stop_pidfile redis
        stop_postgres
        ;;
    status)
        rc=0
        status_one redis "$REDIS_PORT" || rc=1
        status_one postgres "$PG_PORT" || rc=1
        status_one zookeeper "$ZK_PORT" || rc=1
        status_one memcached "$MC_PORT" || rc=1
        status_one mariadb "$MY_PORT" || rc=1
        exit "$rc"
        ;;
esac
