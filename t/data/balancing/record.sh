#!/usr/bin/env bash
# Record real nginx's upstream balancing decisions (round robin, hash,
# hash ... consistent) into t/data/balancing/*.json, then check them with
# verify.py (an independent python model of nginx's algorithms).
#
# Usage:  t/data/balancing/record.sh
# Env:    NGINX=/usr/sbin/nginx
#         NGINX_STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
# Needs:  python3, timeout(1), Linux (binds client sockets to 127.1.x.y).
#
# Upstream servers are the FIXED names 127.0.0.1:18101 .. 127.0.0.1:18110
# (the consistent-hash ring is derived from the server name text, so the
# names must not change between runs).  The script refuses to run if any of
# those ports is in use.  nginx's own listen ports are ephemeral.
# A python helper serves each backend port: it accepts, writes "<port>\n",
# closes.  Clients connect strictly one at a time and read until EOF; the
# answer tells which server was chosen.  The access log ($server_port
# $remote_addr $upstream_addr) is cross-checked against the client's view.
# nginx runs as: daemon off; master_process off; worker_processes 1; under
# timeout(1), stopped with SIGTERM by pid at the end.  Loopback only.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
NGINX=${NGINX:-/usr/sbin/nginx}
MODULE=${NGINX_STREAM_MODULE:-/usr/lib/nginx/modules/ngx_stream_module.so}
OUT=$HERE

work=$(mktemp -d /tmp/sluice-balancing.XXXXXX)
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

cat > "$work/bal.py" <<'PY'
import json, os, socket, sys, threading, time

BACKEND_PORTS = list(range(18101, 18111))

def name(i):
    return "127.0.0.1:%d" % BACKEND_PORTS[i]

# Keys for the hash scenarios: 1000 distinct client source addresses
# 127.1.0.1 .. 127.1.3.250, then EDGE_KEYS (see edge_keys()).
KEYS = ["127.1.%d.%d" % (i // 250, i % 250 + 1) for i in range(1000)]

def edge_keys(scs):
    """Extra keys from 127.2.0.0/16 (scanned in order .0.1, .0.2, ...) that
    hit the edges of each consistent-hash ring: for every chash server set
    the first 5 addresses whose crc32 is above the ring's highest point (the
    lookup runs off the end and wraps to point 0) and the first 2 whose
    crc32 is below its lowest point.  The ring is computed with verify.py's
    model; this only chooses keys, the picks are still nginx's."""
    sys.path.insert(0, os.environ["BAL_HERE"])
    import verify, zlib
    out = []
    for sc in scs:
        if sc["method"] != "hash_consistent":
            continue
        pts = verify.chash_points(sc["servers"])
        lo, hi = pts[0][0], pts[-1][0]
        above, below = [], []
        i = 0
        while len(above) < 5 or len(below) < 2:
            k = "127.2.%d.%d" % (i // 250, i % 250 + 1)
            i += 1
            h = zlib.crc32(k.encode())
            if h > hi and len(above) < 5:
                above.append(k)
            elif h < lo and len(below) < 2:
                below.append(k)
        for k in above + below:
            if k not in out:
                out.append(k)
    return out
RR_N = 60
MIXED10 = [5, 1, 3, 2, 4, 1, 5, 2, 3, 4]

def srv(i, weight=1, down=False, backup=False, max_fails=1, fail_timeout=10):
    return {"name": name(i), "weight": weight, "backup": backup, "down": down,
            "max_fails": max_fails, "fail_timeout": fail_timeout}

def scenarios():
    S = []
    def add(fname, method, servers, note=""):
        S.append({"file": fname, "method": method, "servers": servers,
                  "note": note})
    # ---- round robin
    add("rr-equal-3", "round_robin", [srv(i) for i in range(3)])
    add("rr-weights-5-1-1", "round_robin",
        [srv(0, 5), srv(1, 1), srv(2, 1)])
    add("rr-weights-3-2-1-4", "round_robin",
        [srv(0, 3), srv(1, 2), srv(2, 1), srv(3, 4)])
    add("rr-down-4", "round_robin",
        [srv(0), srv(1), srv(2, down=True), srv(3)])
    add("rr-backup", "round_robin",
        [srv(0, down=True), srv(1, down=True), srv(2, backup=True)],
        "both primaries down: every connection goes to the backup")
    add("rr-backup-weighted", "round_robin",
        [srv(0, down=True), srv(1, down=True), srv(2, 2, backup=True),
         srv(3, 1, backup=True)],
        "both primaries down: smooth weighted rr over the backups (2,1)")
    add("rr-mixed-10", "round_robin",
        [srv(i, w) for i, w in enumerate(MIXED10)])
    add("rr-weights-huge", "round_robin",
        [srv(0, 2 ** 33), srv(1, 2 ** 32), srv(2, 1)],
        "weights beyond 32 bits keep their ratios (nginx's are 64-bit)")
    # ---- hash / hash consistent, same server sets
    sets = [
        ("equal-3", [srv(i) for i in range(3)], ""),
        ("weights-1-2-3-4-5", [srv(i, i + 1) for i in range(5)], ""),
        ("mixed-10", [srv(i, w) for i, w in enumerate(MIXED10)], ""),
        ("down-5", [srv(i, i + 1, down=(i == 2)) for i in range(5)],
         "server index 2 (weight 3) is down: exercises the rehash / "
         "next-point path"),
    ]
    for suffix, servers, note in sets:
        add("hash-" + suffix, "hash", servers, note)
    for suffix, servers, note in sets:
        add("chash-" + suffix, "hash_consistent", servers, note)
    return S

def hash_keys():
    return KEYS + edge_keys(scenarios())

def upstream_text(i, sc):
    lines = ["upstream %s {" % sc["file"].replace("-", "_")]
    if sc["method"] == "hash":
        lines.append("    hash $remote_addr;")
    elif sc["method"] == "hash_consistent":
        lines.append("    hash $remote_addr consistent;")
    for s in sc["servers"]:
        l = "    server " + s["name"]
        if s["weight"] != 1:
            l += " weight=%d" % s["weight"]
        if s["max_fails"] != 1:
            l += " max_fails=%d" % s["max_fails"]
        if s["fail_timeout"] != 10:
            l += " fail_timeout=%ds" % s["fail_timeout"]
        if s["down"]:
            l += " down"
        if s["backup"]:
            l += " backup"
        lines.append(l + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"

def check_backend_ports_free():
    busy = []
    for p in BACKEND_PORTS:
        s = socket.socket()
        # SO_REUSEADDR as the backends use it: TIME_WAIT leftovers of a
        # previous run are fine, a listener or a live socket is not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", p))
            s.listen(1)
        except OSError:
            busy.append(p)
        finally:
            s.close()
    if busy:
        sys.exit("record: backend ports in use: %s" % busy)

def pick_listen_ports(n):
    socks, ports = [], []
    while len(ports) < n:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        p = s.getsockname()[1]
        if p not in BACKEND_PORTS:
            ports.append(p)
    for s in socks:
        s.close()
    return ports

def conf(work):
    S = scenarios()
    ports = pick_listen_ports(len(S))
    ups, srvs = [], []
    for i, (sc, port) in enumerate(zip(S, ports)):
        sc["upstream"] = upstream_text(i, sc)
        sc["listen"] = port
        ups.append(sc["upstream"])
        srvs.append("server {\n    listen 127.0.0.1:%d;\n"
                    "    proxy_pass %s;\n}\n"
                    % (port, sc["file"].replace("-", "_")))
    json.dump(S, open(os.path.join(work, "scenarios.json"), "w"), indent=1)
    indent = lambda t: "".join("    " + l + "\n" for l in t.splitlines())
    c = """daemon off;
master_process off;
worker_processes 1;
pid %(w)s/nginx.pid;
error_log %(w)s/error.log notice;

events {
    worker_connections 64;
}

stream {
    log_format bal '$server_port $remote_addr $upstream_addr';
    access_log %(w)s/access.log bal;
    proxy_connect_timeout 2s;
    proxy_timeout 5s;

%(ups)s
%(srvs)s}
""" % {"w": work, "ups": indent("\n".join(ups)), "srvs": indent("\n".join(srvs))}
    open(os.path.join(work, "nginx.conf"), "w").write(c)

def backends(work):
    def serve(ls, port):
        ans = b"%d\n" % port
        while True:
            c, _ = ls.accept()
            try:
                c.sendall(ans)
            except OSError:
                pass
            c.close()
    for p in BACKEND_PORTS:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", p))
        s.listen(64)
        threading.Thread(target=serve, args=(s, p), daemon=True).start()
    open(os.path.join(work, "backends.ready"), "w").close()
    time.sleep(600)

def one(listen, src):
    c = socket.socket()
    c.settimeout(10)
    c.bind((src, 0))
    c.connect(("127.0.0.1", listen))
    data = b""
    while True:
        d = c.recv(100)
        if not d:
            break
        data += d
    c.close()
    try:
        port = int(data.decode())
    except ValueError:
        sys.exit("record: bad answer %r from listen port %d (src %s)"
                 % (data, listen, src))
    return port

def clients(work):
    S = json.load(open(os.path.join(work, "scenarios.json")))
    hkeys = hash_keys()
    for sc in S:
        names = [s["name"] for s in sc["servers"]]
        if sc["method"] == "round_robin":
            keys = ["127.0.0.1"] * RR_N
        else:
            keys = hkeys
        answered = []
        for k in keys:
            p = one(sc["listen"], k)
            answered.append(names.index("127.0.0.1:%d" % p))
        sc["client_keys"] = keys
        sc["picks"] = answered
    json.dump(S, open(os.path.join(work, "results.json"), "w"))

def dump_compact(d):
    # one top-level field per line, values (arrays) on one line
    parts = []
    for k, v in d.items():
        if k == "servers":
            v = "[\n" + ",\n".join("  " + json.dumps(s) for s in v) + "\n ]"
        else:
            v = json.dumps(v)
        parts.append(" %s: %s" % (json.dumps(k), v))
    return "{\n" + ",\n".join(parts) + "\n}\n"

def finish(work, out):
    S = json.load(open(os.path.join(work, "results.json")))
    # error log: nothing above [notice] may appear (a failed/slow backend
    # would change later decisions through max_fails)
    for line in open(os.path.join(work, "error.log")):
        if "[notice]" not in line:
            sys.exit("record: unexpected error_log line: " + line)
    # access log cross-check: one line per connection, in order
    acc = [l.split() for l in open(os.path.join(work, "access.log"))]
    i = 0
    for sc in S:
        for key, pick in zip(sc["client_keys"], sc["picks"]):
            sp, ra, ua = acc[i]
            i += 1
            want = [str(sc["listen"]), key, sc["servers"][pick]["name"]]
            if [sp, ra, ua] != want:
                sys.exit("record: access log %r != %r" % ([sp, ra, ua], want))
    if i != len(acc):
        sys.exit("record: %d access log lines, expected %d" % (len(acc), i))
    for sc in S:
        d = {"nginx": "1.22.1", "method": sc["method"]}
        if sc["method"] != "round_robin":
            d["key"] = "$remote_addr"
        if sc["note"]:
            d["note"] = sc["note"]
        d["upstream"] = sc["upstream"]
        d["servers"] = sc["servers"]
        if sc["method"] == "round_robin":
            d["connections"] = len(sc["picks"])
        else:
            d["keys_note"] = ("keys[0:1000] = 127.1.0.1 .. 127.1.3.250; "
                              "the rest: chosen to fall above the highest / "
                              "below the lowest point of the chash rings")
            d["keys"] = sc["client_keys"]
        d["picks"] = sc["picks"]
        open(os.path.join(out, sc["file"] + ".json"), "w").write(dump_compact(d))
    print("record: wrote %d files" % len(S), file=sys.stderr)

if __name__ == "__main__":
    cmd, work = sys.argv[1], sys.argv[2]
    if cmd == "check":
        check_backend_ports_free()
    elif cmd == "conf":
        conf(work)
    elif cmd == "backends":
        backends(work)
    elif cmd == "clients":
        clients(work)
    elif cmd == "finish":
        finish(work, sys.argv[3])
PY

export BAL_HERE="$HERE"
python3 "$work/bal.py" check "$work"
python3 "$work/bal.py" conf "$work"

timeout 600 python3 "$work/bal.py" backends "$work" &
helper_pid=$!
for _ in $(seq 100); do [ -e "$work/backends.ready" ] && break; sleep 0.05; done
[ -e "$work/backends.ready" ] || { echo "backends did not start" >&2; exit 1; }

"$NGINX" -t -q -p "$work" -c "$work/nginx.conf" -e "$work/early.log" \
    -g "load_module $MODULE;"
rm -f "$work/error.log"

timeout 550 "$NGINX" -p "$work" -c "$work/nginx.conf" -e "$work/early.log" \
    -g "load_module $MODULE;" >"$work/nginx.stdout" 2>"$work/nginx.stderr" &
nginx_pid=$!
for _ in $(seq 200); do [ -s "$work/nginx.pid" ] && break; sleep 0.05; done
[ -s "$work/nginx.pid" ] || { echo "nginx did not start" >&2; cat "$work/nginx.stderr" >&2; exit 1; }
sleep 0.3

python3 "$work/bal.py" clients "$work"

kill -TERM "$(cat "$work/nginx.pid")"
wait "$nginx_pid" || true
nginx_pid=
kill "$helper_pid" 2>/dev/null || true
wait "$helper_pid" 2>/dev/null || true
helper_pid=

python3 "$work/bal.py" finish "$work" "$OUT"
python3 "$HERE/verify.py" "$OUT"
echo "recorded into $OUT" >&2
