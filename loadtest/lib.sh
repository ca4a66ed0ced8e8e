# Shared by the loadtest/bench-* scripts. Sourced, not run.

# use_cluster: the local cluster's settings (.cluster/cluster.env) in this shell, its client
# certificates for psql and redis-cli (rcli) when it runs --tls, and BOT_ID, its bot's id.
use_cluster() {
    # shellcheck source=/dev/null
    source .cluster/cluster.env
    if [ -n "${BOTFLEET_TLS_DIR:-}" ]; then use_tls "$BOTFLEET_TLS_DIR"; fi
    BOT_ID=${BOTFLEET_BOT_TOKEN%%:*}
}

# sql QUERY: one query on the cluster's primary, as its owner; unaligned rows.
sql() { psql "$BOTFLEET_PRIMARY_URL" -XAtqc "$1"; }

# field NAME < JSON: one top-level field of the load generator's flat JSON summary.
field() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" | tr -d '"'; }

# A benchmark and its baseline take turns for this many rounds, so that the machine's drift (the
# same baseline moved by a fifth between runs a minute apart) falls on both.
ROUNDS=3

# median: the middle one of the lines on stdin, ordered by their first field as numbers.
median() { sort -n | awk '{ line[NR] = $0 } END { print line[int((NR + 1) / 2)] }'; }

# joined: the lines on stdin as one, comma-separated.
joined() { paste -sd, | sed 's/,/, /g'; }

# machine: one line describing where a benchmark ran.
machine() {
    printf '%s at commit %s, %s cores, %s' "$(date -u +%Y-%m-%d)" "$(git rev-parse --short HEAD)" "$(nproc)" \
        "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
}

# write_section NAME FILE: puts FILE between <!-- NAME --> and <!-- /NAME --> in RESULTS.md,
# replacing what was there, so that each benchmark rewrites only its own section.
write_section() {
    local name=$1 file=$2 results
    results="$(dirname "${BASH_SOURCE[0]}")/RESULTS.md"
    if [ ! -f "$results" ] || ! grep -q "^<!-- $name -->" "$results"; then
        [ -f "$results" ] || printf '# Benchmark results\n\nMachines are shared and noisy: the ratio to the baseline measured in the same run is\nthe figure that counts, not the absolute numbers. Each section is rewritten by its script.\n' >"$results"
        printf '\n<!-- %s -->\n<!-- /%s -->\n' "$name" "$name" >>"$results"
    fi
    awk -v name="$name" -v file="$file" '
        $0 == "<!-- " name " -->" { print; while ((getline line < file) > 0) print line; skip = 1; next }
        $0 == "<!-- /" name " -->" { skip = 0 }
        !skip { print }
    ' "$results" >"$results.new" && mv "$results.new" "$results"
}

# settle_tables TABLE...: vacuums, analyses and checkpoints now, so that neither autovacuum nor
# the writing out of the pages it dirties lands in a measured run. Needs BOTFLEET_PRIMARY_URL.
settle_tables() {
    local tables
    tables=$(IFS=,; echo "$*")
    psql "$BOTFLEET_PRIMARY_URL" -XAtq -c "VACUUM (ANALYZE) $tables" -c CHECKPOINT >/dev/null
}

# pgbench_baseline SECONDS [CPU_FILE [RATE]]: single-row inserts into the cluster's posts table by
# 16 clients for SECONDS (rows of bot id 0, removed afterwards), as fast as they go or at RATE a
# second; prints the inserts per second. With
# CPU_FILE, writes there the CPU µs per insert of each process of the cluster and of pgbench
# itself, and their total ("name µs" lines, as cpu_per_update). Needs BOTFLEET_PRIMARY_URL and
# BOTFLEET_PIDS_DIR (use_cluster).
pgbench_baseline() {
    local seconds=$1 cpu_file=${2:-} rate=${3:-} work
    work=$(mktemp -d)
    # Bot id 0 is no Telegram bot: the baseline's rows are told apart and removed afterwards.
    psql "$BOTFLEET_PRIMARY_URL" -XAtqc "CREATE SEQUENCE IF NOT EXISTS bench_update_id;
         INSERT INTO users (bot_id, user_id, first_name) SELECT 0, g, 'bench' FROM generate_series(1, 10000) g
         ON CONFLICT DO NOTHING" >/dev/null
    cat >"$work/insert.sql" <<'SQL'
\set uid random(1, 10000)
WITH n AS (SELECT nextval('bench_update_id') AS id)
INSERT INTO posts (bot_id, author_id, chat_id, update_id, origin, text, status, published_at)
SELECT 0, :uid, :uid, id, 'm:' || :uid || ':' || id, 'a baseline post of about the size of a W1 text message', 'published', now() FROM n;
SQL
    cpu_snapshot "$work/cpu-before"
    mark_cpu "$work/times-before"
    pgbench -n -c 16 -j 2 -T "$seconds" ${rate:+-R "$rate"} -f "$work/insert.sql" "$BOTFLEET_PRIMARY_URL" >"$work/pgbench.txt" 2>&1 \
        || { cat "$work/pgbench.txt" >&2; rm -rf "$work"; die "pgbench failed"; }
    mark_cpu "$work/times-after"
    cpu_snapshot "$work/cpu-after"
    if [ -n "$cpu_file" ]; then
        local inserts
        inserts=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$work/pgbench.txt")
        {
            cpu_per_update "$work/cpu-before" "$work/cpu-after" "$inserts" | grep -v '^total '
            echo "pgbench $((($(times_us "$work/times-after") - $(times_us "$work/times-before")) / inserts))"
        } | awk '{ print; total += $2 } END { print "total", total }' | sort >"$cpu_file"
    fi
    sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$work/pgbench.txt" | head -n 1
    psql "$BOTFLEET_PRIMARY_URL" -XAtqc "DELETE FROM posts WHERE bot_id = 0" >/dev/null
    settle_tables posts
    rm -rf "$work"
}

# metric_sum SERIES: a metric summed over every process of the cluster (BOTFLEET_METRICS_URLS):
# every label set of a metric's name, or the one series given with its labels.
metric_sum() {
    local url total=0 value
    for url in ${BOTFLEET_METRICS_URLS//,/ }; do
        value=$(curl -sf "$url" | awk -v m="$1" 'index($1, m "{") == 1 || $1 == m { s += $2 } END { printf "%.0f", s }')
        total=$((total + ${value:-0}))
    done
    echo "$total"
}

# mark_cpu FILE: the CPU time this shell's finished children used so far, as `times` prints it.
# Called directly, not in a command substitution (whose shell has children of its own).
mark_cpu() { times >"$1"; }

# times_us FILE: the children's CPU time (user and system, µs) of a mark_cpu FILE.
times_us() {
    awk 'END { split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%.0f\n", (u[1] * 60 + u[2] + s[1] * 60 + s[2]) * 1e6 }' "$1"
}

# w1_run NAME [loadtest flags...]: one W1 run of RUN_SECONDS against the cluster (use_cluster),
# its JSON summary in WORK/NAME.json, then its audit against Postgres and the fake's log: the
# acknowledged updates without a post in WORK/NAME.lost, the replies beyond one per post in
# WORK/NAME.duplicated. Needs LOADTEST, WORK and RUN_SECONDS.
w1_run() {
    local name=$1
    shift
    curl -sf -X POST "$BOTFLEET_TELEGRAM_URL/__fake/reset" >/dev/null
    local first
    first=$(sql "SELECT coalesce(max(update_id), 0) + 1 FROM posts WHERE bot_id = $BOT_ID")
    mark_cpu "$WORK/$name.times-before"
    "$LOADTEST" w1 --seconds "$RUN_SECONDS" --first-update-id "$first" --out "$WORK/$name" "$@" >"$WORK/$name.json"
    mark_cpu "$WORK/$name.times-after"
    local last ok posts replies
    last=$(field last_update_id <"$WORK/$name.json")
    ok=$(field ok <"$WORK/$name.json")
    posts=$(sql "SELECT count(*) FROM posts WHERE bot_id = $BOT_ID AND update_id BETWEEN $first AND $last")
    replies=$(curl -sf "$BOTFLEET_TELEGRAM_URL/__fake/calls?method=sendMessage" | grep -o '"status":200' | wc -l)
    # Every 2xx answer must have exactly one post and one reply behind it.
    echo "$((ok > posts ? ok - posts : 0))" >"$WORK/$name.lost"
    echo "$((replies > posts ? replies - posts : 0))" >"$WORK/$name.duplicated"
    say "$name: $(cat "$WORK/$name.json")"
}

# w1_measured NAME CPU_NAME [loadtest flags...]: w1_run NAME, with the CPU µs per acknowledged
# update of every process of the cluster, and of the load generator apart from their total
# (pgbench is not in W1's either), in WORK/CPU_NAME; the snapshots stay in WORK/NAME.cpu-before
# and WORK/NAME.cpu-after.
w1_measured() {
    local name=$1 cpu=$2 ok
    shift 2
    cpu_snapshot "$WORK/$name.cpu-before"
    w1_run "$name" "$@"
    cpu_snapshot "$WORK/$name.cpu-after"
    ok=$(field ok <"$WORK/$name.json")
    {
        cpu_per_update "$WORK/$name.cpu-before" "$WORK/$name.cpu-after" "$ok"
        echo "load-generator $((($(times_us "$WORK/$name.times-after") - $(times_us "$WORK/$name.times-before")) / ok))"
    } | sort >"$WORK/$cpu"
    say "$name: CPU µs per update: $(tr '\n' ' ' <"$WORK/$cpu")"
}

# cpu_snapshot FILE: for every process of the cluster (BOTFLEET_PIDS_DIR), its name and the CPU
# time, in clock ticks, of it and its children (Postgres backends, Nginx workers; those that
# ended too), one per line.
cpu_snapshot() {
    local file pid ticks p t
    : >"$1"
    for file in "$BOTFLEET_PIDS_DIR"/*.pid; do
        pid=$(cat "$file")
        [ -n "$pid" ] || continue
        ticks=0
        for p in $pid $(pgrep -P "$pid"); do
            # utime, stime, cutime and cstime, the 14th to 17th fields, counted after the
            # command's ")": children that ended between two snapshots count too (pgbench's
            # backends, a Postgres connection that was replaced).
            t=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 + $14 + $15 }')
            ticks=$((ticks + ${t:-0}))
        done
        echo "$(basename "$file" .pid) $ticks" >>"$1"
    done
    sort -o "$1" "$1"
}

# cpu_per_update BEFORE AFTER UPDATES: CPU µs per update of each kind of process (worker-1 and
# worker-2 add up as worker) between two snapshots, and their total, as "name µs" lines.
cpu_per_update() {
    local tick_us
    tick_us=$((1000000 / $(getconf CLK_TCK)))
    join "$1" "$2" | awk -v n="$3" -v us="$tick_us" '
        { kind = $1; sub(/-[0-9]+$/, "", kind); sum[kind] += ($3 - $2) * us; total += ($3 - $2) * us }
        END { for (k in sum) printf "%s %.0f\n", k, sum[k] / n; printf "total %.0f\n", total / n }' | sort
}
