#!/usr/bin/env python3
"""Independent model of nginx 1.22.1's stream upstream balancers, checked
against the recorded t/data/balancing/*.json files.

    python3 t/data/balancing/verify.py [DIR]

Exit status 0 when every recorded pick is reproduced.  Also prints some
facts about the data (how often the chash lookup wrapped around, how many
picks needed a rehash) so one can see which code paths the data covers.

Source: src/stream/ngx_stream_upstream_round_robin.c and
src/stream/ngx_stream_upstream_hash_module.c of release-1.22.1.
No failures happen during recording, so fails/max_fails/max_conns never
exclude a peer here; `down` does.
"""
import glob
import json
import os
import struct
import sys
import zlib


def crc32(b):
    # ngx_crc32_long / ngx_crc32_init+update+final: standard CRC-32 (IEEE,
    # reflected, init 0xffffffff, final xor 0xffffffff) == zlib.crc32
    return zlib.crc32(b) & 0xffffffff


# ------------------------------------------------------------ round robin --
def smooth_wrr(peers, state, tried=()):
    """ngx_stream_upstream_get_peer: peers = list of dicts (weight, down);
    state = list of [current_weight, effective_weight]. Returns index."""
    best, total = None, 0
    for i, p in enumerate(peers):
        if i in tried or p["down"]:
            continue
        st = state[i]
        st[0] += st[1]
        total += st[1]
        if st[1] < p["weight"]:
            st[1] += 1
        if best is None or st[0] > state[best][0]:
            best = i
    if best is None:
        return None
    state[best][0] -= total
    return best


class RoundRobin:
    def __init__(self, servers):
        idx = list(range(len(servers)))
        self.primary = [i for i in idx if not servers[i]["backup"]]
        self.backup = [i for i in idx if servers[i]["backup"]]
        self.servers = servers
        self.pstate = [[0, servers[i]["weight"]] for i in self.primary]
        self.bstate = [[0, servers[i]["weight"]] for i in self.backup]
        # peers->single: exactly one primary and no backup servers
        self.single = len(self.primary) == 1 and not self.backup

    def pick(self):
        ps = [self.servers[i] for i in self.primary]
        if self.single:
            if not ps[0]["down"]:
                return self.primary[0]
            k = None
        else:
            k = smooth_wrr(ps, self.pstate)
            if k is not None:
                return self.primary[k]
        if self.backup:
            bs = [self.servers[i] for i in self.backup]
            k = smooth_wrr(bs, self.bstate)
            if k is not None:
                return self.backup[k]
        return None


# ------------------------------------------------------------- plain hash --
def hash_pick(servers, key, rr=None, stats=None):
    """ngx_stream_upstream_get_hash_peer (first try of a connection)."""
    peers = [s for s in servers if not s["backup"]]  # hash allows no backup
    total_weight = sum(p["weight"] for p in peers)   # includes down peers!
    if len(peers) == 1 or not key:
        return rr.pick()
    acc = 0        # hp->hash (uint32_t; never overflows in <= 21 steps)
    rehash = 0
    tries = 0
    kb = key.encode()
    while True:
        prefix = str(rehash).encode() if rehash > 0 else b""
        h = (crc32(prefix + kb) >> 16) & 0x7fff
        acc += h
        rehash += 1
        w = acc % total_weight
        p = 0
        while w >= peers[p]["weight"]:
            w -= peers[p]["weight"]
            p += 1
        if not peers[p]["down"]:
            if stats is not None:
                stats["rehash"] = stats.get("rehash", 0) + (rehash > 1)
            return p
        tries += 1
        if tries > 20:
            if stats is not None:
                stats["rr_fallback"] = stats.get("rr_fallback", 0) + 1
            return rr.pick()


# -------------------------------------------------------- consistent hash --
def server_host_port(name):
    """Split a server name as ngx_stream_upstream_init_chash does: 'unix:'
    prefix -> host = rest, no port; else if the name ends in ':' + digits
    (possibly zero digits) host = text before that last ':', port = digits;
    otherwise host = whole name, port = empty."""
    b = name.encode()
    if b[:5].lower() == b"unix:":
        return b[5:], b""
    j = 0
    while j < len(b):
        c = b[len(b) - j - 1:len(b) - j]
        if c == b":":
            return b[:len(b) - j - 1], b[len(b) - j:]
        if not (b"0" <= c <= b"9"):
            break
        j += 1
    return b, b""


def chash_points(servers):
    pts = []
    for s in servers:
        if s["backup"]:
            continue
        host, port = server_host_port(s["name"])
        base = host + b"\x00" + port
        prev = 0
        for _ in range(s["weight"] * 160):
            h = crc32(base + struct.pack("<I", prev))  # prev hash, LE bytes
            pts.append((h, s["name"]))
            prev = h
    pts.sort(key=lambda t: t[0])  # nginx: qsort by hash only
    out = []
    for h, n in pts:              # drop later points with an equal hash
        if not out or out[-1][0] != h:
            out.append((h, n))
    return out


def find_point(points, h):
    """first index with point.hash >= h; may be len(points)"""
    lo, hi = 0, len(points)
    while lo < hi:
        k = (lo + hi) // 2
        if h > points[k][0]:
            lo = k + 1
        elif h < points[k][0]:
            hi = k
        else:
            return k
    return lo


def chash_pick(servers, points, key, state, rr=None, stats=None):
    peers = [s for s in servers if not s["backup"]]
    if len(peers) == 1 or not key:
        return rr.pick()
    h = crc32(key.encode())
    idx = find_point(points, h)
    if stats is not None and idx == len(points):
        stats["wrap"] = stats.get("wrap", 0) + 1
    tries = 0
    while True:
        name = points[idx % len(points)][1]
        # smooth wrr among usable peers whose server name text equals name
        cand = [i for i, p in enumerate(peers)
                if p["name"] == name and not p["down"]]
        if cand:
            best, total = None, 0
            for i in cand:
                st = state[i]
                st[0] += st[1]
                total += st[1]
                if st[1] < peers[i]["weight"]:
                    st[1] += 1
                if best is None or st[0] > state[best][0]:
                    best = i
            state[best][0] -= total
            if stats is not None and tries:
                stats["next_point"] = stats.get("next_point", 0) + 1
            return best
        idx += 1
        tries += 1
        if tries > 20:
            if stats is not None:
                stats["rr_fallback"] = stats.get("rr_fallback", 0) + 1
            return rr.pick()


# ------------------------------------------------------------------ main --
def main():
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(
        os.path.abspath(__file__))
    files = sorted(glob.glob(os.path.join(d, "*.json")))
    if not files:
        sys.exit("verify: no json files in " + d)
    bad = 0
    for f in files:
        data = json.load(open(f))
        servers = data["servers"]
        rr = RoundRobin(servers)
        stats = {}
        if data["method"] == "round_robin":
            got = [rr.pick() for _ in range(data["connections"])]
        elif data["method"] == "hash":
            got = [hash_pick(servers, k, rr, stats) for k in data["keys"]]
        elif data["method"] == "hash_consistent":
            pts = chash_points(servers)
            stats["points"] = len(pts)
            state = [[0, s["weight"]] for s in servers]
            got = [chash_pick(servers, pts, k, state, rr, stats)
                   for k in data["keys"]]
        else:
            sys.exit("verify: unknown method in " + f)
        want = data["picks"]
        diff = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
        if len(got) != len(want) or diff:
            bad += 1
            print("MISMATCH %s: %d differences, first at %s (model %s, "
                  "nginx %s)" % (os.path.basename(f), len(diff),
                                 diff[:5], [got[i] for i in diff[:5]],
                                 [want[i] for i in diff[:5]]))
        else:
            counts = [want.count(i) for i in range(len(servers))]
            print("ok %-26s %4d picks, per server %s %s" % (
                os.path.basename(f), len(want), counts,
                " ".join("%s=%s" % kv for kv in sorted(stats.items()))))
    if bad:
        sys.exit("verify: %d file(s) do not match the model" % bad)


if __name__ == "__main__":
    main()
