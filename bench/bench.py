#!/usr/bin/env python3
"""Side-by-side benchmark: sluice vs nginx (1 worker) vs HAProxy (1 thread, mode tcp).

Run it through `bench/run` (installs the tools, builds sluice, then calls this script):

    bench/run                      # full run: 5 rounds x 5 s, writes bench/RESULTS.md
    bench/run --rounds 1 --duration 2 --only keepalive      # quick check, no RESULTS.md
    bench/run --only short,syscalls --proxies sluice,nginx

Everything talks over 127.0.0.1. The proxy under test is pinned to CPU 0 with taskset;
load generators and backends (iperf3 -s, an nginx http instance, an asyncio echo holder,
dnsmasq) are pinned to CPU 1, and so is this script. The exception is short2w: each proxy
with 2 workers (HAProxy: 2 threads), unpinned. Each measurement starts a fresh proxy,
measures, and stops it; every round runs every proxy once per scenario, in an order that
rotates from round to round. Proxy CPU is utime+stime from /proc/PID/stat summed over the
proxy's whole process tree (nginx: master + worker). Medians are taken over rounds;
ratios against nginx are per-round paired ratios, then their median.

Every process this script starts runs in its own session; on exit (normal, error,
Ctrl-C, SIGTERM) each of those sessions is killed by process id.
"""

import argparse
import asyncio
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_MD = ROOT / "bench" / "RESULTS.md"
SECTION = "## Side-by-side: sluice vs nginx vs HAProxy (issue 4)"

CPU_PROXY = 0
CPU_LOAD = 1
ALL_PROXIES = ["sluice", "nginx", "haproxy", "haproxy-splice"]
ALL_SCENARIOS = ["bulk1", "bulk4", "short", "short2w", "keepalive", "medium", "short-sliced", "keepalive-sliced",
                 "idle", "dns", "dnslb", "syscalls"]
# short and keepalive again, but with every proxy running at once and the load switching
# between them every SLICE_S seconds (see sliced() in main)
SLICED = {"short-sliced": True, "keepalive-sliced": False}  # scenario -> Connection: close
SLICE_S = 1
# UDP scenarios (HAProxy has no UDP proxying) and their dnsperf load: (clients, outstanding).
# dns: 4 client sockets keep 100 queries in flight, so each client address is one long
# session; dnslb: DNS load balancing as deployed (`proxy_responses 1`), 64 clients with one
# query in flight each, so every query is a session of its own.
DNS_LOAD = {"dns": (4, 100), "dnslb": (64, 64)}
CLK_TCK = os.sysconf("SC_CLK_TCK")
NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
WRK_CONNS = 64
# medium: keep-alive requests whose answers are MEDIUM_BYTES (a static file of the http
# backend): big enough that a read can fill proxy_buffer_size, so sluice's splice path
# runs, too small to be bulk. Keeps the small-flow cost of that path measured.
MEDIUM_BYTES = 20000
MEDIUM_PATH = "/medium"


# --------------------------------------------------------------------------------------
# processes: everything started here is registered and killed by id on the way out

class Procs:
    def __init__(self):
        self.live = {}  # pid -> (Popen, name)

    def start(self, argv, cpu, name, out=None, cwd=None):
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu)] + list(argv)
        f = open(out, "ab") if out else subprocess.DEVNULL
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                 start_new_session=True, cwd=cwd)
        finally:
            if out:
                f.close()
        self.live[p.pid] = (p, name)
        return p

    @staticmethod
    def session_members(sid):
        """Processes still in the session this script created for one child (sid == its pid)."""
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            st = read_stat(int(d))
            if st and st["session"] == sid:
                out.append(int(d))
        return out

    def stop(self, p, sig=signal.SIGTERM, timeout=5.0):
        """Stop one child and anything it forked (same session), by process id."""
        if p.pid not in self.live:
            return p.returncode
        if p.poll() is None:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # nginx workers, or anything left behind after the leader exited
        deadline = time.time() + timeout
        while True:
            members = [m for m in self.session_members(p.pid) if m != p.pid or p.poll() is None]
            if not members:
                break
            kill_sig = sig if time.time() < deadline else signal.SIGKILL
            for m in members:
                try:
                    os.kill(m, kill_sig)
                except ProcessLookupError:
                    pass
            if p.poll() is None and kill_sig == signal.SIGKILL:
                try:
                    p.wait(2)
                except subprocess.TimeoutExpired:
                    pass
            time.sleep(0.05)
            if time.time() > deadline + 3:
                break
        if p.poll() is None:
            p.kill()
            p.wait()
        del self.live[p.pid]
        return p.returncode

    def stop_all(self):
        for pid in list(self.live):
            p, _ = self.live[pid]
            try:
                self.stop(p, signal.SIGTERM, 2.0)
            except Exception as e:  # keep going: every child must go
                print(f"cleanup: {pid}: {e}", file=sys.stderr)


PROCS = Procs()


def read_stat(pid):
    try:
        with open(f"/proc/{pid}/stat", errors="replace") as f:  # (names may not be UTF-8)
            s = f.read()
    except OSError:
        return None
    rest = s[s.rfind(")") + 2:].split()
    return {"ppid": int(rest[1]), "pgrp": int(rest[2]), "session": int(rest[3]),
            "utime": int(rest[11]), "stime": int(rest[12])}


def tree(root):
    """pid of root and all its descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = read_stat(int(d))
            if st:
                children.setdefault(st["ppid"], []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_snapshot(root):
    snap = {}
    for pid in tree(root):
        st = read_stat(pid)
        if st:
            snap[pid] = (st["utime"], st["stime"])
    return snap


def cpu_delta(a, b):
    """(user, sys) seconds the tree used between two snapshots."""
    u = s = 0
    for pid, (bu, bs) in b.items():
        au, as_ = a.get(pid, (0, 0))
        u += bu - au
        s += bs - as_
    return u / CLK_TCK, s / CLK_TCK


def rss_kib(root):
    total = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def core_busy():
    """busy and total ticks per CPU from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                parts = line.split()
                v = [int(x) for x in parts[1:]]
                idle = v[3] + v[4]
                out[int(parts[0][3:])] = (sum(v[:8]) - idle, sum(v[:8]))
    return out


def _port_base():
    # Below the ephemeral range: a port the kernel hands out to outgoing connections can
    # sit in TIME_WAIT (without SO_REUSEADDR) and then refuse a restarted proxy's bind().
    try:
        low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return max(1024, min(low, 32768) - 12000) + (os.getpid() % 100) * 100


_NEXT_PORT = [None]


def free_port(kind=socket.SOCK_STREAM):
    """A port on 127.0.0.1 free for both TCP and UDP, below the ephemeral range."""
    if _NEXT_PORT[0] is None:
        _NEXT_PORT[0] = _port_base()
    while True:
        port = _NEXT_PORT[0]
        _NEXT_PORT[0] += 1
        try:
            for k in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, k) as s:
                    s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue


def wait_port(port, proc, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def run(argv, cpu=None, timeout=None, name="cmd"):
    """Run a child to completion (registered, so Ctrl-C still kills it)."""
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu)] + list(argv)
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    PROCS.live[p.pid] = (p, name)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        PROCS.stop(p, signal.SIGKILL, 1.0)
        out, err = p.communicate()
        return -1, out.decode(errors="replace"), err.decode(errors="replace") + "\n(timed out)"
    PROCS.live.pop(p.pid, None)
    return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")


# --------------------------------------------------------------------------------------
# configurations

class Ports:
    def __init__(self, proxies):
        self.iperf = free_port()
        self.http = free_port()
        self.holder = free_port()
        self.dns = free_port(socket.SOCK_DGRAM)
        # per proxy and worker count (1, or 2 for short2w)
        self.proxy = {(p, w): {"bulk": free_port(), "http": free_port(), "idle": free_port(),
                               "dns": free_port(socket.SOCK_DGRAM), "dnslb": free_port(socket.SOCK_DGRAM)}
                      for p in proxies for w in (1, 2)}


def stream_servers(pp, ports, udp):
    s = f"""
    server {{ listen 127.0.0.1:{pp['bulk']}; proxy_pass 127.0.0.1:{ports.iperf}; }}
    server {{ listen 127.0.0.1:{pp['http']}; proxy_pass 127.0.0.1:{ports.http}; }}
    server {{ listen 127.0.0.1:{pp['idle']}; proxy_pass 127.0.0.1:{ports.holder}; }}
"""
    if udp:
        s += f"""    server {{ listen 127.0.0.1:{pp['dns']} udp; proxy_pass 127.0.0.1:{ports.dns}; }}
    server {{ listen 127.0.0.1:{pp['dnslb']} udp; proxy_pass 127.0.0.1:{ports.dns}; proxy_responses 1; }}
"""
    return s


def sluice_conf(d, pp, ports, udp, workers):
    return f"""daemon off;
master_process {'on' if workers > 1 else 'off'};
worker_processes {workers};
error_log {d}/error.log warn;
pid {d}/proxy.pid;
events {{ worker_connections 20000; }}
stream {{{stream_servers(pp, ports, udp)}}}
"""


def nginx_conf(d, pp, ports, workers):
    return f"""load_module {NGINX_STREAM_MODULE};
daemon off;
master_process on;
worker_processes {workers};
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 20000; }}
stream {{{stream_servers(pp, ports, True)}}}
"""


def haproxy_conf(pp, ports, splice, threads):
    # maxconn 20000 needs 40,014 descriptors and the hard limit here is 20,000 (haproxy
    # refuses to start); with splice-auto haproxy also reserves maxconn/4 pipes. 7990 is
    # the largest that fits both variants, still well above the idle scenario's 5,000.
    return f"""global
    nbthread {threads}
    maxconn 7990
defaults
    mode tcp
    timeout connect 5s
    timeout client 10m
    timeout server 10m
{'    option splice-auto' if splice else '    # no splice (HAProxy default)'}
frontend bulk
    bind 127.0.0.1:{pp['bulk']}
    default_backend bulk
backend bulk
    server s1 127.0.0.1:{ports.iperf}
frontend http
    bind 127.0.0.1:{pp['http']}
    default_backend http
backend http
    server s1 127.0.0.1:{ports.http}
frontend idle
    bind 127.0.0.1:{pp['idle']}
    default_backend idle
backend idle
    server s1 127.0.0.1:{ports.holder}
"""


def http_backend_conf(d, port):
    return f"""daemon off;
master_process on;
worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    client_body_temp_path {d}/t1; proxy_temp_path {d}/t2; fastcgi_temp_path {d}/t3;
    uwsgi_temp_path {d}/t4; scgi_temp_path {d}/t5;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 "ok"; }}
        location = {MEDIUM_PATH} {{ root {d}/www; default_type application/octet-stream; }}
    }}
}}
"""


# --------------------------------------------------------------------------------------
# the proxies under test

class Proxy:
    """One contestant: writes its config once, starts a fresh process per measurement.
    workers=2 (short2w): 2 worker processes (HAProxy: 2 threads), not pinned to CPU 0."""

    def __init__(self, name, work, ports, sluice_bin, sluice_udp, workers=1):
        self.name = name
        self.workers = workers
        # neutral names in every command line (see --sluice): px1..px4, proxy.conf
        self.dir = work / f"px{ALL_PROXIES.index(name) + 1}{'-2w' if workers > 1 else ''}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pp = ports.proxy[name, workers]
        self.log = self.dir / "error.log"
        self.out = self.dir / "stdout.log"
        self.udp = True
        self.proc = None
        if name == "sluice":
            self.udp = sluice_udp
            conf = self.dir / "proxy.conf"
            conf.write_text(sluice_conf(self.dir, self.pp, ports, sluice_udp, workers))
            self.argv = [str(sluice_bin), "-p", str(self.dir), "-c", str(conf)]
            self.test = self.argv + ["-t"]
        elif name == "nginx":
            conf = self.dir / "nginx.conf"
            conf.write_text(nginx_conf(self.dir, self.pp, ports, workers))
            self.argv = ["nginx", "-p", str(self.dir), "-e", str(self.log), "-c", str(conf)]
            self.test = self.argv + ["-t"]
        else:
            self.udp = False
            conf = self.dir / "haproxy.cfg"
            conf.write_text(haproxy_conf(self.pp, ports, name == "haproxy-splice", workers))
            self.argv = ["haproxy", "-db", "-f", str(conf)]
            self.test = ["haproxy", "-c", "-q", "-f", str(conf)]
            self.log = self.out  # haproxy alerts go to stderr

    def check(self):
        rc, out, err = run(self.test, timeout=20, name=f"{self.name} -t")
        if rc != 0:
            raise SystemExit(f"{self.name}: configuration test failed:\n{out}{err}")

    def log_size(self):
        try:
            return self.log.stat().st_size
        except OSError:
            return 0

    def log_since(self, off):
        try:
            with open(self.log, "rb") as f:
                f.seek(off)
                return f.read().decode(errors="replace").splitlines()
        except OSError:
            return []

    def start(self):
        # unpinned = both cores (bench.py itself, whose affinity children inherit, is on CPU 1)
        cpus = CPU_PROXY if self.workers == 1 else f"{CPU_PROXY},{CPU_LOAD}"
        self.proc = PROCS.start(self.argv, cpus, self.name, out=self.out)
        if not wait_port(self.pp["http"], self.proc) or not wait_port(self.pp["idle"], self.proc):
            rc = self.stop()
            raise RuntimeError(f"{self.name} did not start (rc={rc}); see {self.out} and {self.log}")
        # let the workers come up (a master and its worker processes)
        procs = 1 + self.workers if self.name == "nginx" or (self.name == "sluice" and self.workers > 1) else 1
        deadline = time.time() + 5
        while len(tree(self.proc.pid)) < procs and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is None:
            return None
        rc = PROCS.stop(self.proc, signal.SIGTERM, 5.0)
        self.proc = None
        return rc


# --------------------------------------------------------------------------------------
# backends (CPU 1, started once)

HOLDER_MODE = "_holder"


async def holder_main(port):
    """Echo holder for the idle scenario: keeps every connection open until the client closes."""
    async def handle(r, w):
        try:
            while True:
                d = await r.read(4096)
                if not d:
                    break
                w.write(d)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096, limit=65536)
    async with srv:
        await srv.serve_forever()


class Backends:
    def __init__(self, work, ports, want_dns):
        self.work = work
        self.ports = ports
        self.dir = work / "backends"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.iperf = None
        self.start_iperf()
        hd = self.dir / "http"
        hd.mkdir(exist_ok=True)
        (hd / "nginx.conf").write_text(http_backend_conf(hd, ports.http))
        (hd / "www").mkdir(exist_ok=True)
        (hd / "www" / MEDIUM_PATH.lstrip("/")).write_bytes(bytes(range(256)) * (MEDIUM_BYTES // 256)
                                                          + bytes(MEDIUM_BYTES % 256))
        self.http = PROCS.start(["nginx", "-p", str(hd), "-e", str(hd / "error.log"), "-c", str(hd / "nginx.conf")],
                                CPU_LOAD, "http backend", out=hd / "stdout.log")
        self.holder = PROCS.start([sys.executable, str(Path(__file__).resolve()), HOLDER_MODE, str(ports.holder)],
                                  CPU_LOAD, "holder", out=self.dir / "holder.log")
        self.dns = None
        if want_dns:
            self.dns = PROCS.start(["dnsmasq", "-k", "--conf-file=/dev/null", f"--port={ports.dns}",
                                    "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv",
                                    "--no-hosts", "--address=/bench.test/127.0.0.2", "--user=root",
                                    f"--pid-file={self.dir / 'dnsmasq.pid'}", "--log-facility=-"],
                                   CPU_LOAD, "dnsmasq", out=self.dir / "dnsmasq.log")
        for port, p, what in [(ports.http, self.http, "http backend"), (ports.holder, self.holder, "holder")]:
            if not wait_port(port, p):
                raise SystemExit(f"{what} did not start; see {self.dir}")

    def start_iperf(self):
        if self.iperf is not None:
            PROCS.stop(self.iperf, signal.SIGKILL, 2.0)
        self.iperf = PROCS.start(["iperf3", "-s", "-p", str(self.ports.iperf)], CPU_LOAD, "iperf3 -s",
                                 out=self.dir / "iperf3.log")
        if not wait_port(self.ports.iperf, self.iperf):
            raise SystemExit("iperf3 -s did not start")


# --------------------------------------------------------------------------------------
# load tools

WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


def wrk(work, port, seconds, close, conns=WRK_CONNS, path="/"):
    lua = work / "report.lua"
    if not lua.exists():
        lua.write_text(WRK_LUA)
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s", "--latency", "-s", str(lua)]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://127.0.0.1:{port}{path}")
    rc, out, err = run(argv, CPU_LOAD, timeout=seconds + 30, name="wrk")
    m = re.search(r"WRKJSON (\{.*\})", out)
    if not m:
        return None, f"wrk rc={rc}: {err.strip()[-300:]} {out.strip()[-300:]}"
    return json.loads(m.group(1)), None


def iperf3(port, seconds, streams):
    argv = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-P", str(streams),
            "-Z", "-J", "-i", "0.5", "--connect-timeout", "3000"]
    rc, out, err = run(argv, CPU_LOAD, timeout=seconds + 30, name="iperf3")
    try:
        j = json.loads(out)
    except ValueError:
        return None, f"iperf3 rc={rc}: {err.strip()[-300:]}"
    if "error" in j:
        return None, f"iperf3: {j['error']}"
    r = j["end"]["sum_received"]
    ivals = [(i["sum"]["bytes"], i["sum"]["seconds"]) for i in j.get("intervals", [])]
    rates = [b * 8 / t / 1e9 if t else 0.0 for b, t in ivals]
    # a stall: half-second intervals in which (next to) nothing moved; the sender's
    # socket buffer can still take a few MB after the relay stopped reading
    # (loopback moves 15-70 Gbit/s here: below 1 Gbit/s is a stall for any proxy)
    stalled = sum(1 for x in rates if x < max(1.0, 0.02 * max(rates)))
    return {"bytes": r["bytes"], "bps": r["bits_per_second"], "seconds": r["seconds"],
            "zero_intervals": stalled, "intervals": len(ivals),
            "interval_gbps": [round(x, 1) for x in rates]}, None


def dnsperf(work, port, seconds, scen="dns"):
    q = work / "queries.txt"
    if not q.exists():
        q.write_text("bench.test A\n")
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(q), "-l", str(seconds),
            "-c", str(DNS_LOAD[scen][0]), "-q", str(DNS_LOAD[scen][1])]
    rc, out, err = run(argv, CPU_LOAD, timeout=seconds + 30, name="dnsperf")
    m = re.search(r"Queries completed:\s+(\d+)", out)
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    if not (m and qps):
        return None, f"dnsperf rc={rc}: {err.strip()[-300:]} {out.strip()[-300:]}"
    return {"completed": int(m.group(1)), "qps": float(qps.group(1)),
            "lost": int(lost.group(1)) if lost else 0}, None


async def idle_conns(port, n, settle, measure):
    """Open n connections through the proxy, send one byte on each and wait for the holder's
    echo (so every connection is relayed end to end), then call measure() while they idle."""
    conns = []
    sem = asyncio.Semaphore(64)

    async def one():
        async with sem:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            conns.append(w)
            w.write(b"x")
            await w.drain()
            await asyncio.wait_for(r.readexactly(1), 10)

    res = await asyncio.gather(*[one() for _ in range(n)], return_exceptions=True)
    errors = [r for r in res if isinstance(r, BaseException)]
    await asyncio.sleep(settle)
    value = measure()
    for w in conns:
        w.close()
    await asyncio.sleep(0.2)
    return value, len(res) - len(errors), errors[:3]


# --------------------------------------------------------------------------------------
# measurements

def kthread_pid(comm):
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/comm") as f:
                    if f.read().strip() == comm:
                        return int(d)
            except OSError:
                pass
    return None


KSOFTIRQD0 = None
KSOFTIRQD1 = None


def ticks(pid):
    st = read_stat(pid) if pid else None
    return st["utime"] + st["stime"] if st else 0


QUIET = {"waited": 0.0, "gave_up": 0}


def wait_quiet(limit=0.15, max_wait=30.0, sample=0.5):
    """Wait (up to max_wait s) until both cores are nearly idle between measurements, so
    a burst of someone else's work (a build, a test suite) does not land in a timed window."""
    t0 = time.monotonic()
    while True:
        a = core_busy()
        time.sleep(sample)
        b = core_busy()
        busy = [(b[c][0] - a[c][0]) / max(1, b[c][1] - a[c][1]) for c in (CPU_PROXY, CPU_LOAD) if c in a and c in b]
        if all(x <= limit for x in busy):
            break
        if time.monotonic() - t0 > max_wait:
            QUIET["gave_up"] += 1
            break
        time.sleep(0.5)
    QUIET["waited"] += time.monotonic() - t0 - sample


def ours_on_load_core(exclude):
    """CPU ticks of everything this bench runs on the load core: itself, its reaped
    children (wrk, iperf3 -c, dnsperf), and the live sessions it started (backends),
    except the proxy under test."""
    import resource
    t = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        t += (ru.ru_utime + ru.ru_stime) * CLK_TCK
    for pid, (p, _) in list(PROCS.live.items()):
        if pid == exclude or p.poll() is not None:
            continue
        for q in tree(pid):
            t += ticks(q)
    return t


def measure_cpu(proxy, fn):
    """Run fn() (which drives load) and return (fn result, user s, sys s, extra)."""
    pid = proxy.proc.pid
    c0, a, k0, l0 = core_busy(), cpu_snapshot(pid), ticks(KSOFTIRQD0), ticks(KSOFTIRQD1)
    o0 = ours_on_load_core(pid)
    t0 = time.monotonic()
    res = fn()
    t1 = time.monotonic()
    b, c1, k1, l1 = cpu_snapshot(pid), core_busy(), ticks(KSOFTIRQD0), ticks(KSOFTIRQD1)
    o1 = ours_on_load_core(pid)
    u, s = cpu_delta(a, b)
    wall = t1 - t0
    extra = {"wall": wall}
    for cpu in (CPU_PROXY, CPU_LOAD):
        if cpu in c0 and cpu in c1:
            extra[f"cpu{cpu}_busy"] = (c1[cpu][0] - c0[cpu][0]) / CLK_TCK / wall
    # network softirq work that the kernel deferred to ksoftirqd/0: caused by the proxy's
    # traffic but not charged to it (reported apart, not added)
    extra["ksoftirqd0"] = (k1 - k0) / CLK_TCK / wall
    # time on either core that was none of ours: other work (another engineer's builds
    # and tests). On the load core it also slows the proxy (shared caches, and the two
    # vCPUs may be SMT siblings), so too much of it on either core and the run is retried.
    ours1 = (o1 - o0 + l1 - l0) / CLK_TCK / wall
    if proxy.workers > 1:
        # unpinned: the proxy runs on both cores, so other work is only known for the two together
        extra["cpu_other"] = max(0.0, extra.get(f"cpu{CPU_PROXY}_busy", 0) + extra.get(f"cpu{CPU_LOAD}_busy", 0)
                                 - (u + s) / wall - extra["ksoftirqd0"] - ours1)
        return res, u, s, extra
    extra["cpu0_other"] = max(0.0, extra.get(f"cpu{CPU_PROXY}_busy", 0) - (u + s) / wall - extra["ksoftirqd0"])
    extra["cpu1_other"] = max(0.0, extra.get(f"cpu{CPU_LOAD}_busy", 0) - ours1)
    return res, u, s, extra


def m_bulk(ctx, proxy, streams):
    d = ctx.args.duration
    res, u, s, extra = measure_cpu(proxy, lambda: iperf3(proxy.pp["bulk"], d, streams))
    r, err = res
    if r is None:
        if "busy" in (err or ""):
            ctx.backends.start_iperf()
        return None, err
    gb = r["bytes"] / 1e9
    problem = None
    if r["zero_intervals"]:
        problem = (f"relay stalled: {r['zero_intervals']} of {r['intervals']} half-second iperf3 intervals "
                   f"moved (next to) nothing; Gbit/s per interval: {r['interval_gbps']}")
    return dict(extra, gbps=r["bps"] / 1e9, cpu_s_per_gb=(u + s) / gb if gb else None,
                user=u, sys=s, bytes=r["bytes"], stalled=bool(r["zero_intervals"])), problem


def m_wrk(ctx, proxy, close, seconds=None, warm=True, path="/"):
    d = seconds or ctx.args.duration
    if warm:
        wrk(ctx.work, proxy.pp["http"], 1, close, path=path)  # warm-up, not measured
    res, u, s, extra = measure_cpu(proxy, lambda: wrk(ctx.work, proxy.pp["http"], d, close, path=path))
    r, err = res
    if r is None:
        return None, err
    errs = r["connect"] + r["read"] + r["write"] + r["timeout"] + r["status"]
    rate = r["requests"] / (r["duration_us"] / 1e6)
    out = dict(extra, rate=rate, requests=r["requests"], errors=errs, user=u, sys=s,
               err_detail={k: r[k] for k in ("connect", "read", "write", "timeout", "status") if r[k]})
    if close:
        out["cpu_s_per_10k"] = (u + s) / (r["requests"] / 1e4) if r["requests"] else None
    else:
        out["cpu_us_per_req"] = (u + s) / r["requests"] * 1e6 if r["requests"] else None
        out["p50_ms"] = r["p50_us"] / 1000
        out["p99_ms"] = r["p99_us"] / 1000
    problem = None
    if errs:
        problem = f"wrk errors {out['err_detail']} in {r['requests']} requests"
    return out, problem


def merge_slices(vs, close):
    """One figure per proxy from its slices of a sliced scenario: CPU and rates from the
    sums (so every request weighs the same), latencies as the median of the slices'."""
    n = sum(v["requests"] for v in vs)
    secs = sum(v["requests"] / v["rate"] for v in vs if v["rate"])
    u, k = sum(v["user"] for v in vs), sum(v["sys"] for v in vs)
    out = {"slices": len(vs), "requests": n, "rate": n / secs if secs else None, "user": u, "sys": k,
           "wall": sum(v["wall"] for v in vs), "errors": sum(v["errors"] for v in vs),
           "ksoftirqd0": statistics.mean(v["ksoftirqd0"] for v in vs)}
    for key in ("cpu0_other", "cpu1_other", "cpu0_busy", "cpu1_busy"):
        xs = [v[key] for v in vs if key in v]
        if xs:
            out[key] = statistics.mean(xs)
    if close:
        out["cpu_s_per_10k"] = (u + k) / (n / 1e4) if n else None
    else:
        out["cpu_us_per_req"] = (u + k) / n * 1e6 if n else None
        out["p50_ms"] = statistics.median(v["p50_ms"] for v in vs)
        out["p99_ms"] = statistics.median(v["p99_ms"] for v in vs)
    # every slice's figures too, in the raw results, for pairing slice by slice later
    key = "cpu_s_per_10k" if close else "cpu_us_per_req"
    out["slices_" + key] = [v.get(key) for v in vs]
    if not close:
        out["slices_p99_ms"] = [v["p99_ms"] for v in vs]
    return out


def m_idle(ctx, proxy):
    n = ctx.args.idle_conns
    port = proxy.pp["idle"]
    pid = proxy.proc.pid
    # warm the proxy's lazily allocated state so the baseline is a running proxy's
    asyncio.run(idle_conns(port, 50, 0.1, lambda: None))
    time.sleep(0.3)
    before = rss_kib(pid)
    after, ok, errors = asyncio.run(idle_conns(port, n, 1.0, lambda: rss_kib(pid)))
    if ok < n:
        return None, f"only {ok}/{n} idle connections relayed: {errors!r}"
    return {"rss_before_kib": before, "rss_after_kib": after,
            "kib_per_conn": (after - before) / n, "conns": n}, None


def m_dns(ctx, proxy, scen):
    d = ctx.args.duration
    dnsperf(ctx.work, proxy.pp[scen], 1, scen)  # warm-up, not measured
    res, u, s, extra = measure_cpu(proxy, lambda: dnsperf(ctx.work, proxy.pp[scen], d, scen))
    r, err = res
    if r is None:
        return None, err
    out = dict(extra, qps=r["qps"], lost=r["lost"], user=u, sys=s,
               cpu_s_per_100k=(u + s) / (r["completed"] / 1e5) if r["completed"] else None)
    return out, (f"{r['lost']} queries lost" if r["lost"] else None)


def perf_counts_syscalls():
    """Whether `perf stat` can count the syscall tracepoints here (software events: they
    work where hardware counters do not)."""
    try:
        r = subprocess.run(["perf", "stat", "-x,", "-e", "syscalls:sys_enter_close", "--", "true"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and "syscalls:sys_enter_close" in r.stderr and "not supported" not in r.stderr


def strace_pass(ctx, proxy, kind, seconds):
    """Syscalls per short connection / keep-alive request / DNS query (dnslb), counted on
    every process of the proxy's tree while wrk or dnsperf runs (not timed). With `perf
    stat` on the syscall tracepoints where the kernel has them: they cost little, so the
    proxy keeps its real timing. strace -c -f is the fallback; it slows the proxy enough
    to change what it finds when it reads (a read that would find EAGAIN finds data), so
    its counts are not those of a proxy running free."""
    if kind == "dnslb":
        def load(t):
            r, err = dnsperf(ctx.work, proxy.pp["dnslb"], t, "dnslb")
            return (dict(r, requests=r["completed"]) if r else None), err
    else:
        def load(t):
            return wrk(ctx.work, proxy.pp["http"], t, kind == "short")
    load(1)
    pids = tree(proxy.proc.pid)
    use_perf = ctx.syscall_counter == "perf"
    out = ctx.work / f"{ctx.syscall_counter}-{proxy.name}-{kind}.txt"
    if use_perf:
        argv = ["perf", "stat", "-x,", "-o", str(out), "-e", "syscalls:sys_enter_*",
                "-p", ",".join(str(p) for p in pids)]
    else:
        argv = ["strace", "-c", "-f", "-o", str(out)]
        for p in pids:
            argv += ["-p", str(p)]
    st = PROCS.start(argv, CPU_LOAD, ctx.syscall_counter, out=ctx.work / "syscalls.stderr")
    time.sleep(1.0)  # attached
    r, err = load(seconds)
    time.sleep(0.2)
    os.kill(st.pid, signal.SIGINT)
    try:
        st.wait(10)
    except subprocess.TimeoutExpired:
        pass
    PROCS.stop(st, signal.SIGINT, 2.0)
    if r is None:
        return None, err
    calls = {}
    total = None
    for line in out.read_text().splitlines():
        if use_perf:
            t = line.split(",")
            if len(t) >= 3 and t[0].isdigit() and t[2].startswith("syscalls:sys_enter_") and int(t[0]):
                calls[t[2][len("syscalls:sys_enter_"):]] = int(t[0])
            continue
        t = line.split()
        if len(t) >= 5 and re.match(r"^[\d.]+$", t[0]) and t[3].isdigit():
            if t[-1] == "total":
                total = int(t[3])
            else:
                calls[t[-1]] = int(t[3])
    if total is None:
        total = sum(calls.values())
    n = r["requests"]
    if not n:
        return None, f"no requests completed under {ctx.syscall_counter}"
    per = {k: v / n for k, v in sorted(calls.items(), key=lambda kv: -kv[1])}
    return {"requests": n, "per": total / n, "by_call": per}, None


# --------------------------------------------------------------------------------------
# the run

SCENARIO_TITLES = {
    "bulk1": "bulk, 1 stream (iperf3)",
    "bulk4": "bulk, 4 streams (iperf3 -P 4)",
    "short": f"short connections (wrk -c{WRK_CONNS}, Connection: close)",
    "short2w": f"short connections, 2 workers (wrk -c{WRK_CONNS}, Connection: close, proxy unpinned)",
    "keepalive": f"keep-alive (wrk -c{WRK_CONNS})",
    "medium": f"keep-alive, {MEDIUM_BYTES:,}-byte answers (wrk -c{WRK_CONNS})",
    "short-sliced": f"short connections, in {SLICE_S} s slices alternating between the proxies",
    "keepalive-sliced": f"keep-alive, in {SLICE_S} s slices alternating between the proxies",
    "idle": "idle connections",
    "dns": "UDP DNS, 4 long sessions (dnsperf -c4 -q100, dnsmasq)",
    "dnslb": "UDP DNS, a session per query (proxy_responses 1, dnsperf -c64 -q64, dnsmasq)",
}

SYSCALL_UNIT = {"short": "connection", "keepalive": "request", "dnslb": "query"}

# (scenario, key, label, format, lower is better)
METRICS = [
    ("bulk1", "gbps", "Gbit/s", "{:.1f}", False),
    ("bulk1", "cpu_s_per_gb", "proxy CPU-s per GB", "{:.3f}", True),
    ("bulk4", "gbps", "Gbit/s", "{:.1f}", False),
    ("bulk4", "cpu_s_per_gb", "proxy CPU-s per GB", "{:.3f}", True),
    ("short", "rate", "conn/s", "{:,.0f}", False),
    ("short", "cpu_s_per_10k", "proxy CPU-s per 10k conn", "{:.3f}", True),
    ("short2w", "rate", "conn/s", "{:,.0f}", False),
    ("short2w", "cpu_s_per_10k", "proxy CPU-s per 10k conn", "{:.3f}", True),
    ("keepalive", "rate", "req/s", "{:,.0f}", False),
    ("keepalive", "cpu_us_per_req", "proxy CPU-µs per req", "{:.2f}", True),
    ("keepalive", "p50_ms", "p50 latency, ms", "{:.3f}", True),
    ("keepalive", "p99_ms", "p99 latency, ms", "{:.3f}", True),
    ("medium", "rate", "req/s", "{:,.0f}", False),
    ("medium", "cpu_us_per_req", "proxy CPU-µs per req", "{:.2f}", True),
    ("medium", "p99_ms", "p99 latency, ms", "{:.3f}", True),
    ("short-sliced", "rate", "conn/s", "{:,.0f}", False),
    ("short-sliced", "cpu_s_per_10k", "proxy CPU-s per 10k conn", "{:.3f}", True),
    ("keepalive-sliced", "rate", "req/s", "{:,.0f}", False),
    ("keepalive-sliced", "cpu_us_per_req", "proxy CPU-µs per req", "{:.2f}", True),
    ("keepalive-sliced", "p50_ms", "p50 latency, ms (median of slices)", "{:.3f}", True),
    ("keepalive-sliced", "p99_ms", "p99 latency, ms (median of slices)", "{:.3f}", True),
    ("idle", "kib_per_conn", "proxy RSS per idle conn, KiB", "{:.2f}", True),
    ("idle", "rss_before_kib", "proxy RSS before, KiB", "{:,.0f}", True),
    ("dns", "qps", "queries/s", "{:,.0f}", False),
    ("dns", "cpu_s_per_100k", "proxy CPU-s per 100k queries", "{:.3f}", True),
    ("dnslb", "qps", "queries/s", "{:,.0f}", False),
    ("dnslb", "cpu_s_per_100k", "proxy CPU-s per 100k queries", "{:.3f}", True),
]

# sluice's targets, as ratios to nginx
TARGETS = [
    ("bulk1", "cpu_s_per_gb", "bulk CPU-s/GB, 1 stream", "≤", 0.5),
    ("bulk4", "cpu_s_per_gb", "bulk CPU-s/GB, 4 streams", "≤", 0.5),
    ("bulk1", "gbps", "bulk Gbit/s, 1 stream", "≥", 1.2),
    ("short", "cpu_s_per_10k", "short-conn CPU-s per 10k", "≤", 0.9),
    ("keepalive", "cpu_us_per_req", "keep-alive CPU-µs per request", "≤", 1.0),
    ("keepalive", "p99_ms", "keep-alive p99", "≤", 1.0),
    ("short-sliced", "cpu_s_per_10k", "short-conn CPU-s per 10k, sliced", "≤", 0.9),
    ("keepalive-sliced", "cpu_us_per_req", "keep-alive CPU-µs per request, sliced", "≤", 1.0),
    ("keepalive-sliced", "p99_ms", "keep-alive p99, sliced", "≤", 1.0),
    ("idle", "kib_per_conn", "idle RSS per connection", "≤", 0.5),
    ("dnslb", "qps", "UDP DNS q/s, a session per query", "≥", 1.5),
    ("dnslb", "cpu_s_per_100k", "UDP DNS CPU per query, a session per query", "≤", 0.6),
    ("dns", "qps", "UDP DNS q/s, 4 long sessions", "≥", 1.5),
    ("dns", "cpu_s_per_100k", "UDP DNS CPU per query, 4 long sessions", "≤", 0.6),
]
# reported next to the targets, not one of them
INFO_TARGETS = [
    ("short2w", "rate", "short-conn conn/s, 2 workers (proxy unpinned; informational)", "≥", 1.0),
    ("medium", "cpu_us_per_req", "keep-alive CPU-µs per 20 KB answer (informational)", "≤", 1.0),
]


class Ctx:
    pass


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def usable(m):
    return bool(m) and not m.get("disturbed")


def other_work(m):
    """Share of a core that work not ours took during a measurement (the worse core; for an
    unpinned proxy, both cores together)."""
    return max(m.get("cpu0_other", 0), m.get("cpu1_other", 0), m.get("cpu_other", 0))


def paired_ratio(data, scen, key, p, base="nginx"):
    rs = []
    for a, b in zip(data[scen][p], data[scen][base]):
        if usable(a) and usable(b) and a.get(key) is not None and b.get(key):
            rs.append(a[key] / b[key])
    return med(rs), len(rs)


def fmt(f, v):
    return "—" if v is None else f.format(v)


def tool_versions(sluice_bin):
    def first(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except Exception as e:  # a missing tool is reported, not fatal here
            return f"? ({e})"
    return {
        "sluice": [l for l in subprocess.run([str(sluice_bin), "-V"], capture_output=True, text=True).stderr.splitlines()
                   + ["sluice version: ?"] if l.startswith("sluice version")][0].split(": ", 1)[-1],
        "nginx": first(["nginx", "-v"]).split(": ", 1)[-1],
        "haproxy": first(["haproxy", "-v"]),
        "iperf3": first(["iperf3", "--version"]),
        "wrk": first(["wrk", "-v"]),
        "dnsperf": first(["dpkg-query", "-W", "-f", "dnsperf ${Version}\n", "dnsperf"]),
        "dnsmasq": first(["dnsmasq", "-v"]),
        "strace": first(["strace", "-V"]),
        "perf": first(["perf", "--version"]),
    }


def git_desc():
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src", "Cargo.toml"],
                               capture_output=True, text=True).stdout.strip()
        return rev + (" + uncommitted changes in src/" if dirty else "")
    except OSError:
        return "?"


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def sluice_has_udp(sluice_bin, work):
    d = work / "udp-probe"
    d.mkdir(exist_ok=True)
    (d / "c.conf").write_text(
        "daemon off; master_process off; error_log stderr warn; events {} stream { server { "
        f"listen 127.0.0.1:{free_port(socket.SOCK_DGRAM)} udp; proxy_pass 127.0.0.1:53; }} }}\n")
    rc, out, err = run([str(sluice_bin), "-p", str(d), "-c", str(d / "c.conf"), "-t"], timeout=10)
    return rc == 0, (out + err).strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5, help="seconds per timed measurement")
    ap.add_argument("--only", default="", help="comma-separated: " + ",".join(ALL_SCENARIOS))
    ap.add_argument("--proxies", default=",".join(ALL_PROXIES))
    ap.add_argument("--idle-conns", type=int, default=5000)
    ap.add_argument("--strace-seconds", type=int, default=2)
    ap.add_argument("--max-other", type=float, default=0.15,
                    help="retry a measurement when other work used more than this share of CPU 0")
    ap.add_argument("--retries", type=int, default=2)
    ap.add_argument("--drop-other", type=float, default=0.30,
                    help="leave a measurement out of medians when, after the retries, other work "
                         "still took more than this share of either core")
    ap.add_argument("--max-wait", type=float, default=90.0,
                    help="seconds to wait for both cores to be quiet before a timed measurement")
    # (also from the environment, as bench/run --rev passes them: then no process of the
    # bench has "sluice" in its command line, so a `pkill -f sluice` run by someone
    # cleaning up after tests on the same machine leaves the bench alone)
    ap.add_argument("--sluice", default=os.environ.get("BENCH_SLUICE_BIN") or str(ROOT / "target" / "release" / "sluice"))
    ap.add_argument("--sluice-rev", default=os.environ.get("BENCH_SLUICE_REV", ""),
                    help="what --sluice was built from (for the report)")
    ap.add_argument("--write", dest="write", action="store_true", default=None,
                    help="write bench/RESULTS.md (default: only when no --only is given)")
    ap.add_argument("--no-write", dest="write", action="store_false")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    ap.add_argument("--render", metavar="JSON", help="only re-render the report of an earlier run's raw "
                    "results (/tmp/l4bench-last.json) into RESULTS.md")
    args = ap.parse_args()
    if args.render:
        md = report(json.loads(Path(args.render).read_text()))
        print(md)
        write_results(md)
        print(f"\nwrote {RESULTS_MD}")
        return

    scenarios = [s for s in args.only.split(",") if s] or list(ALL_SCENARIOS)
    bad = [s for s in scenarios if s not in ALL_SCENARIOS]
    if bad:
        ap.error(f"unknown scenario {bad}; choose from {ALL_SCENARIOS}")
    proxies = [p for p in args.proxies.split(",") if p]
    if "nginx" not in proxies or any(p not in ALL_PROXIES for p in proxies):
        ap.error(f"--proxies must include nginx (the baseline); choose from {ALL_PROXIES}")
    if not args.sluice_rev and Path(args.sluice).resolve() != (ROOT / "target" / "release" / "sluice").resolve():
        args.sluice_rev = args.sluice
    if args.write is None:
        args.write = not args.only
    if os.cpu_count() < 2:
        raise SystemExit("needs two CPUs (proxy on 0, load on 1)")
    command = os.environ.get("BENCH_CMD") or "python3 bench/bench.py " + " ".join(sys.argv[1:])
    command = command.strip()

    # this script is load: keep it off the proxy's core
    os.sched_setaffinity(0, {CPU_LOAD})
    global KSOFTIRQD0, KSOFTIRQD1
    KSOFTIRQD0 = kthread_pid(f"ksoftirqd/{CPU_PROXY}")
    KSOFTIRQD1 = kthread_pid(f"ksoftirqd/{CPU_LOAD}")

    work = Path(tempfile.mkdtemp(prefix="l4bench-"))
    # (mkdtemp makes it 0700: the http backend's workers, nobody when run as root, must
    # reach the medium scenario's file.)
    work.chmod(0o755)
    WORK[0] = None if args.keep else work
    # a private copy: a concurrent `cargo build` must not swap the binary mid-run
    (work / "bin").mkdir()
    sluice_bin = work / "bin" / "proxy-under-test"
    if not Path(args.sluice).exists():
        raise SystemExit(f"{args.sluice} not found: run `cargo build --release` (bench/run does)")
    shutil.copy2(args.sluice, sluice_bin)

    ctx = Ctx()
    ctx.args, ctx.work = args, work
    ctx.syscall_counter = "perf" if perf_counts_syscalls() else "strace"
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.monotonic()
    loadavg0 = open("/proc/loadavg").read().split()[:3]
    udp_ok, udp_msg = sluice_has_udp(sluice_bin, work)
    ports = Ports(proxies)
    contestants = {p: Proxy(p, work, ports, sluice_bin, udp_ok) for p in proxies}
    # short2w: the same proxies with 2 workers (HAProxy: 2 threads), unpinned
    contestants2 = {p: Proxy(p, work, ports, sluice_bin, udp_ok, 2) for p in proxies} if "short2w" in scenarios else {}
    for c in list(contestants.values()) + list(contestants2.values()):
        c.check()
    ctx.backends = Backends(work, ports, any(s in DNS_LOAD or s == "syscalls" for s in scenarios))  # syscalls also counts dnslb
    versions = tool_versions(sluice_bin)
    print(f"work dir {work}; sluice {args.sluice_rev or git_desc()}; UDP in sluice: {'yes' if udp_ok else 'no'}", flush=True)

    timed = [s for s in scenarios if s != "syscalls"]
    data = {s: {p: [None] * args.rounds for p in proxies} for s in timed}
    incidents = []
    expected_resets = {}
    dns_proxies = [p for p in proxies if contestants[p].udp]

    def one(r, scen, p):
        """One measurement, retried (up to --retries times) while other work shared the
        proxy's core by more than --max-other; the least disturbed attempt is kept."""
        best = None
        for attempt in range(args.retries + 1):
            v = one_attempt(r, scen, p)
            if v is None:
                return best
            other = other_work(v)
            if best is None or other < other_work(best):
                best = v
            if other <= args.max_other:
                break
            if attempt < args.retries:
                print(f"  (other work took {v['cpu_other']:.0%} of the two cores: again)" if "cpu_other" in v else
                      f"  (other work took {v.get('cpu0_other', 0):.0%} of CPU 0, "
                      f"{v.get('cpu1_other', 0):.0%} of CPU 1: again)", flush=True)
        if best is not None and other_work(best) > args.drop_other:
            best["disturbed"] = True
        return best

    def one_attempt(r, scen, p):
        c = contestants2[p] if scen == "short2w" else contestants[p]
        off = c.log_size()
        try:
            c.start()
        except RuntimeError as e:
            incidents.append({"round": r + 1, "scenario": scen, "proxy": p, "what": str(e),
                              "log": c.log_since(off)[-10:]})
            return None
        if scen != "idle":
            wait_quiet(max_wait=args.max_wait)
        try:
            if scen == "bulk1":
                v, problem = m_bulk(ctx, c, 1)
            elif scen == "bulk4":
                v, problem = m_bulk(ctx, c, 4)
            elif scen in ("short", "short2w"):
                v, problem = m_wrk(ctx, c, True)
            elif scen == "keepalive":
                v, problem = m_wrk(ctx, c, False)
            elif scen == "medium":
                v, problem = m_wrk(ctx, c, False, path=MEDIUM_PATH)
            elif scen == "idle":
                v, problem = m_idle(ctx, c)
            else:
                v, problem = m_dns(ctx, c, scen)
        except (OSError, ValueError, KeyError, asyncio.TimeoutError) as e:
            v, problem = None, f"measurement failed: {type(e).__name__}: {e}"
        try:
            died = not c.alive()
        finally:
            rc = c.stop()
        lines = [l for l in c.log_since(off)
                 if re.search(r"\[(error|crit|alert|emerg)\]|ALERT|WARNING|panick|abort", l, re.I)]
        if scen.startswith("bulk"):
            # iperf3 ends a test by resetting its data connections: expected, counted apart
            resets = [l for l in lines if re.search(r"\((104|32): (Connection reset by peer|Broken pipe)\)", l)]
            lines = [l for l in lines if l not in resets]
            expected_resets[p] = expected_resets.get(p, 0) + len(resets)
        if died:
            problem = f"{p} exited during the measurement (status {rc})" + (f"; {problem}" if problem else "")
        elif rc not in (0, None) and p == "sluice":
            problem = f"sluice exit status {rc} on SIGTERM" + (f"; {problem}" if problem else "")
        if problem or lines:
            incidents.append({"round": r + 1, "scenario": scen, "proxy": p, "what": problem or "log lines",
                              "log": lines[:10], "log_count": len(lines)})
        return v

    def sliced(r, scen, order):
        """All proxies run at once, each pinned to CPU 0 (the idle ones asleep in epoll_wait),
        and wrk switches between them every SLICE_S seconds, --duration slices each, the
        order rotating per slice. This machine has slow and fast phases lasting tens of
        seconds; with a fresh proxy per measurement a pair can straddle two of them, while
        slices a second apart share theirs. Returns {proxy: merged figures}."""
        close = SLICED[scen]
        cs = [contestants[p] for p in order]
        offs = {c.name: c.log_size() for c in cs}
        up = []
        try:
            for c in cs:
                c.start()
                up.append(c)
        except RuntimeError as e:
            incidents.append({"round": r + 1, "scenario": scen, "proxy": c.name, "what": str(e),
                              "log": c.log_since(offs[c.name])[-10:]})
            for c in up:
                c.stop()
            return {}
        slices = {c.name: [] for c in cs}
        problems = {}
        try:
            wait_quiet(max_wait=args.max_wait)
            for c in cs:
                wrk(ctx.work, c.pp["http"], 1, close)  # warm-up, not measured
            for i in range(args.duration):
                k = i % len(cs)
                for c in cs[k:] + cs[:k]:
                    try:
                        v, problem = m_wrk(ctx, c, close, SLICE_S, warm=False)
                    except (OSError, ValueError, KeyError) as e:
                        v, problem = None, f"measurement failed: {type(e).__name__}: {e}"
                    if v is not None:
                        slices[c.name].append(v)
                    if problem:
                        problems.setdefault(c.name, problem)
        finally:
            died = {c.name: not c.alive() for c in cs}
            rcs = {c.name: c.stop() for c in cs}
        out = {}
        for c in cs:
            problem = problems.get(c.name)
            if died[c.name]:
                problem = f"{c.name} exited during the measurement (status {rcs[c.name]})"
            lines = [l for l in c.log_since(offs[c.name])
                     if re.search(r"\[(error|crit|alert|emerg)\]|ALERT|WARNING|panick|abort", l, re.I)]
            if problem or lines:
                incidents.append({"round": r + 1, "scenario": scen, "proxy": c.name, "what": problem or "log lines",
                                  "log": lines[:10], "log_count": len(lines)})
            if len(slices[c.name]) == args.duration and not died[c.name]:
                m = merge_slices(slices[c.name], close)
                if other_work(m) > args.drop_other:
                    m["disturbed"] = True
                out[c.name] = m
        return out

    def show(r, scen, p, v):
        brief = ""
        if v:
            brief = ", ".join(f"{mk}={fmt(mf, v.get(mk))}" for s2, mk, _, mf, _ in METRICS
                              if s2 == scen and v.get(mk) is not None)
            if "cpu0_other" in v:
                brief += (f", other work: core0 {v['cpu0_other']:.0%} core1 {v.get('cpu1_other', 0):.0%}"
                          f", core1 busy {v.get('cpu1_busy', 0):.0%}")
            elif "cpu_other" in v:
                brief += (f", other work: both cores {v['cpu_other']:.0%}, core0 busy "
                          f"{v.get('cpu0_busy', 0):.0%}, core1 busy {v.get('cpu1_busy', 0):.0%}")
        print(f"[round {r + 1}/{args.rounds}] {scen:9s} {p:14s} {brief or 'FAILED'}", flush=True)

    try:
        for r in range(args.rounds):
            for si, scen in enumerate(timed):
                who = dns_proxies if scen in DNS_LOAD else proxies
                k = (r + si) % len(who)
                order = who[k:] + who[:k]
                if scen in SLICED:
                    vs = sliced(r, scen, order)
                    for p in order:
                        data[scen][p][r] = vs.get(p)
                        show(r, scen, p, vs.get(p))
                    continue
                for p in order:
                    v = one(r, scen, p)
                    data[scen][p][r] = v
                    show(r, scen, p, v)
        sysc = {}
        if "syscalls" in scenarios:
            for p in proxies:
                c = contestants[p]
                sysc[p] = {}
                for kind in ("short", "keepalive", "dnslb"):
                    if kind == "dnslb" and not c.udp:
                        continue
                    off = c.log_size()
                    try:
                        c.start()
                        try:
                            v, err = strace_pass(ctx, c, kind, args.strace_seconds)
                        finally:
                            c.stop()
                    except (RuntimeError, OSError) as e:
                        v, err = None, str(e)
                    sysc[p][kind] = v
                    if err:
                        incidents.append({"round": ctx.syscall_counter, "scenario": kind, "proxy": p, "what": err,
                                          "log": c.log_since(off)[-10:]})
                    print(f"[syscalls] {kind:9s} {p:14s} "
                          + (f"{v['per']:.1f} per {SYSCALL_UNIT[kind]}" if v else f"FAILED {err}"),
                          flush=True)
    finally:
        PROCS.stop_all()

    elapsed = time.monotonic() - t_start
    loadavg1 = open("/proc/loadavg").read().split()[:3]
    meta = {
        "command": command, "date": started.strftime("%Y-%m-%d %H:%M UTC"), "kernel": platform.release(),
        "cpu": cpu_model(), "versions": versions, "syscall_counter": ctx.syscall_counter,
        "sluice_rev": args.sluice_rev or git_desc(), "elapsed_s": elapsed,
        "loadavg": (loadavg0, loadavg1), "udp_ok": udp_ok, "udp_msg": udp_msg, "rounds": args.rounds,
        "duration": args.duration, "idle_conns": args.idle_conns, "proxies": proxies, "scenarios": scenarios,
        "retries": args.retries, "max_other": args.max_other, "quiet": dict(QUIET),
        "drop_other": args.drop_other, "max_wait": args.max_wait,
    }
    raw = {"meta": meta, "data": data, "syscalls": sysc, "incidents": incidents,
           "expected_resets": expected_resets}
    (work / "results.json").write_text(json.dumps(raw, indent=1, default=str))
    md = report(raw)
    print()
    print(md)
    if args.write:
        write_results(md)
        print(f"\nwrote {RESULTS_MD}")
    if args.keep:
        print(f"work dir kept: {work}")
    else:
        last = Path(tempfile.gettempdir()) / "l4bench-last.json"
        shutil.copy2(work / "results.json", last)
        shutil.rmtree(work, ignore_errors=True)
        print(f"raw results: {last}")


def report(raw):
    meta, data, sysc, incidents = raw["meta"], raw["data"], raw["syscalls"], raw["incidents"]
    proxies = meta["proxies"]
    L = [SECTION, ""]
    L.append(f"Command: `{meta['command']}` (from the repository root; bench/run installs the Debian "
             "packages if missing, builds sluice with `cargo build --release`, then runs bench/bench.py).")
    L.append("")
    L.append(f"Run {meta['date']}, {meta['elapsed_s'] / 60:.1f} min: {meta['rounds']} interleaved rounds, "
             f"{meta['duration']} s per timed measurement, {meta['idle_conns']:,} idle connections. "
             f"Kernel {meta['kernel']}, CPU {meta['cpu']} (2 cores), "
             f"load average {' '.join(meta['loadavg'][0])} before, {' '.join(meta['loadavg'][1])} after.")
    L.append("")
    v = meta["versions"]
    L.append(f"Versions: {v['sluice']} ({meta['sluice_rev']}), {v['nginx']}, "
             f"{v['haproxy']}, {v['iperf3']}, {v['wrk']}, {v['dnsperf']}, "
             f"{v['dnsmasq']}, {v['strace']}, perf {v.get('perf', '?')}.")
    L.append("")
    L.append("Setup: the proxy under test runs alone on CPU 0 (`taskset -c 0`); load generators and "
             "backends share CPU 1 (iperf3 -s; an nginx http instance answering `return 200 \"ok\"`; "
             "an asyncio echo holder; dnsmasq). Each measurement starts a fresh proxy; every round "
             "runs each proxy once per scenario, the order rotating between rounds. "
             "sluice and nginx run the same `stream {}` config (nginx: 1 worker, master on; sluice: "
             "`master_process off`); HAProxy runs `nbthread 1`, `mode tcp`, timeouts as nginx's "
             "defaults, `maxconn 7990` (20000 needs 40,014 descriptors, the hard limit here is 20,000, "
             "and splice-auto reserves maxconn/4 pipes more), "
             "no splice by default; haproxy-splice adds `option splice-auto`. nginx copies through "
             "user space (16k buffers); sluice copies small reads and splices bulk. "
             "Proxy CPU = utime+stime from /proc/PID/stat over the proxy's whole process tree "
             "during the timed window.")
    L.append("")
    if "short2w" in data:
        L.append("short2w: the short-connection test against a second config of each proxy with 2 "
                 "workers (sluice `master_process on; worker_processes 2;`, nginx `worker_processes 2;`, "
                 "HAProxy `nbthread 2`). Here the proxy is not pinned: its workers share both cores with "
                 "wrk and the http backend (both still on CPU 1), so conn/s also depends on how the "
                 "scheduler places them; CPU is still summed over the proxy's whole process tree.")
        L.append("")
    if "medium" in data:
        L.append(f"medium: the keep-alive test with answers of {MEDIUM_BYTES:,} bytes (a static file of the "
                 f"http backend): a read can fill the 16k buffer, so sluice's splice path runs, but no flow "
                 f"is bulk. It keeps what that path costs small flows measured; it has no target.")
        L.append("")
    if any(sc in data for sc in SLICED):
        L.append(f"short-sliced, keepalive-sliced: the same two loads, but every proxy of the run is started "
                 f"at once (each pinned to CPU 0; the ones not under load sleep in epoll_wait) and wrk "
                 f"switches between them every {SLICE_S} s, --duration slices per proxy per round, the order "
                 f"rotating per slice. The machine has slow and fast phases lasting tens of seconds; a pair "
                 f"of fresh-proxy measurements can straddle two of them, slices a second apart rarely do. "
                 f"A proxy's figure for a round is merged from its slices: CPU and rates from the sums, "
                 f"p50/p99 the median of its slices'.")
        L.append("")
    L.append("Cells: median over rounds; in brackets the median of the per-round paired ratios "
             "to nginx. Lower is better for CPU, latency and memory.")
    L.append("")
    head = "| scenario | metric | " + " | ".join(proxies) + " |"
    L.append(head)
    L.append("|" + "---|" * (2 + len(proxies)))
    for scen, key, label, f, _ in METRICS:
        if scen not in data:
            continue
        cells = []
        any_val = False
        for p in proxies:
            vals = [m.get(key) if usable(m) else None for m in data[scen][p]]
            mv = med(vals)
            if mv is None:
                cells.append("n/a" if scen in DNS_LOAD and not any(vals) else "—")
                continue
            any_val = True
            cell = fmt(f, mv)
            if p != "nginx":
                r, n = paired_ratio(data, scen, key, p)
                if r is not None:
                    cell += f" ({r:.2f}×)"
            cells.append(cell)
        if any_val:
            L.append(f"| {SCENARIO_TITLES[scen]} | {label} | " + " | ".join(cells) + " |")
    L.append("")
    # every round's figure, for judging the spread behind each median
    L.append("<details><summary>Per-round figures (round 1 / round 2 / …)</summary>")
    L.append("")
    L.append("| scenario | metric | " + " | ".join(proxies) + " |")
    L.append("|" + "---|" * (2 + len(proxies)))
    for scen, key, label, f, _ in METRICS:
        if scen not in data or key == "rss_before_kib":
            continue
        cells = []
        for p in proxies:
            ms = data[scen][p]
            vals = [m.get(key) if m else None for m in ms]
            cells.append(" / ".join(fmt(f, x) + ("\\*" if m and m.get("disturbed") else "") for x, m in zip(vals, ms))
                         if any(x is not None for x in vals) else "n/a")
        if any(c != "n/a" for c in cells):
            L.append(f"| {scen} | {label} | " + " | ".join(cells) + " |")
    if any(m and m.get("disturbed") for sc in data for p in proxies for m in data[sc][p]):
        L.append("")
        L.append("\\* disturbed: other work still took more than "
                 f"{meta.get('drop_other', 0.3):.0%} of a core after the retries; left out of medians and ratios.")
    L.append("")
    L.append("</details>")
    L.append("")
    # noise: the other engineer's builds can share the cores
    others0 = [m["cpu0_other"] for s in data for p in proxies for m in data[s][p] if m and "cpu0_other" in m]
    others1 = [m["cpu1_other"] for s in data for p in proxies for m in data[s][p] if m and "cpu1_other" in m]
    if others0:
        L.append("Other work (another engineer's builds and tests ran on this machine during the run) "
                 "in the kept timed windows: on the proxy's core (CPU 0 busy minus the proxy and "
                 f"ksoftirqd/0) median {statistics.median(others0):.0%}, max {max(others0):.0%}"
                 + (f"; on the load core (CPU 1 busy minus the bench's own processes) median "
                    f"{statistics.median(others1):.0%}, max {max(others1):.0%}" if others1 else "")
                 + f". A measurement is repeated (up to {meta.get('retries', 2)} times, the least disturbed "
                 f"attempt kept) when either exceeds {meta.get('max_other', 0.15):.0%}.")
    others2 = [m["cpu_other"] for s in data for p in proxies for m in data[s][p] if m and "cpu_other" in m]
    if others2:
        L.append(f"Other work in the unpinned short2w runs (both cores busy minus the proxy, the bench's own "
                 f"processes and ksoftirqd, as a share of one core): median {statistics.median(others2):.0%}, "
                 f"max {max(others2):.0%}; retried above {meta.get('max_other', 0.15):.0%} as well.")
    if others0 or others2:
        nd = sum(1 for s in data for p in proxies for m in data[s][p] if m and m.get("disturbed"))
        if nd:
            L.append(f"{nd} measurement(s) stayed above {meta.get('drop_other', 0.3):.0%} after the retries: "
                     "marked \\* in the per-round figures and left out of medians and ratios.")
    q = meta.get("quiet") or {}
    if q:
        L.append(f"Before each timed measurement the bench waits (up to {meta.get('max_wait', 30):.0f} s) for both cores to be "
                 f"under 15 % busy: it waited {q.get('waited', 0):.0f} s in all"
                 + (f", and went ahead busy {q['gave_up']} times" if q.get("gave_up") else "") + ".")
    ks = {}
    for p in proxies:
        xs = [m["ksoftirqd0"] for s in data if s.startswith("bulk") for m in data[s][p] if m and "ksoftirqd0" in m]
        if xs:
            ks[p] = statistics.median(xs)
    if ks:
        L.append("Softirq work deferred to ksoftirqd/0 (not charged to the proxy), bulk runs, median share "
                 "of the core: " + ", ".join(f"{p} {v:.0%}" for p, v in ks.items()) + ".")
    load1 = {}
    for s in data:
        xs = [m["cpu1_busy"] for p in proxies for m in data[s][p] if m and "cpu1_busy" in m]
        if xs:
            load1[s] = statistics.median(xs)
    util = {}
    for s in data:
        for p in proxies:
            xs = [(m["user"] + m["sys"]) / m["wall"] for m in data[s][p] if m and "wall" in m and "user" in m]
            if xs:
                util.setdefault(s, {})[p] = statistics.median(xs)
    if load1:
        L.append("Load core (CPU 1) busy, median: " + ", ".join(f"{s} {v:.0%}" for s, v in load1.items())
                 + ". Proxy core use by the proxy, median: "
                 + "; ".join(s + " " + ", ".join(f"{p} {v:.0%}" for p, v in d.items()) for s, d in util.items())
                 + ".")
        sysshare = {}
        for p in proxies:
            u = sum(m["user"] for s in data for m in data[s][p] if m and "user" in m)
            k = sum(m["sys"] for s in data for m in data[s][p] if m and "sys" in m)
            if u + k:
                sysshare[p] = k / (u + k)
        L.append("Kernel share of proxy CPU over all timed runs: "
                 + ", ".join(f"{p} {v:.0%}" for p, v in sysshare.items()) + ".")
    L.append("")
    if any(s in DNS_LOAD for s in meta["scenarios"]):
        if meta["udp_ok"]:
            L.append("UDP DNS: HAProxy has no UDP proxying, so these scenarios run sluice and nginx "
                     "(`listen ... udp; proxy_pass` to dnsmasq, nginx's defaults otherwise). `dns`: "
                     "dnsperf's 4 client sockets keep 100 queries in flight, so each is one long "
                     "session. `dnslb`: DNS load balancing as deployed, `proxy_responses 1`, 64 client "
                     "sockets with one query in flight each, so every query is a session of its own "
                     "(both open, connect and close an upstream socket for each).")
        else:
            L.append("UDP DNS: sluice has no UDP yet (issue 6); `sluice -t` on `listen ... udp` says: "
                     f"`{meta['udp_msg'].splitlines()[0] if meta['udp_msg'] else '?'}`. HAProxy has no UDP "
                     "proxying. The scenario runs nginx alone, as the baseline for later; it includes "
                     "sluice by itself once `sluice -t` accepts `listen ... udp`.")
        L.append("")
    if any(s in data for s, *_ in TARGETS + INFO_TARGETS) and "sluice" in proxies:
        L.append("sluice against its targets (ratios to nginx, median of paired rounds):")
        L.append("")
        L.append("| target | wanted | measured | met |")
        L.append("|---|---|---|---|")
        for scen, key, label, op, want in TARGETS + INFO_TARGETS:
            if scen not in data:
                continue
            r, n = paired_ratio(data, scen, key, "sluice")
            if r is None:
                L.append(f"| {label} | {op} {want}× | — | no data |")
                continue
            ok = "yes" if (r <= want if op == "≤" else r >= want) else "no"
            if (scen, key, label, op, want) in INFO_TARGETS:
                ok = f"({ok}; not a target)"
            L.append(f"| {label} | {op} {want}× | {r:.2f}× | {ok} |")
        L.append("")
    if sysc:
        how = ("`perf stat -e 'syscalls:sys_enter_*'` on the proxy's processes"
               if meta.get("syscall_counter") == "perf" else
               "`strace -c -f` attached to the proxy's processes (it slows the proxy: reads that "
               "would find EAGAIN find data, so the counts are not a free-running proxy's)")
        L.append(f"Syscalls (a separate, untimed pass: {how} "
                 f"while wrk runs {WRK_CONNS} connections, or dnsperf the dnslb load; counts divided by "
                 "completed requests or queries):")
        L.append("")
        L.append("| proxy | per short connection | top calls | per keep-alive request | top calls "
                 "| per DNS query (dnslb) | top calls |")
        L.append("|---|---|---|---|---|---|---|")
        for p in proxies:
            row = [p]
            for kind in ("short", "keepalive", "dnslb"):
                v = sysc.get(p, {}).get(kind)
                if not v:
                    row += ["—", ""]
                    continue
                row.append(f"{v['per']:.1f}")
                top = [f"{k} {c:.2f}" for k, c in list(v["by_call"].items())[:6] if c >= 0.01]
                row.append(", ".join(top))
            L.append("| " + " | ".join(row) + " |")
        L.append("")
    er = raw.get("expected_resets") or {}
    if any(er.values()):
        L.append("Expected, not incidents: iperf3 ends each test by resetting its data connections, "
                 "so the proxies log `recv()/writev() failed (104: Connection reset by peer / 32: Broken "
                 "pipe)` at [error] in the bulk runs (" + ", ".join(f"{p} {n}" for p, n in er.items() if n)
                 + " lines).")
        L.append("")
    if incidents:
        L.append("Incidents (failed or suspicious measurements, with the proxy's error-log lines):")
        L.append("")
        for i in incidents:
            L.append(f"- round {i['round']}, {i['scenario']}, {i['proxy']}: {i['what']}")
            for line in i.get("log", [])[:5]:
                L.append(f"  - `{line.strip()[:300]}`")
            if i.get("log_count", 0) > 5:
                L.append(f"  - ({i['log_count']} such lines)")
        L.append("")
    else:
        L.append("No incidents: every measurement completed without load-tool errors, proxy exits "
                 "or error-log lines at warn level or above.")
        L.append("")
    return "\n".join(L)


NOTES = "### Notes"


def write_results(md):
    """Replace this section of RESULTS.md (everything else stays). A "### Notes"
    subsection written by hand at the end of the section is kept across re-runs."""
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Benchmark results\n"
    start = text.find(SECTION)
    if start >= 0:
        nxt = text.find("\n## ", start + len(SECTION))
        old = text[start:nxt + 1] if nxt >= 0 else text[start:]
        rest = text[nxt + 1:] if nxt >= 0 else ""
        k = old.find("\n" + NOTES)
        if k >= 0:
            md = md.rstrip() + "\n\n" + old[k + 1:].rstrip()
        text = text[:start] + md.rstrip() + "\n" + ("\n" + rest if rest else "")
    else:
        text = text.rstrip() + "\n\n" + md.rstrip() + "\n"
    RESULTS_MD.write_text(text)


WORK = [None]  # the work directory, removed when the run is interrupted (unless --keep)


def _on_signal(sig, frame):
    raise KeyboardInterrupt(f"signal {sig}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == HOLDER_MODE:
        asyncio.run(holder_main(int(sys.argv[2])))
        sys.exit(0)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) != signal.SIG_IGN:  # leave nohup's SIGHUP ignored
            signal.signal(sig, _on_signal)
    try:
        main()
    except KeyboardInterrupt:
        PROCS.stop_all()
        if WORK[0] is not None:
            shutil.rmtree(WORK[0], ignore_errors=True)
        print("\ninterrupted; every started process stopped", file=sys.stderr)
        sys.exit(130)
    finally:
        PROCS.stop_all()
