#!/usr/bin/env python3
"""Record what real nginx 1.22.1 does with PROXY protocol headers and TLS
ClientHellos, into t/data/proxy_protocol/recorded.json (read by
t/proxy_protocol.rs and t/ssl_preread.rs).

Usage:  t/data/proxy_protocol/record.py
Env:    NGINX=/usr/sbin/nginx
        NGINX_STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
Needs:  python3 (3.8+, standard library only), timeout(1).

nginx runs stream.conf (beside this script; the same file the tests run in
sluice) on 127.0.0.1 and [::1] only, on ephemeral ports picked at run time,
in the foreground (daemon off; master_process off;) under timeout(1), and is
stopped with SIGTERM sent to its own pid. The backend ("mirror": reads until
the bytes end with "hello\\n" or 3 s pass, sends back everything it read,
closes) and the clients run in this process. Sessions run one at a time; the
error_log and access_log bytes written during a session are its lines.

ClientHellos come from a real TLS client: tls_client.py (python's ssl module,
OpenSSL) connecting to a plain TCP listener here; the captured bytes are
stored in the JSON, so the tests replay exactly what nginx saw. Some are
then reshaped the way other clients send them: a post-quantum sized
key_share (an X25519MLKEM768 share, 1216 bytes, as browsers send since 2024),
and the handshake message fragmented over two or three TLS records.

Output, recorded.json:
  nginx     nginx -v
  ports     the port names used (values differ on every run)
  cases     one entry per session:
    name, group      what it is, and which test checks it
    server           the PORT_<NAME> the client connects to
    family           4 (from 127.0.0.1) or 6 (from ::1)
    send             the bytes, hex, one string per write(); writes after the
                     first follow a pause of pause_ms
    half_close       shutdown(SHUT_WR) after the last write
    reply            what the client read until EOF (or an error), escaped
    end              "eof", or the error that ended reading ("reset", ...)
    seconds          how long the session took (for timeouts)
    access           the access_log line ("pp" format), masked
    error            the error_log entries, masked and escaped
    note             why the case is there
Escaping (reply, error): printable ASCII but '%' stays, '\\' is written '\\\\',
every other byte \\xHH (so an entry that contains CR/LF stays one string).
Masking: %%TIME%%, %%PID%%, %%CONN%%, %%CLIENT_PORT%%, %%PORT_<NAME>%%,
%%UPSTREAM_LOCAL_PORT%%, %%PREFIX%% (as in t/data/logs/README.md). Every
masked field is matched against its pattern first; a mismatch fails the run.

nginx 1.22.1 has no $proxy_protocol_tlv_* variables (they came in 1.23.2):
for TLV headers this records the address variables and the status; the
tests check the TLV variables against nginx's source instead.
"""
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")
MODULE = os.environ.get("NGINX_STREAM_MODULE", "/usr/lib/nginx/modules/ngx_stream_module.so")

PORT_NAMES4 = ["PP", "PP_PROXY", "SEND4", "SEND_PP", "SEND_REALIP", "SP", "SP_SMALL", "SP_PP",
               "SP_PROXY", "BACKEND_MIRROR"]
PORT_NAMES6 = ["SEND6"]


def fail(msg):
    sys.exit("record.py: " + msg)


def pick_ports():
    socks, ports = [], {}
    for n in PORT_NAMES4:
        s = socket.socket(socket.AF_INET)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports[n] = s.getsockname()[1]
    for n in PORT_NAMES6:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
        socks.append(s)
        ports[n] = s.getsockname()[1]
    for s in socks:
        s.close()
    return ports


# ------------------------------------------------------------------ bytes --

def u16(n):
    return n.to_bytes(2, "big")


def u24(n):
    return n.to_bytes(3, "big")


def escape(b):
    out = []
    for c in b:
        if c == 0x5C:
            out.append("\\\\")
        elif 0x20 <= c < 0x7F and c != 0x25:
            out.append(chr(c))
        else:
            out.append("\\x%02x" % c)
    return "".join(out)


SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(ver_cmd, fam_tr, body):
    return SIG + bytes([ver_cmd, fam_tr]) + u16(len(body)) + body


def tlv(t, value):
    return bytes([t]) + u16(len(value)) + value


def inet4(src, dst, sport, dport):
    return socket.inet_pton(socket.AF_INET, src) + socket.inet_pton(socket.AF_INET, dst) + u16(sport) + u16(dport)


def inet6(src, dst, sport, dport):
    return socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + u16(sport) + u16(dport)


# ------------------------------------------------------------ ClientHello --

def capture_hello(params):
    """The ClientHello record(s) tls_client.py sends with `params`."""
    l = socket.socket()
    l.bind(("127.0.0.1", 0))
    l.listen(1)
    l.settimeout(10)
    p = dict(params, port=l.getsockname()[1])
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "tls_client.py"), json.dumps(p)])
    try:
        c, _ = l.accept()
        c.settimeout(10)
        data = b""
        # one whole handshake record (OpenSSL sends the hello in one record)
        while len(data) < 5 or len(data) < 5 + int.from_bytes(data[3:5], "big"):
            d = c.recv(65536)
            if not d:
                break
            data += d
        c.close()
    finally:
        l.close()
        proc.wait(timeout=15)
    if len(data) < 9 or data[0] != 0x16 or data[5] != 1:
        fail("not a ClientHello from %r: %r" % (params, data[:16]))
    if len(data) != 5 + int.from_bytes(data[3:5], "big"):
        fail("a ClientHello in more than one record from %r" % params)
    return data


def split_hello(rec):
    """(fixed part of the hello body, [(type, data)] extensions) of a one-record hello."""
    hs = rec[5:]
    body = hs[4:]
    p = 2 + 32
    p += 1 + body[p]
    p += 2 + int.from_bytes(body[p:p + 2], "big")
    p += 1 + body[p]
    fixed = body[:p]
    total = int.from_bytes(body[p:p + 2], "big")
    p += 2
    end = p + total
    exts = []
    while p < end:
        t = int.from_bytes(body[p:p + 2], "big")
        n = int.from_bytes(body[p + 2:p + 4], "big")
        exts.append((t, body[p + 4:p + 4 + n]))
        p += 4 + n
    if p != len(body):
        fail("unexpected bytes after the extensions")
    return fixed, exts


def join_hello(fixed, exts):
    e = b"".join(u16(t) + u16(len(d)) + d for t, d in exts)
    body = fixed + u16(len(e)) + e
    return b"\x01" + u24(len(body)) + body


def records(hs, cuts=()):
    """The handshake message `hs` in TLS records, cut at the offsets `cuts`."""
    out, last = b"", 0
    for c in list(cuts) + [len(hs)]:
        frag = hs[last:c]
        out += b"\x16\x03\x01" + u16(len(frag)) + frag
        last = c
    return out


def pq_hello(rec):
    """The hello with an X25519MLKEM768 key share (group 0x11ec, 1184 + 32
    bytes) in front of its own shares and the group first in
    supported_groups: the size of a post-quantum hello."""
    fixed, exts = split_hello(rec)
    rng = random.Random(1216)
    share = bytes(rng.randrange(256) for _ in range(1216))
    out = []
    for t, d in exts:
        if t == 51:  # key_share: client_shares<2..>
            shares = u16(0x11EC) + u16(len(share)) + share + d[2:]
            d = u16(len(shares)) + shares
        elif t == 10:  # supported_groups: named_group_list<2..>
            groups = u16(0x11EC) + d[2:]
            d = u16(len(groups)) + groups
        elif t == 21:  # padding: no longer needed at this size
            continue
        out.append((t, d))
    return join_hello(fixed, out)


def sni_offset(hs):
    """Offset in the handshake message of the first byte of the SNI host name."""
    fixed, exts = split_hello(b"\x16\x03\x01" + u16(len(hs)) + hs)
    p = 4 + len(fixed) + 2
    for t, d in exts:
        if t == 0:
            return p + 4 + 2 + 3
        p += 4 + len(d)
    fail("no SNI")


# ------------------------------------------------------------------ mirror --

def mirror_backend(port):
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("127.0.0.1", port))
    l.listen(16)

    def serve(c):
        c.settimeout(3)
        data = b""
        try:
            while not data.endswith(b"hello\n"):
                d = c.recv(65536)
                if not d:
                    break
                data += d
        except OSError:
            pass
        try:
            c.sendall(data)
        except OSError:
            pass
        c.close()

    def loop():
        while True:
            c, _ = l.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


# ------------------------------------------------------------------- cases --

def case(name, group, server, send, note, **kw):
    if isinstance(send, bytes):
        send = [send]
    return dict(name=name, group=group, server=server, send=[s.hex() for s in send], note=note, **kw)


def build_cases(hellos):
    C = []
    pp = lambda name, group, send, note, **kw: C.append(case(name, group, "PP", send, note, **kw))

    # v1 ---------------------------------------------------------------
    pp("v1_tcp4", "v1", b"PROXY TCP4 192.0.2.1 198.51.100.2 51000 443\r\n", "IPv4")
    pp("v1_tcp6", "v1", b"PROXY TCP6 2001:db8::1 2001:db8::2 51000 443\r\n", "IPv6")
    pp("v1_tcp6_verbatim", "v1", b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::FFFF:192.0.2.1 1 65535\r\n",
       "v1 addresses are taken as written, not normalized")
    pp("v1_tcp6_longest", "v1",
       b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
       b" 65535 65535\r\n", "the longest TCP6 line (104 bytes)")
    pp("v1_ports_zero", "v1", b"PROXY TCP4 192.0.2.1 192.0.2.2 0 0\r\n", "port 0")
    pp("v1_unknown", "v1", b"PROXY UNKNOWN\r\n", "UNKNOWN: the connection's own addresses stay")
    pp("v1_unknown_longest", "v1",
       b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
       b" 65535 65535\r\n", "the longest v1 line the spec allows (107 bytes)")
    C.append(case("v1_payload", "v1", "PP_PROXY", b"PROXY TCP4 192.0.2.1 192.0.2.2 5000 80\r\nhello\n",
                  "the bytes after the header (same segment) go to the upstream"))

    # v1, broken ---------------------------------------------------------
    pp("v1_bad_port", "v1_broken", b"PROXY TCP4 192.0.2.1 192.0.2.2 65536 80\r\n", "port over 65535")
    pp("v1_bad_proto", "v1_broken", b"PROXY TCP5 192.0.2.1 192.0.2.2 1 2\r\n", "not TCP4/TCP6/UNKNOWN")
    pp("v1_bad_addr", "v1_broken", b"PROXY TCP4 192.0.2.x 192.0.2.2 1 2\r\n", "a letter in an address")
    pp("v1_lf_only", "v1_broken", b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n", "LF without CR")
    pp("v1_too_short", "v1_broken", b"PROXY ", "fewer than 8 bytes", half_close=True)
    pp("v1_truncated", "v1_broken", b"PROXY TCP4 192.0.2.1 19", "half a line, then the client closes",
       half_close=True)
    pp("v1_split", "v1_broken", [b"PROXY TCP4 192.0.2.1 ", b"192.0.2.2 1 2\r\n"],
       "a line in two segments 300 ms apart: nginx parses the first segment alone", pause_ms=300)
    pp("not_proxy", "v1_broken", b"GET / HTTP/1.0\r\nHost: example\r\n\r\n",
       "no header at all; 1.22.1 logs everything it peeked, CR and LF included")

    # v1, oversized ----------------------------------------------------
    pp("v1_oversized", "oversized", b"PROXY TCP6 " + b"0" * 120 + b":1 ::2 1 2\r\n",
       "a well-formed line of 144 bytes: 1.22.1 reads at most 107")
    pp("v1_oversized_5000", "oversized", b"PROXY TCP4 " + b"1" * 5000 + b" 2.2.2.2 1 2\r\n",
       "no line end in the first 4096 bytes either")

    # v2 ---------------------------------------------------------------
    addrs4 = inet4("192.0.2.1", "198.51.100.2", 51000, 443)
    addrs6 = inet6("2001:db8::1", "2001:db8::2", 51000, 443)
    pp("v2_ipv4", "v2", v2(0x21, 0x11, addrs4), "PROXY, INET, STREAM")
    pp("v2_ipv6", "v2", v2(0x21, 0x21, addrs6), "PROXY, INET6, STREAM")
    tlvs_a = (tlv(0x01, b"h2") + tlv(0x02, b"example.com") + tlv(0x05, b"\x00\x01id-42")
              + tlv(0x30, b"ns1") + tlv(0xE0, b"x") + tlv(0x04, b"\x00\x00"))
    pp("v2_ipv4_tlvs", "v2", v2(0x21, 0x11, addrs4 + tlvs_a),
       "alpn, authority, unique_id, netns, a custom 0xE0 and a NOOP TLV (within 107 bytes)")
    ssl_subs = (tlv(0x21, b"TLSv1.3") + tlv(0x22, b"alice") + tlv(0x23, b"AES128")
                + tlv(0x24, b"SHA256") + tlv(0x25, b"EC256"))
    tlvs_ssl = tlv(0x20, b"\x07" + (20).to_bytes(4, "big") + ssl_subs)
    pp("v2_ipv4_ssl_tlvs", "v2", v2(0x21, 0x11, addrs4 + tlvs_ssl),
       "an SSL TLV (client 7, verify 20) with version, cn, cipher, sig_alg, key_alg")
    pp("v2_ipv6_tlvs", "v2", v2(0x21, 0x21, addrs6 + tlv(0x01, b"h2") + tlv(0x03, b"\x00\x00\x00\x00")),
       "IPv6 with alpn and a (wrong) CRC32c TLV: nginx does not check it")
    pp("v2_local", "v2", v2(0x20, 0x11, addrs4), "LOCAL: addresses ignored")
    pp("v2_unspec", "v2", v2(0x21, 0x01, b""), "PROXY with the UNSPEC family")
    pp("v2_unspec_tlvs", "v2", v2(0x21, 0x01, tlv(0x04, b"\x00\x00\x00\x00")), "UNSPEC family with a TLV")
    pp("v2_unix", "v2", v2(0x21, 0x31, b""), "AF_UNIX: ignored")
    pp("v2_dgram", "v2", v2(0x21, 0x12, addrs4), "DGRAM transport: ignored")
    C.append(case("v2_payload", "v2", "PP_PROXY", v2(0x21, 0x11, addrs4) + b"hello\n",
                  "the bytes after the header (same segment) go to the upstream"))

    # v2, broken -------------------------------------------------------
    pp("v2_version1", "v2_broken", v2(0x11, 0x11, addrs4), "version nibble 1")
    pp("v2_truncated", "v2_broken", SIG + b"\x21\x11" + u16(100) + addrs4 + b"\x00" * 8,
       "length 100, 20 bytes, then the client closes", half_close=True)
    pp("v2_inet_short", "v2_broken", v2(0x21, 0x11, b"\x7f\x00\x00\x01"),
       "INET with 4 bytes of addresses")
    pp("v2_short_signature", "v2_broken", SIG[:10], "10 bytes of the signature, then close",
       half_close=True)

    # v2, oversized ----------------------------------------------------
    pp("v2_oversized", "oversized", v2(0x21, 0x11, addrs4 + tlv(0xE1, b"y" * 200)),
       "a v2 header of 231 bytes: 1.22.1 reads at most 107")
    pp("v2_oversized_5000", "oversized", v2(0x21, 0x11, addrs4 + tlv(0xE1, b"y" * 5000)),
       "a v2 header of 5031 bytes, all sent")

    # timeout ----------------------------------------------------------
    pp("timeout", "timeout", b"", "nothing within proxy_protocol_timeout (1s)")

    # the header nginx sends -------------------------------------------
    C.append(case("send_v4", "send", "SEND4", b"hello\n", "proxy_protocol on, IPv4 client"))
    C.append(case("send_v6", "send", "SEND6", b"hello\n", "proxy_protocol on, IPv6 client", family=6))
    C.append(case("send_after_pp", "send", "SEND_PP", b"PROXY TCP4 192.0.2.1 192.0.2.2 5000 443\r\nhello\n",
                  "listen proxy_protocol without realip: the connection's addresses are sent"))
    C.append(case("send_realip_v4", "send", "SEND_REALIP",
                  b"PROXY TCP4 192.0.2.1 192.0.2.2 5000 443\r\nhello\n",
                  "realip: the header's client, nginx's own server address"))
    C.append(case("send_realip_v6_over_v4", "send", "SEND_REALIP",
                  b"PROXY TCP6 2001:db8::1 2001:db8::2 5000 443\r\nhello\n",
                  "realip: an IPv6 client over an IPv4 connection"))
    C.append(case("send_realip_unknown", "send", "SEND_REALIP", b"PROXY UNKNOWN\r\nhello\n",
                  "realip with UNKNOWN: nothing replaced"))

    # ssl_preread ------------------------------------------------------
    sp = lambda name, send, note, server="SP", **kw: C.append(case(name, "ssl_preread", server, send, note, **kw))
    h13 = hellos["tls13"]
    for key in ("tls13", "tls13_no_sni", "tls12", "tls10", "big_alpn"):
        sp(key, hellos[key], hellos[key + ".note"])
    sp("tls13_segments", [h13[:1], h13[1:5], h13[5:9], h13[9:100], h13[100:]],
       "the tls13 hello in five segments, 100 ms apart", pause_ms=100)
    hs = h13[5:]
    cut = sni_offset(hs) + 3
    sp("tls13_three_records", records(hs, [10, cut]),
       "the tls13 handshake message in three records: 10 bytes, then up to the middle of the SNI host name")
    pq = pq_hello(h13)
    sp("pq", records(pq), "tls13 with an X25519MLKEM768 key share: %d bytes in one record" % (len(pq) + 5))
    pqr = records(pq, [1000])
    sp("pq_two_records", [pqr[:700], pqr[700:1400], pqr[1400:]],
       "the pq hello in two records (1000 bytes, rest), sent as three segments 100 ms apart", pause_ms=100)
    big = hellos["big_alpn"]
    sp("big_alpn_segments", [big[i:i + 500] for i in range(0, len(big), 500)],
       "the big_alpn hello in 500-byte segments, 50 ms apart", pause_ms=50)
    sp("sslv2", b"\x80\x2e\x01\x03\x01\x00\x15\x00\x00\x00\x10" + bytes(range(0x15)) + bytes(16),
       "an SSLv2-framed ClientHello offering TLS 1.0")
    sp("not_tls", b"GET / HTTP/1.0\r\n\r\n", "not TLS: the phase declines, the variables are not found")
    sp("not_tls_short", b"hi\n", "3 bytes: fewer than a record header, so nginx waits (preread_timeout 1s)")
    sp("partial_timeout", h13[:60], "60 bytes of a hello, then silence (preread_timeout 1s)")
    sp("partial_eof", h13[:60], "60 bytes of a hello, then the client's FIN", half_close=True)
    sp("buffer_full", big, "a hello larger than preread_buffer_size 64", server="SP_SMALL")
    sp("after_pp", b"PROXY TCP4 192.0.2.1 192.0.2.2 5000 443\r\n" + h13,
       "a PROXY header then a hello, one segment", server="SP_PP")
    sp("proxied", h13 + b"hello\n", "the hello (and what follows) reach the upstream unchanged",
       server="SP_PROXY")
    return C


HELLO_PARAMS = [
    ("tls13", {"sni": "app.example.com", "alpn": ["h2", "http/1.1"]}, "python ssl, SNI and ALPN, TLS 1.3"),
    ("tls13_no_sni", {"alpn": ["imap"]}, "python ssl, no SNI, ALPN imap"),
    ("tls12", {"sni": "legacy.example", "max": "TLSv1_2"}, "python ssl, TLS 1.2 only, no ALPN"),
    ("tls10", {"sni": "old.example", "min": "TLSv1", "max": "TLSv1", "ciphers": "DEFAULT:@SECLEVEL=0"},
     "python ssl, TLS 1.0 only"),
    ("big_alpn", {"sni": "big.example", "alpn": ["p%02d-" % i + "x" * 145 for i in range(12)]},
     "python ssl, twelve 149-byte ALPN protocols: a 2 KB hello"),
]


# ---------------------------------------------------------------- masking --

TIME_RE = rb"\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}"


def mask_ports(s, ports, cport):
    """Ports after a ':' in the text `s`."""
    for name, port in sorted(ports.items(), key=lambda kv: -len(str(kv[1]))):
        s = re.sub(r"(?<=:)%d\b" % port, "%%PORT_" + name + "%%", s)
    if cport:
        s = re.sub(r"(?<=:)%d\b" % cport, "%%CLIENT_PORT%%", s)
    return s


def mask_errors(chunk, work, ports, cport):
    if not chunk:
        return []
    if not chunk.endswith(b"\n"):
        fail("error log chunk without a final newline: %r" % chunk)
    entries = re.split(rb"\n(?=" + TIME_RE + rb" \[)", chunk[:-1])
    out = []
    for e in entries:
        m = re.match(rb"^(" + TIME_RE + rb") \[(\w+)\] (\d+)#(\d+): (.*)$", e, re.S)
        if not m:
            fail("unexpected error_log entry: %r" % e)
        if m.group(3) != m.group(4):
            fail("tid differs from pid: %r" % e)
        rest = escape(m.group(5))
        rest = re.sub(r"^\*\d+ ", "*%%CONN%% ", rest)
        rest = rest.replace(escape(work.encode()), "%%PREFIX%%")
        rest = re.sub(r"^(\*%%CONN%% proxy (?:127\.0\.0\.1|\[::1\]):)\d+ ", r"\1%%UPSTREAM_LOCAL_PORT%% ", rest)
        rest = mask_ports(rest, ports, cport)
        out.append("%%TIME%% [" + m.group(2).decode() + "] %%PID%%#%%PID%%: " + rest)
    return out


ACCESS_FIELDS = ["remote_addr", "remote_port", "server_port", "status", "bytes_sent", "bytes_received",
                 "proxy_protocol_addr", "proxy_protocol_port", "proxy_protocol_server_addr",
                 "proxy_protocol_server_port", "ssl_preread_server_name", "ssl_preread_alpn_protocols",
                 "ssl_preread_protocol", "upstream_addr"]


def mask_access(chunk, ports, cport, server):
    if chunk.count(b"\n") != 1 or not chunk.endswith(b"\n"):
        fail("expected one access log line, got %r" % chunk)
    vals = chunk[:-1].split(b"|")
    if len(vals) != len(ACCESS_FIELDS):
        fail("access log line with %d fields: %r" % (len(vals), chunk))
    out = []
    for name, v in zip(ACCESS_FIELDS, vals):
        if name == "remote_port" and v == str(cport).encode():
            v = b"%%CLIENT_PORT%%"
        elif name == "server_port":
            if v != str(ports[server]).encode():
                fail("server_port %r is not the port of %s" % (v, server))
            v = b"%%PORT_" + server.encode() + b"%%"
        elif name == "upstream_addr" and v != b"-":
            if not re.fullmatch(rb"127\.0\.0\.1:\d+", v):
                fail("upstream_addr %r" % v)
            v = mask_ports(v.decode(), ports, None).encode()
        if b"%" in v.replace(b"%%", b""):
            fail("a '%%' in the access log: %r" % v)
        out.append(v)
    return b"|".join(out).decode("latin-1")


def mask_reply(b, ports, cport, server):
    # the PROXY header nginx sent (mirrored): "... CPORT SPORT\r\n" (or with realip a
    # header port, which is below the ephemeral range)
    s = escape(b)
    s = re.sub(r"(?<= )%d(?= )" % cport, "%%CLIENT_PORT%%", s)
    s = re.sub(r"(?<= )%d(?=\\x0d\\x0a)" % ports[server], "%%PORT_" + server + "%%", s)
    return s


# ----------------------------------------------------------------- running --

def run_client(c, ports):
    fam = c.get("family", 4)
    s = socket.socket(socket.AF_INET if fam == 4 else socket.AF_INET6)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(15)
    t0 = time.monotonic()
    s.connect(("127.0.0.1" if fam == 4 else "::1", ports[c["server"]]))
    cport = s.getsockname()[1]
    # "reset": a send or a recv failed with ECONNRESET/EPIPE (the server closed
    # with unread bytes in its socket); otherwise "eof"
    end = "eof"
    for i, h in enumerate(c["send"]):
        if i:
            time.sleep(c.get("pause_ms", 100) / 1000)
        try:
            s.sendall(bytes.fromhex(h))
        except (ConnectionResetError, BrokenPipeError):
            end = "reset"
            break
    if c.get("half_close") and end == "eof":
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # already reset: the recv below tells
    data = b""
    while True:
        try:
            d = s.recv(65536)
        except ConnectionResetError:
            end = "reset"
            break
        if not d:
            break
        data += d
    s.close()
    return cport, data, end, time.monotonic() - t0


def main():
    version = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    hellos = {}
    for key, params, note in HELLO_PARAMS:
        hellos[key] = capture_hello(params)
        hellos[key + ".note"] = note + " (%d bytes)" % len(hellos[key])
    cases = build_cases(hellos)

    ports = pick_ports()
    work = tempfile.mkdtemp(prefix="sluice-pp.")
    nginx = None
    try:
        prefix = work + "/"
        conf = "".join(l for l in open(os.path.join(HERE, "stream.conf")) if not l.lstrip().startswith("#"))
        conf = conf.replace("%%PREFIX%%", prefix)
        for n, p in ports.items():
            conf = conf.replace("%%PORT_" + n + "%%", str(p))
        if "%%" in conf:
            fail("unreplaced placeholder in stream.conf")
        with open(os.path.join(work, "nginx.conf"), "w") as f:
            f.write("daemon off;\nmaster_process off;\nworker_processes 1;\npid %snginx.pid;\n"
                    "error_log %serror.log info;\n%s" % (prefix, prefix, conf))
        mirror_backend(ports["BACKEND_MIRROR"])
        nginx = subprocess.Popen(["timeout", "300", NGINX, "-p", prefix, "-c", prefix + "nginx.conf",
                                  "-e", prefix + "early.log", "-g", "load_module %s;" % MODULE],
                                 stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "stderr"), "wb"))
        pidfile = os.path.join(work, "nginx.pid")
        for _ in range(200):
            if os.path.exists(pidfile) and os.path.getsize(pidfile):
                break
            time.sleep(0.05)
        else:
            fail("nginx did not start: " + open(os.path.join(work, "stderr")).read())
        time.sleep(0.3)

        def size(n):
            p = os.path.join(work, n)
            return os.path.getsize(p) if os.path.exists(p) else 0

        def read(n, a, z):
            with open(os.path.join(work, n), "rb") as f:
                f.seek(a)
                return f.read(z - a)

        for c in cases:
            e0, a0 = size("error.log"), size("access.log")
            cport, data, end, secs = run_client(c, ports)
            time.sleep(0.5)
            e1, a1 = size("error.log"), size("access.log")
            c["reply"] = mask_reply(data, ports, cport, c["server"])
            c["end"] = end
            c["seconds"] = round(secs, 2)
            c["access"] = mask_access(read("access.log", a0, a1), ports, cport, c["server"])
            c["error"] = mask_errors(read("error.log", e0, e1), work, ports, cport)
            print("%-24s %-6s %s" % (c["name"], end, c["access"]), file=sys.stderr)

        os.kill(int(open(pidfile).read()), signal.SIGTERM)
        nginx.wait(timeout=20)
        nginx = None
        for f in ("stderr", "early.log"):
            if size(f):
                fail("%s is not empty: %r" % (f, read(f, 0, size(f))))
    finally:
        if nginx is not None:
            # SIGTERM to timeout(1), which passes it on to nginx
            nginx.terminate()
            try:
                nginx.wait(timeout=10)
            except subprocess.TimeoutExpired:
                nginx.kill()
                nginx.wait()
        shutil.rmtree(work, ignore_errors=True)

    out = {"nginx": version, "ports": sorted(ports), "cases": cases}
    with open(os.path.join(HERE, "recorded.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print("recorded %d cases into %s" % (len(cases), os.path.join(HERE, "recorded.json")), file=sys.stderr)


if __name__ == "__main__":
    main()
