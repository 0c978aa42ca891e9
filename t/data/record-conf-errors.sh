#!/usr/bin/env bash
# Record what real nginx prints for `nginx -t` on each test configuration in
# t/data/conf_errors/NAME.conf, into t/data/conf_errors/NAME.expected.
#
# Usage:  t/data/record-conf-errors.sh [NAME ...]     (default: all cases)
# Env:    NGINX=/usr/sbin/nginx
#         NGINX_STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
#
# For every case a fresh directory DIR (under a mktemp dir) is created, the
# case is copied to DIR/nginx.conf, and if a directory NAME.files/ exists its
# contents are copied into DIR too (auxiliary files for `include` etc.).
# nginx is then run, with DIR as the working directory, as
#
#   nginx -t -p DIR -c DIR/nginx.conf -e DIR/error.log \
#         -g 'load_module MODULE;'
#
# (DIR without a trailing slash; nginx appends one to the prefix itself.)
#
# Why `-g` for load_module: the Debian build has the stream module as a
# dynamic module, so it must be loaded, but sluice does not need (or
# understand) load_module, so it must not be in the case files.  Directives
# given with -g are parsed before the configuration file (they are reported
# "in command line" if they fail), load_module is accepted there, and the
# case file is parsed as the top-level file, so every "in FILE:LINE" refers
# to DIR/nginx.conf with the line numbers of NAME.conf as written.  (The
# alternative, a wrapper main file that `include`s the case, would also keep
# FILE:LINE pointing at the case file, but then the "configuration file ...
# syntax is ok" lines and -T would name the wrapper, not the case.)
#
# Because -e points at a file, nginx writes the timestamped log line to
# DIR/error.log and additionally echoes every message of level warn or more
# severe to stderr as "nginx: [LEVEL] MESSAGE".  Only stderr is recorded; the
# program's stdout is discarded (nginx -t writes nothing there).
#
# NAME.expected = stderr with every occurrence of DIR replaced by the literal
# %%PREFIX%%, followed by a last line "exit=N" (N = nginx's exit status).
#
# Nothing listens: -t parses, resolves names and opens log files only.  Some
# cases depend on the host: *_host_not_found need "nonexistent.invalid" not
# to resolve (the exact text depends on the resolver: "host not found" when
# resolution answers NXDOMAIN); value_user_unknown and
# valid_user_nobody_nogroup assume running as root with Debian's users.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
NGINX=${NGINX:-/usr/sbin/nginx}
MODULE=${NGINX_STREAM_MODULE:-/usr/lib/nginx/modules/ngx_stream_module.so}
CASES=$HERE/conf_errors

work=$(mktemp -d /tmp/sluice-conf-errors.XXXXXX)
trap 'rm -rf "$work"' EXIT

if [ $# -gt 0 ]; then
    names=("$@")
else
    names=()
    for f in "$CASES"/*.conf; do
        names+=("$(basename "$f" .conf)")
    done
fi

for name in "${names[@]}"; do
    conf=$CASES/$name.conf
    [ -f "$conf" ] || { echo "no such case: $name" >&2; exit 2; }
    dir=$work/$name
    mkdir -p "$dir"
    cp "$conf" "$dir/nginx.conf"
    if [ -d "$CASES/$name.files" ]; then
        cp -R "$CASES/$name.files/." "$dir/"
    fi

    (cd "$dir" && timeout 20 "$NGINX" -t -p "$dir" -c "$dir/nginx.conf" \
        -e "$dir/error.log" -g "load_module $MODULE;") \
        2>"$dir/stderr" >/dev/null
    rc=$?

    {
        sed "s|$dir|%%PREFIX%%|g" "$dir/stderr"
        echo "exit=$rc"
    } > "$CASES/$name.expected"
done

echo "recorded ${#names[@]} case(s) into $CASES" >&2
