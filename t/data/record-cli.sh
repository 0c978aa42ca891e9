#!/usr/bin/env bash
# Record nginx's command-line behaviour into t/data/cli/.
#
# Usage:  t/data/record-cli.sh
# Env:    NGINX=/usr/sbin/nginx
#         NGINX_STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
#
# For each case NAME this writes
#   cli/NAME.stderr   everything nginx wrote to stderr, then a last line
#                     "exit=N" (N = exit status)
#   cli/NAME.stdout   what nginx wrote to stdout (only if non-empty; -T)
# with the absolute temporary directory DIR replaced by %%PREFIX%%.
#
# Configurations are taken from cli/conf/ (nginx.conf includes servers.conf
# so that -T dumps two files) and copied to DIR.  As in
# record-conf-errors.sh, the dynamic stream module is loaded with
#   -g 'load_module MODULE;'
# so that the files stay free of load_module; the commands run are
#   nginx OPTIONS -p DIR -c DIR/nginx.conf -e DIR/error.log -g '...'
# with DIR as the working directory.  Nothing listens (only -t/-T/-h/-v/-V,
# option errors, and -s against a missing or invalid pid file).  Careful when
# adding cases: an invocation that parses (e.g. `nginx -`, which is accepted)
# starts a real nginx on the system configuration.
#
# help / version / version-full (-h, -v, -V) are recorded for reference
# only: they contain Debian build details (configure arguments, compiled-in
# default paths) that sluice is not expected to reproduce.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
NGINX=${NGINX:-/usr/sbin/nginx}
MODULE=${NGINX_STREAM_MODULE:-/usr/lib/nginx/modules/ngx_stream_module.so}
OUT=$HERE/cli
LM="load_module $MODULE;"

work=$(mktemp -d /tmp/sluice-cli.XXXXXX)
trap 'rm -rf "$work"' EXIT

# run NAME CONFDIR ARGS...  (CONFDIR: subdirectory of cli/conf, or "-")
run() {
    local name=$1 confdir=$2
    shift 2
    local dir=$work/$name
    mkdir -p "$dir"
    if [ "$confdir" != - ]; then
        cp -R "$OUT/conf/$confdir/." "$dir/"
    fi
    # Arguments may mention @DIR@, replaced by the case directory.
    local args=() a
    for a in "$@"; do
        args+=("${a//@DIR@/$dir}")
    done
    (cd "$dir" && timeout 20 "$NGINX" "${args[@]}") \
        >"$dir/.stdout" 2>"$dir/.stderr"
    local rc=$?
    {
        sed "s|$dir|%%PREFIX%%|g" "$dir/.stderr"
        echo "exit=$rc"
    } > "$OUT/$name.stderr"
    if [ -s "$dir/.stdout" ]; then
        sed "s|$dir|%%PREFIX%%|g" "$dir/.stdout" > "$OUT/$name.stdout"
    else
        rm -f "$OUT/$name.stdout"
    fi
}

STD=(-p @DIR@ -c @DIR@/nginx.conf -e @DIR@/error.log)

# reference only
run help          -  -h
run version       -  -v
run version-full  -  -V

# configuration test on a valid configuration with an include
run test-ok        valid  -t    "${STD[@]}" -g "$LM"
run test-quiet     valid  -t -q "${STD[@]}" -g "$LM"
run test-dump      valid  -T    "${STD[@]}" -g "$LM"
run test-dump-quiet valid -T -q "${STD[@]}" -g "$LM"
# a file included twice is dumped once
run test-dump-include-twice include-twice -T "${STD[@]}" -g "$LM"
# -q does not silence errors
run test-quiet-error invalid -t -q "${STD[@]}" -g "$LM"
run test-dump-error  invalid -T    "${STD[@]}" -g "$LM"

# -c pointing at a missing file
run test-missing-conf - -t -p @DIR@ -c @DIR@/missing.conf -e @DIR@/error.log \
    -g "$LM"

# -g (global directives) errors: reported "in command line"
run g-missing-semicolon valid -t "${STD[@]}" -g "$LM daemon off"
run g-block             valid -t "${STD[@]}" -g "$LM events {}"
run g-unknown           valid -t "${STD[@]}" -g "$LM frobnicate on;"
run g-duplicate         g-dup -t "${STD[@]}" -g "$LM daemon off;"
# a byte that is not UTF-8 in -g is quoted as given
run g-unknown-bytes     valid -t "${STD[@]}" -g "$LM b"$'\xe9'"gus;"

# option parsing errors
run opt-invalid        -  -Z
run opt-p-missing-arg  -  -p
run opt-c-missing-arg  -  -t -c
run opt-bad-signal     -  -s foo
run opt-e-missing-arg  -  -e
run opt-g-missing-arg  -  -g
run opt-s-missing-arg  -  -s
run opt-not-dash       -  foo
run opt-grouped-invalid - -vZ
# arguments that are not UTF-8: quoted as the bytes given (an option letter is one byte)
run opt-invalid-byte    -  $'-\xff'
run opt-invalid-utf8    -  $'-\xc3\xa9'
run opt-bad-signal-bytes - -s $'\xffx'
run opt-not-dash-bytes  -  $'\xfe'

# -s with no running master: the pid file (conf: "pid nginx.pid;") is
# missing, or holds no number.  Nothing is signalled.
run signal-missing-pid signal         -s stop "${STD[@]}" -g "$LM"
run signal-bad-pid     signal-bad-pid -s stop "${STD[@]}" -g "$LM"

echo "recorded into $OUT" >&2
