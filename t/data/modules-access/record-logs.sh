#!/usr/bin/env bash
# Run real nginx (1.22.1, Debian) for a few sessions through the access and
# limit_conn modules and record the lines they log, for t/limit_conn.rs.
#
# Usage: t/data/modules-access/record-logs.sh      (needs python3, timeout)
# Env:   NGINX=/usr/sbin/nginx
#        NGINX_STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
#
# 127.0.0.1 only, ports picked at run time; nginx runs under timeout(1) with
# master_process off and is stopped with SIGTERM by its pid.
#
# Sessions, one after the other (runtime.conf is the configuration, with
# %%PREFIX%% and %%PORT_X%% placeholders, after the globals daemon off;
# master_process off; pid ...; error_log PREFIX/error.log info;):
#   1. DENY      deny 127.0.0.1             -> closed, 403
#   2. HOLD      limit_conn one 1, proxied to an idle backend, kept open
#   3. HOLD      same key again             -> closed, 503
#   4. DRY       limit_conn one 1 dry run, log level warn -> answered, 200
#   5. LONGKEY   a key of 300 bytes         -> answered, 200, key skipped
#   then session 2 is closed by the client.
# Output:
#   runtime.error   the error_log lines of levels warn and error, masked as
#                   [LEVEL] *CONN MESSAGE, ports as %%PORT_X%%
#   runtime.access  the access_log lines ($server_port $status
#                   $limit_conn_status), ports as %%PORT_X%%
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
NGINX=${NGINX:-/usr/sbin/nginx}
MODULE=${NGINX_STREAM_MODULE:-/usr/lib/nginx/modules/ngx_stream_module.so}
work=$(mktemp -d /tmp/sluice-modules-logs.XXXXXX)
nginx_pid=
cleanup() {
    if [ -n "$nginx_pid" ]; then kill "$nginx_pid" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/run.py" <<'PY'
import os, re, socket, subprocess, sys, threading, time
work, nginx, module, here = sys.argv[1:5]
names = ["DENY", "HOLD", "DRY", "LONGKEY", "BACKEND"]
socks = []
for _ in names:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
ports = {n: s.getsockname()[1] for n, s in zip(names, socks)}
for s in socks:
    s.close()

idle = socket.socket()
idle.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
idle.bind(("127.0.0.1", ports["BACKEND"])); idle.listen(16)
def serve():
    while True:
        c, _ = idle.accept()
        def one(c=c):
            try:
                while c.recv(100):
                    pass
            except OSError:
                pass
            c.close()
        threading.Thread(target=one, daemon=True).start()
threading.Thread(target=serve, daemon=True).start()

conf = open(os.path.join(here, "runtime.conf")).read()
conf = conf.replace("%%PREFIX%%", work + "/")
for n, p in ports.items():
    conf = conf.replace("%%PORT_" + n + "%%", str(p))
open(os.path.join(work, "nginx.conf"), "w").write(
    "load_module " + module + ";\ndaemon off;\nmaster_process off;\npid " + work +
    "/nginx.pid;\nerror_log " + work + "/error.log info;\n" + conf)
proc = subprocess.Popen(["timeout", "30", nginx, "-p", work + "/", "-c",
                         os.path.join(work, "nginx.conf")])
for _ in range(200):
    if os.path.exists(os.path.join(work, "nginx.pid")):
        break
    time.sleep(0.05)

def session(port, keep=False):
    c = socket.create_connection(("127.0.0.1", port), timeout=10)
    if keep:
        time.sleep(0.3)
        return c, b""
    data = b""
    while True:
        d = c.recv(100)
        if not d:
            break
        data += d
    c.close()
    return None, data

assert session(ports["DENY"])[1] == b""
held, _ = session(ports["HOLD"], keep=True)
assert session(ports["HOLD"])[1] == b""
assert session(ports["DRY"])[1] == b"ok"
assert session(ports["LONGKEY"])[1] == b"ok"
held.close()
time.sleep(0.5)
pid = int(open(os.path.join(work, "nginx.pid")).read())
os.kill(pid, 15)
proc.wait()

def mask(line):
    for n, p in ports.items():
        line = re.sub(r"\b" + str(p) + r"\b", "%%PORT_" + n + "%%", line)
    return line

out = []
for l in open(os.path.join(work, "error.log")):
    m = re.match(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(warn|error)\] \d+#\d+: \*\d+ (.*)$", l.rstrip("\n"))
    if m:
        out.append("[%s] *%%%%CONN%%%% %s" % (m.group(1), mask(m.group(2))))
open(os.path.join(here, "runtime.error"), "w").write("".join(x + "\n" for x in out))
acc = [mask(l) for l in open(os.path.join(work, "access.log"))]
open(os.path.join(here, "runtime.access"), "w").write("".join(acc))
PY
python3 "$work/run.py" "$work" "$NGINX" "$MODULE" "$HERE"
echo "recorded runtime.error and runtime.access into $HERE" >&2
