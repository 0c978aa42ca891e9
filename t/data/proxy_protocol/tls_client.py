"""A real TLS client (python's ssl module, i.e. OpenSSL) that connects to
127.0.0.1:PORT and sends its ClientHello, so the hello can be captured by a
plain TCP listener. The handshake is expected to fail (the listener never
answers as a TLS server); that is not an error here.

Usage: python3 tls_client.py '{"port": 4433, "sni": "a.example",
                               "alpn": ["h2"], "min": "TLSv1", "max": "TLSv1_2",
                               "ciphers": "DEFAULT:@SECLEVEL=0"}'
Used by record.sh and by t/ssl_preread.rs (which runs it with `python3 -c`).
"""
import json
import socket
import ssl
import sys
import warnings

warnings.simplefilter("ignore")  # TLSv1 is deprecated, and wanted here

p = json.loads(sys.argv[1])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
if p.get("ciphers"):
    ctx.set_ciphers(p["ciphers"])
versions = {"TLSv1": ssl.TLSVersion.TLSv1, "TLSv1_2": ssl.TLSVersion.TLSv1_2,
            "TLSv1_3": ssl.TLSVersion.TLSv1_3}
if p.get("min"):
    ctx.minimum_version = versions[p["min"]]
if p.get("max"):
    ctx.maximum_version = versions[p["max"]]
if p.get("alpn"):
    ctx.set_alpn_protocols(p["alpn"])
s = socket.create_connection(("127.0.0.1", p["port"]), timeout=10)
try:
    ctx.wrap_socket(s, server_hostname=p.get("sni"))
except (ssl.SSLError, OSError):
    pass
finally:
    s.close()
