#!/usr/bin/env bash
# Run real nginx for a few short stream sessions on 127.0.0.1 and record its
# error_log and access_log output into t/data/logs/.
#
# Usage:  t/data/record-logs.sh
# Env:    NGINX=/usr/sbin/nginx
#         NGINX_STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
# Needs:  python3 (client, backends, masking), timeout(1).
#
# Everything binds to 127.0.0.1 only, on ephemeral ports picked at run time.
# nginx runs in the foreground of a background job (daemon off;
# master_process off; for the lifecycle run: master_process on), wrapped in
# timeout(1) so it can never outlive the script, and is stopped with SIGTERM
# (sent to the pid from its pid file) when the sessions are done.
# The backends are a python3 helper, also wrapped in timeout(1):
#   echo   : reads one line, answers "pong\n", closes
#   idle   : accepts and keeps the connection open without sending anything
#   full   : listen(0) and never accept(); the helper fills its accept queue
#            itself, so nginx's SYN to it is dropped -> connect timeout
#   closed : a port that was bound once and closed -> connection refused
#
# Output (t/data/logs/):
#   error-<session>.log     error_log lines (level info) of each session,
#                           volatile fields masked (see logs/README.md)
#   access-all.log          one access_log line per session using the format
#                           "all" (every variable, "|"-separated), masked
#   lifecycle-single.log    startup/shutdown lines, master_process off
#   lifecycle-master.log    startup/shutdown lines, master_process on
#   escape.txt              $weird (a map value with " \ TAB 0x01 0x7f e-acute)
#                           and $binary_remote_addr logged with the default
#                           escaping, escape=json and escape=none (hex dump +
#                           a readable rendering)
#   raw/                    one unmasked sample of each file, for humans
#
# Masking placeholders (documented with their regexes in logs/README.md):
#   %%TIME%%  %%PID%%  %%TID%%  %%MASTER_PID%%  %%WORKER_PID%%  %%CONN%%
#   %%PREFIX%%  %%HOSTNAME%%  %%PORT_<NAME>%%  %%CLIENT_PORT%%
#   %%UPSTREAM_LOCAL_PORT%%  %%MSEC%%  %%TIME_LOCAL%%  %%TIME_ISO8601%%
#   %%SECONDS%%  %%OS%%  %%RLIMIT%%  %%OPENSSL%%
# Every masked field is checked against its regex first; a mismatch makes the
# script fail, so the masked files also assert the field formats.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
NGINX=${NGINX:-/usr/sbin/nginx}
MODULE=${NGINX_STREAM_MODULE:-/usr/lib/nginx/modules/ngx_stream_module.so}
OUT=$HERE/logs
mkdir -p "$OUT/raw"

work=$(mktemp -d /tmp/sluice-logs.XXXXXX)
helper_pid=
nginx_pid=
cleanup() {
    # only the processes this script started, by pid
    if [ -n "$nginx_pid" ]; then kill "$nginx_pid" 2>/dev/null || true; fi
    if [ -n "$helper_pid" ]; then kill "$helper_pid" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# ---------------------------------------------------------------- helpers --
cat > "$work/helper.py" <<'PY'
import json, os, socket, sys, threading, time

def pick_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports

def serve_echo(ls):
    while True:
        c, _ = ls.accept()
        def one(c=c):
            c.settimeout(10)
            buf = b""
            try:
                while not buf.endswith(b"\n"):
                    d = c.recv(100)
                    if not d:
                        break
                    buf += d
                c.sendall(b"pong\n")
            finally:
                c.close()
        threading.Thread(target=one, daemon=True).start()

def serve_idle(ls):
    while True:
        c, _ = ls.accept()
        def one(c=c):
            c.settimeout(30)
            try:
                while c.recv(100):
                    pass
            except OSError:
                pass
            c.close()
        threading.Thread(target=one, daemon=True).start()

def backends(ports_file):
    p = json.load(open(ports_file))
    def listen(port, backlog=16):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(backlog)
        return s
    threading.Thread(target=serve_echo, args=(listen(p["BACKEND_ECHO"]),),
                     daemon=True).start()
    threading.Thread(target=serve_idle, args=(listen(p["BACKEND_IDLE"]),),
                     daemon=True).start()
    full = listen(p["BACKEND_FULL"], 0)
    fillers = []
    for _ in range(4):
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(("127.0.0.1", p["BACKEND_FULL"]))
        fillers.append(f)
    open(ports_file + ".ready", "w").close()
    time.sleep(120)

def client(port, send=b"", close_after_send=False, wait=15):
    """Connect, send, read until EOF; returns (local_port, data)."""
    c = socket.create_connection(("127.0.0.1", port), timeout=wait)
    local = c.getsockname()[1]
    if send:
        c.sendall(send)
    data = b""
    if close_after_send:
        time.sleep(0.2)
        c.close()
        return local, data
    while True:
        d = c.recv(4096)
        if not d:
            break
        data += d
    c.close()
    return local, data

if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "ports":
        names = sys.argv[2:]
        print(json.dumps(dict(zip(names, pick_ports(len(names))))))
    elif cmd == "backends":
        backends(sys.argv[2])
PY

# ------------------------------------------------------------- ports/conf --
PORT_NAMES="OK RETURN REFUSED PROXY_TIMEOUT CLIENT_CLOSE CONNECT_TIMEOUT
ESCAPE BACKEND_ECHO BACKEND_IDLE BACKEND_FULL BACKEND_CLOSED LIFECYCLE"
# shellcheck disable=SC2086
python3 "$work/helper.py" ports $PORT_NAMES > "$work/ports.json"
port() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$work/ports.json" "$1"; }
for n in $PORT_NAMES; do eval "P_$n=$(port "$n")"; done

timeout 150 python3 "$work/helper.py" backends "$work/ports.json" &
helper_pid=$!
for _ in $(seq 100); do [ -e "$work/ports.json.ready" ] && break; sleep 0.05; done
[ -e "$work/ports.json.ready" ] || { echo "backends did not start" >&2; exit 1; }

# Map value with a double quote, a backslash, a TAB (config escape \t), a raw
# 0x01 byte, a raw 0x7f byte and UTF-8 e-acute (0xc3 0xa9).
WEIRD=$(printf 'a\\"b\\\\c\\td\001e\177f\303\251g')

cat > "$work/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/error.log info;

events {
    worker_connections 64;
}

stream {
    log_format all '\$remote_addr|\$remote_port|\$binary_remote_addr|\$server_addr|\$server_port|\$protocol|\$connection|\$pid|\$msec|\$time_local|\$time_iso8601|\$hostname|\$nginx_version|\$bytes_sent|\$bytes_received|\$session_time|\$status|\$upstream_addr|\$upstream_bytes_sent|\$upstream_bytes_received|\$upstream_connect_time|\$upstream_first_byte_time|\$upstream_session_time';

    map \$remote_addr \$weird {
        default "$WEIRD";
    }
    log_format esc_default '\$weird|\$binary_remote_addr|\$upstream_addr|\$upstream_connect_time';
    log_format esc_json escape=json '{"weird":"\$weird","bin":"\$binary_remote_addr","ups":"\$upstream_addr","uct":"\$upstream_connect_time"}';
    log_format esc_none escape=none '\$weird|\$binary_remote_addr|\$upstream_addr|\$upstream_connect_time';

    access_log $work/access.log all;

    server {
        listen 127.0.0.1:$P_OK;
        proxy_pass 127.0.0.1:$P_BACKEND_ECHO;
    }
    server {
        listen 127.0.0.1:$P_RETURN;
        return "hi\n";
    }
    server {
        listen 127.0.0.1:$P_REFUSED;
        proxy_pass 127.0.0.1:$P_BACKEND_CLOSED;
    }
    server {
        listen 127.0.0.1:$P_PROXY_TIMEOUT;
        proxy_timeout 1s;
        proxy_pass 127.0.0.1:$P_BACKEND_IDLE;
    }
    server {
        listen 127.0.0.1:$P_CLIENT_CLOSE;
        proxy_pass 127.0.0.1:$P_BACKEND_IDLE;
    }
    server {
        listen 127.0.0.1:$P_CONNECT_TIMEOUT;
        proxy_connect_timeout 1s;
        proxy_pass 127.0.0.1:$P_BACKEND_FULL;
    }
    server {
        listen 127.0.0.1:$P_ESCAPE;
        return "esc\n";
        access_log $work/esc-default.log esc_default;
        access_log $work/esc-json.log esc_json;
        access_log $work/esc-none.log esc_none;
    }
}
EOF

wait_pidfile() {
    for _ in $(seq 200); do
        [ -s "$work/nginx.pid" ] && return 0
        sleep 0.05
    done
    echo "nginx did not start" >&2
    cat "$work/nginx.stderr" >&2
    exit 1
}

stop_nginx() {
    kill -TERM "$(cat "$work/nginx.pid")"
    wait "$nginx_pid" || true
    nginx_pid=
}

# ----------------------------------------------------- single-process run --
rm -f "$work/nginx.pid"
timeout 60 "$NGINX" -p "$work" -c "$work/nginx.conf" -e "$work/early.log" \
    -g "load_module $MODULE;" >"$work/nginx.stdout" 2>"$work/nginx.stderr" &
nginx_pid=$!
wait_pidfile
sleep 0.3

python3 - "$work" <<'PY'
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from helper import client
work = sys.argv[1]
P = json.load(open(os.path.join(work, "ports.json")))

def sizes():
    r = {}
    for f in ("error.log", "access.log"):
        p = os.path.join(work, f)
        r[f] = os.path.getsize(p) if os.path.exists(p) else 0
    return r

sessions = [
    ("startup", None),
    ("ok", lambda: client(P["OK"], b"hello\n")),
    ("return", lambda: client(P["RETURN"])),
    ("refused", lambda: client(P["REFUSED"])),
    ("proxy_timeout", lambda: client(P["PROXY_TIMEOUT"])),
    ("client_close", lambda: client(P["CLIENT_CLOSE"], b"bye\n", True)),
    ("connect_timeout", lambda: client(P["CONNECT_TIMEOUT"])),
    ("escape", lambda: client(P["ESCAPE"])),
]
meta = {}
for name, fn in sessions:
    before = sizes()
    if fn:
        local, data = fn()
        meta[name] = {"client_port": local, "reply": data.decode("latin-1")}
    time.sleep(0.5)
    after = sizes()
    meta.setdefault(name, {})["ranges"] = {f: [before[f], after[f]] for f in before}
json.dump(meta, open(os.path.join(work, "sessions.json"), "w"), indent=1)
PY

stop_nginx

# ------------------------------------------------------ master process run --
sed -e 's/^master_process off;/master_process on;/' \
    -e "s|^error_log .*|error_log $work/error-master.log notice;|" \
    -e "s|^pid .*|pid $work/nginx-master.pid;|" \
    "$work/nginx.conf" > "$work/nginx-master.conf"
rm -f "$work/nginx.pid"
timeout 60 "$NGINX" -p "$work" -c "$work/nginx-master.conf" \
    -e "$work/early-master.log" -g "load_module $MODULE;" \
    >"$work/nginx-master.stdout" 2>"$work/nginx-master.stderr" &
nginx_pid=$!
for _ in $(seq 200); do [ -s "$work/nginx-master.pid" ] && break; sleep 0.05; done
sleep 0.5
master_pid=$(cat "$work/nginx-master.pid")
kill -TERM "$master_pid"
wait "$nginx_pid" || true
nginx_pid=

kill "$helper_pid" 2>/dev/null || true
wait "$helper_pid" 2>/dev/null || true
helper_pid=

# ---------------------------------------------------------------- masking --
python3 - "$work" "$OUT" "$master_pid" <<'PY'
import json, os, re, socket, sys
work, out, master_pid = sys.argv[1], sys.argv[2], sys.argv[3]
P = json.load(open(os.path.join(work, "ports.json")))
S = json.load(open(os.path.join(work, "sessions.json")))
raw_dir = os.path.join(out, "raw")

def rd(name):
    with open(os.path.join(work, name), "rb") as f:
        return f.read()

def fail(msg):
    sys.exit("record-logs: " + msg)

TIME_RE = rb"\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}"

def mask_common(b, client_port=None, pids=()):
    b = b.replace(work.encode(), b"%%PREFIX%%")
    for name, port in sorted(P.items(), key=lambda kv: -len(str(kv[1]))):
        b = re.sub(rb"(?<=:)%d\b" % port, b"%%PORT_" + name.encode() + b"%%", b)
    if client_port:
        b = re.sub(rb"(?<=:)%d\b" % client_port, b"%%CLIENT_PORT%%", b)
    return b

def mask_error_lines(b, client_port=None, pidmap=None):
    outl = []
    for line in b.splitlines(keepends=True):
        m = re.match(rb"^(" + TIME_RE + rb") \[(\w+)\] (\d+)#(\d+): (.*)$", line, re.S)
        if not m:
            fail("unexpected error_log line: %r" % line)
        pid, tid, rest = m.group(3), m.group(4), m.group(5)
        if pidmap and pid.decode() in pidmap:
            p = pidmap[pid.decode()].encode()
        else:
            p = b"%%PID%%"
        t = p if tid == pid else b"%%TID%%"
        rest = re.sub(rb"^\*\d+ ", b"*%%CONN%% ", rest)
        rest = re.sub(rb"\*\d+ client ", b"*%%CONN%% client ", rest)
        rest = mask_common(rest, client_port)
        # local port of nginx's connection to the upstream
        rest = re.sub(rb"^(\*%%CONN%% proxy 127\.0\.0\.1:)\d+ ",
                      rb"\1%%UPSTREAM_LOCAL_PORT%% ", rest)
        outl.append(b"%%TIME%% [" + m.group(2) + b"] " + p + b"#" + t + b": " + rest)
    return b"".join(outl)

def mask_startup(b):
    # host dependent notices
    b = re.sub(rb"(: )OS: .*", rb"\1OS: %%OS%%", b)
    b = re.sub(rb"getrlimit\(RLIMIT_NOFILE\): \d+:\d+", b"getrlimit(RLIMIT_NOFILE): %%RLIMIT%%", b)
    b = re.sub(rb"built with OpenSSL .*", b"built with OpenSSL %%OPENSSL%%", b)
    return b

errlog = rd("error.log")
acclog = rd("access.log")
open(os.path.join(raw_dir, "error.log"), "wb").write(errlog)
open(os.path.join(raw_dir, "access.log"), "wb").write(acclog)
for f in ("nginx.stderr", "nginx-master.stderr", "early.log", "early-master.log"):
    p = os.path.join(work, f)
    if os.path.exists(p) and os.path.getsize(p):
        fail("%s is not empty: %r" % (f, rd(f)))

# ---- error log, per session
startup = None
for name, meta in S.items():
    a, z = meta["ranges"]["error.log"]
    chunk = errlog[a:z]
    if name == "startup":
        # everything written before the first session
        startup = errlog[:z]
        continue
    masked = mask_error_lines(chunk, meta.get("client_port"))
    open(os.path.join(out, "error-%s.log" % name), "wb").write(masked)
last = max(m["ranges"]["error.log"][1] for m in S.values())
shutdown = errlog[last:]
shutdown = re.sub(rb"received from \d+", b"received from %%SENDER_PID%%", shutdown)
open(os.path.join(out, "lifecycle-single.log"), "wb").write(
    mask_startup(mask_error_lines(startup))
    + b"# --- sessions omitted; then SIGTERM sent to nginx ---\n"
    + mask_error_lines(shutdown))

# ---- master run
m = rd("error-master.log")
open(os.path.join(raw_dir, "lifecycle-master.log"), "wb").write(m)
worker = re.search(rb"start worker process (\d+)", m)
pidmap = {master_pid: "%%MASTER_PID%%"}
if worker:
    pidmap[worker.group(1).decode()] = "%%WORKER_PID%%"
mm = mask_startup(mask_error_lines(m, pidmap=pidmap))
mm = re.sub(rb"start worker process \d+", b"start worker process %%WORKER_PID%%", mm)
mm = re.sub(rb"worker process \d+ exited", b"worker process %%WORKER_PID%% exited", mm)
mm = re.sub(rb"received from \d+", lambda x: b"received from " + (
    b"%%WORKER_PID%%" if worker and x.group(0).endswith(worker.group(1)) else b"%%SENDER_PID%%"), mm)
open(os.path.join(out, "lifecycle-master.log"), "wb").write(mm)

# ---- access log "all"
FIELDS = [
    ("remote_addr", rb"127\.0\.0\.1", None),
    ("remote_port", rb"\d+", "CLIENT_PORT"),
    ("binary_remote_addr", rb"\\x7F\\x00\\x00\\x01", None),
    ("server_addr", rb"127\.0\.0\.1", None),
    ("server_port", rb"\d+", "SERVER_PORT"),
    ("protocol", rb"TCP", None),
    ("connection", rb"\d+", b"%%CONN%%"),
    ("pid", rb"\d+", b"%%PID%%"),
    ("msec", rb"\d+\.\d{3}", b"%%MSEC%%"),
    ("time_local", rb"\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}", b"%%TIME_LOCAL%%"),
    ("time_iso8601", rb"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}", b"%%TIME_ISO8601%%"),
    ("hostname", re.escape(socket.gethostname().encode()), b"%%HOSTNAME%%"),
    ("nginx_version", rb"1\.22\.1", None),
    ("bytes_sent", rb"\d+", None),
    ("bytes_received", rb"\d+", None),
    ("session_time", rb"\d+\.\d{3}", b"%%SECONDS%%"),
    ("status", rb"\d{3}", None),
    ("upstream_addr", rb"-|127\.0\.0\.1:\d+", "PORTS"),
    ("upstream_bytes_sent", rb"-|\d+", None),
    ("upstream_bytes_received", rb"-|\d+", None),
    ("upstream_connect_time", rb"-|\d+\.\d{3}", b"%%SECONDS%%"),
    ("upstream_first_byte_time", rb"-|\d+\.\d{3}", b"%%SECONDS%%"),
    ("upstream_session_time", rb"-|\d+\.\d{3}", b"%%SECONDS%%"),
]
lines = []
for name, meta in S.items():
    a, z = meta["ranges"]["access.log"]
    chunk = acclog[a:z]
    if name in ("startup", "escape"):
        if chunk and name == "startup":
            fail("access log written at startup")
        # the escape session logs only to its own files, but "all" is
        # inherited from stream{} unless overridden: it is overridden there.
        continue
    if chunk.count(b"\n") != 1:
        fail("session %s: expected one access log line, got %r" % (name, chunk))
    vals = chunk.rstrip(b"\n").split(b"|")
    if len(vals) != len(FIELDS):
        fail("session %s: %d fields: %r" % (name, len(vals), chunk))
    res = []
    for (fname, rx, repl), v in zip(FIELDS, vals):
        if not re.fullmatch(rx, v):
            fail("session %s: field %s=%r does not match %r" % (name, fname, v, rx))
        if repl is None or v == b"-":
            res.append(v)
        elif repl == "CLIENT_PORT":
            if int(v) != meta["client_port"]:
                fail("remote_port mismatch")
            res.append(b"%%CLIENT_PORT%%")
        elif repl == "SERVER_PORT":
            names = [k for k, pv in P.items() if pv == int(v)]
            if len(names) != 1:
                fail("server_port %r is not a known port" % v)
            res.append(b"%%PORT_" + names[0].encode() + b"%%")
        elif repl == "PORTS":
            res.append(mask_common(v))
        elif repl == b"%%SECONDS%%":
            res.append(repl)
        else:
            res.append(repl)
    lines.append(b"# session: " + name.encode() + b"\n" + b"|".join(res) + b"\n")
open(os.path.join(out, "access-all.log"), "wb").write(b"".join(lines))

# ---- escaping
def readable(b):
    o = []
    for c in b:
        if 0x20 <= c < 0x7f and c != 0x5c:
            o.append(chr(c))
        elif c == 0x5c:
            o.append("\\\\")
        else:
            o.append("\\x%02x" % c)
    return "".join(o)

esc = ["# $weird is the map value a\"b\\c<TAB>d<0x01>e<0x7f>f<c3 a9>g (bytes below),",
       "# logged as $weird|$binary_remote_addr|$upstream_addr|$upstream_connect_time",
       "# (json: {\"weird\":..,\"bin\":..,\"ups\":..,\"uct\":..}) in a `return` session.",
       "# Each variant: 'hex' = exact bytes of the log line incl. the final LF;",
       "# 'readable' = same bytes, printable ASCII as is, '\\' shown as '\\\\',",
       "# every other byte as \\xHH.",
       ]
weird = b'a"b\\c\td\x01e\x7ff\xc3\xa9g'
esc.append("value hex %s" % weird.hex())
esc.append("value readable %s" % readable(weird))
for v in ("default", "json", "none"):
    b = rd("esc-%s.log" % v)
    open(os.path.join(raw_dir, "esc-%s.log" % v), "wb").write(b)
    esc.append("%s hex %s" % (v, b.hex()))
    esc.append("%s readable %s" % (v, readable(b)))
open(os.path.join(out, "escape.txt"), "w").write("\n".join(esc) + "\n")

# replies seen by the client, for reference
json.dump({k: v.get("reply") for k, v in S.items() if k != "startup"},
          open(os.path.join(out, "client-replies.json"), "w"), indent=1, sort_keys=True)
PY

echo "recorded into $OUT" >&2
