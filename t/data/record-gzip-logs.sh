#!/usr/bin/env bash
# Record the bytes nginx writes for `access_log ... gzip`: seven sessions of a
# `return` server whose log line holds nothing variable but $status, logged at
# gzip=1 and gzip=9 with a buffer that takes all seven lines (one gzip member
# per file, written at the graceful stop).
#
# Usage:  t/data/record-gzip-logs.sh
# Env:    NGINX=/usr/sbin/nginx
#         NGINX_STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
# Output: t/data/logs/gzip-level1.gz, t/data/logs/gzip-level9.gz
# Binds 127.0.0.1 only, on ports picked at run time; nginx runs under timeout(1).
set -euo pipefail
NGINX=${NGINX:-/usr/sbin/nginx}
MODULE=${NGINX_STREAM_MODULE:-/usr/lib/nginx/modules/ngx_stream_module.so}
OUT=$(cd "$(dirname "$0")" && pwd)/logs
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
read -r P1 P2 < <(python3 -c 'import socket
a=[socket.socket() for _ in range(2)]
[s.bind(("127.0.0.1",0)) for s in a]
print(*[s.getsockname()[1] for s in a])')
cat > "$DIR/nginx.conf" <<CONF
load_module $MODULE;
daemon off; master_process off;
error_log $DIR/error.log info; pid $DIR/nginx.pid;
events {}
stream {
  log_format f 'line \$status and some constant text to compress, again and again';
  server { listen 127.0.0.1:$P1; return x; access_log $DIR/gzip-level1.gz f gzip=1 buffer=64k; }
  server { listen 127.0.0.1:$P2; return x; access_log $DIR/gzip-level9.gz f gzip=9 buffer=64k; }
}
CONF
timeout 20 "$NGINX" -p "$DIR/" -c "$DIR/nginx.conf" &
for _ in $(seq 50); do [ -s "$DIR/nginx.pid" ] && break; sleep 0.1; done
python3 - "$P1" "$P2" <<'PY'
import socket, sys
for _ in range(7):
    for p in sys.argv[1:]:
        s = socket.create_connection(("127.0.0.1", int(p)), timeout=5)
        s.recv(10)
        s.close()
PY
kill -QUIT "$(cat "$DIR/nginx.pid")"
wait
cp "$DIR/gzip-level1.gz" "$DIR/gzip-level9.gz" "$OUT/"
