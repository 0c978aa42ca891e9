#!/usr/bin/env bash
# Record what real nginx (1.22.1, Debian) prints for `nginx -t` on each case
# NAME.conf of this directory into NAME.expected, exactly as
# t/data/record-conf-errors.sh does for conf_errors/ (see t/data/README.md):
#
#   nginx -t -p DIR -c DIR/nginx.conf -e DIR/error.log -g 'load_module MODULE;'
#
# with DIR replaced by %%PREFIX%% and a last line "exit=N". Nothing listens.
# Used by t/access.rs, t/limit_conn.rs and t/realip.rs.
#
# Usage: t/data/modules-access/record.sh [NAME ...]   (default: every case)
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
NGINX=${NGINX:-/usr/sbin/nginx}
MODULE=${NGINX_STREAM_MODULE:-/usr/lib/nginx/modules/ngx_stream_module.so}
work=$(mktemp -d /tmp/sluice-modules-access.XXXXXX)
trap 'rm -rf "$work"' EXIT
if [ $# -gt 0 ]; then names=("$@"); else
    names=(); for f in "$HERE"/*.conf; do names+=("$(basename "$f" .conf)"); done
fi
for name in "${names[@]}"; do
    dir=$work/$name
    mkdir -p "$dir"
    cp "$HERE/$name.conf" "$dir/nginx.conf"
    (cd "$dir" && timeout 20 "$NGINX" -t -p "$dir" -c "$dir/nginx.conf" \
        -e "$dir/error.log" -g "load_module $MODULE;") 2>"$dir/stderr" >/dev/null
    rc=$?
    { sed "s|$dir|%%PREFIX%%|g" "$dir/stderr"; echo "exit=$rc"; } > "$HERE/$name.expected"
done
echo "recorded ${#names[@]} case(s) into $HERE" >&2
