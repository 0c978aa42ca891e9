#!/usr/bin/env bash
# Record what real nginx does with the map, geo, split_clients and set modules,
# into t/data/modules/ (read by t/map.rs, t/geo.rs, t/split_clients.rs, t/set.rs).
#
# Usage:  t/data/modules/record.sh [errors|trace]     (default: both)
# Env:    NGINX=/usr/sbin/nginx
#         NGINX_STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
# Needs:  python3 (the client), timeout(1).
#
# errors: for each errors/NAME.conf (plus the files of errors/NAME.files/), in a
#   fresh directory DIR, exactly as t/data/record-conf-errors.sh does:
#       nginx -t -p DIR -c DIR/nginx.conf -e DIR/error.log -g 'load_module MODULE;'
#   errors/NAME.expected = stderr with DIR replaced by %%PREFIX%%, then "exit=N".
#   Nothing listens.
#
# trace: trace.conf (with trace-map.conf and trace-geo.conf beside it) runs in
#   nginx on 127.0.0.1, on one ephemeral port (%%PORT%%), in the foreground
#   (daemon off; master_process off;) under timeout(1), stopped with SIGTERM
#   sent to its own pid. The client connects 200 times, each time from another
#   127.A.B.C source address (a fixed, seeded list, so the file is stable), and
#   records the line the server returns ("$remote_addr|$sc|...|$sec") into
#   trace.txt, one line per client, in connection order.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
NGINX=${NGINX:-/usr/sbin/nginx}
MODULE=${NGINX_STREAM_MODULE:-/usr/lib/nginx/modules/ngx_stream_module.so}
what=${1:-all}

work=$(mktemp -d /tmp/sluice-modules.XXXXXX)
nginx_pid=
cleanup() {
    # only the process this script started, by pid
    if [ -n "$nginx_pid" ]; then kill "$nginx_pid" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

record_errors() {
    local n=0 conf name dir rc
    for conf in "$HERE"/errors/*.conf; do
        name=$(basename "$conf" .conf)
        dir=$work/errors/$name
        mkdir -p "$dir"
        cp "$conf" "$dir/nginx.conf"
        if [ -d "$HERE/errors/$name.files" ]; then
            cp -R "$HERE/errors/$name.files/." "$dir/"
        fi
        set +e
        (cd "$dir" && timeout 20 "$NGINX" -t -p "$dir" -c "$dir/nginx.conf" \
            -e "$dir/error.log" -g "load_module $MODULE;") 2>"$dir/stderr" >/dev/null
        rc=$?
        set -e
        {
            sed "s|$dir|%%PREFIX%%|g" "$dir/stderr"
            echo "exit=$rc"
        } > "$HERE/errors/$name.expected"
        n=$((n + 1))
    done
    echo "recorded $n error case(s) into $HERE/errors" >&2
}

record_trace() {
    local dir=$work/trace port
    mkdir -p "$dir"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    {
        echo "daemon off;"
        echo "master_process off;"
        echo "pid $dir/nginx.pid;"
        echo "error_log $dir/error.log info;"
        echo "events { worker_connections 64; }"
        sed "s|%%PORT%%|$port|g" "$HERE/trace.conf"
    } > "$dir/nginx.conf"
    cp "$HERE/trace-map.conf" "$HERE/trace-geo.conf" "$dir/"

    timeout 60 "$NGINX" -p "$dir" -c "$dir/nginx.conf" -g "load_module $MODULE;" \
        2>"$dir/stderr" &
    nginx_pid=$!
    for _ in $(seq 100); do [ -s "$dir/nginx.pid" ] && break; sleep 0.05; done
    [ -s "$dir/nginx.pid" ] || { cat "$dir/stderr" "$dir/error.log" >&2; exit 1; }

    python3 - "$port" > "$HERE/trace.txt" <<'PY'
import random, socket, sys

port = int(sys.argv[1])
rng = random.Random(7)
# Second octets that hit the interesting entries of trace.conf, and others.
seconds = [0, 1, 1, 2, 2, 3, 5, 7, 9, 10, 11, 15, 20, 22, 30, 31, 40, 99, 200]
addrs = ["127.0.0.1", "127.1.2.1", "127.1.2.200", "127.20.0.1", "127.5.0.75"]
while len(addrs) < 200:
    a = "127.%d.%d.%d" % (rng.choice(seconds),
                          rng.choice([0, 1, 2, 3, 5, 7, 9, 22, 100, 150, 201, rng.randrange(256)]),
                          rng.choice([1, 2, 7, 9, 10, 13, 17, 19, 128, 200, rng.randrange(1, 255)]))
    if a not in addrs:
        addrs.append(a)
for a in addrs:
    c = socket.socket()
    c.settimeout(10)
    c.bind((a, 0))
    c.connect(("127.0.0.1", port))
    data = b""
    while True:
        d = c.recv(4096)
        if not d:
            break
        data += d
    c.close()
    sys.stdout.write(data.decode())
PY
    kill "$(cat "$dir/nginx.pid")"
    wait "$nginx_pid" || true
    nginx_pid=
    echo "recorded $(wc -l < "$HERE/trace.txt") trace line(s) into $HERE/trace.txt" >&2
}

case $what in
errors) record_errors ;;
trace) record_trace ;;
all) record_errors; record_trace ;;
*) echo "usage: $0 [errors|trace]" >&2; exit 2 ;;
esac
