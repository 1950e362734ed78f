#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/seeds/<target>/ (python3 stdlib only).

Seeds are dockerd's own request bodies, captured from dockerd 20.10.24 in
libnetwork-api/tests/fixtures/ (see its README), so that the fuzzers start from real traffic:

- http: the requests as dockerd sends them (POST /<Method> HTTP/1.1, Host, User-Agent,
  Content-Length, Accept; no Content-Type), one request per seed and each capture run's whole
  conversation pipelined on one connection, plus a few HTTP edge cases;
- driver: records of the driver target's format (fuzz/src/calls.rs): each capture run's calls as
  raw bodies, and template calls (an empty template is a valid call).

Deterministic: the same files every run. tests/fuzz.sh runs it before fuzzing.
"""
import json
import os
import re
import shutil
import struct
import sys

FUZZ = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(FUZZ, "..", "libnetwork-api", "tests", "fixtures")
MAX_CALLS = 16  # calls.rs

METHODS = [l.strip() for l in open(os.path.join(FUZZ, "methods.txt")) if l.strip() and not l.startswith("#")]

# dockerd's order within one capture run (README: create, run, rm, network rm).
ORDER = [
    "Plugin.Activate",
    "NetworkDriver.GetCapabilities",
    "NetworkDriver.DiscoverNew",
    "NetworkDriver.AllocateNetwork",
    "IpamDriver.GetCapabilities",
    "IpamDriver.GetDefaultAddressSpaces",
    "IpamDriver.RequestPool",
    "IpamDriver.RequestAddress",
    "NetworkDriver.CreateNetwork",
    "NetworkDriver.CreateEndpoint",
    "NetworkDriver.Join",
    "NetworkDriver.ProgramExternalConnectivity",
    "NetworkDriver.EndpointOperInfo",
    "NetworkDriver.RevokeExternalConnectivity",
    "NetworkDriver.Leave",
    "NetworkDriver.DeleteEndpoint",
    "IpamDriver.ReleaseAddress",
    "NetworkDriver.DeleteNetwork",
    "IpamDriver.ReleasePool",
    "NetworkDriver.FreeNetwork",
]


def fixtures():
    """(method, variant, n, body) of every captured body."""
    out = []
    for f in sorted(os.listdir(FIXTURES)):
        m = re.fullmatch(r"((?:Plugin|NetworkDriver|IpamDriver)\.[A-Za-z]+)(?:\.([a-z0-9]+))?(?:\.(\d+))?\.json", f)
        if not m:
            continue
        method, variant, n = m.group(1), m.group(2) or "", int(m.group(3) or 1)
        if variant.isdigit():  # "<Method>.<n>.json" without a variant
            variant, n = "", int(variant)
        with open(os.path.join(FIXTURES, f), "rb") as fh:
            out.append((method, variant, n, fh.read()))
    return out


def runs(fx):
    """Each capture run's calls in dockerd's order."""
    by = {}
    for method, variant, n, body in fx:
        by.setdefault(variant, []).append((ORDER.index(method) if method in ORDER else len(ORDER), n, method, body))
    return {v: [(m, b) for _, _, m, b in sorted(calls)] for v, calls in sorted(by.items())}


KNOWN_OPTIONS = ("oncache.vni", "com.docker.network.driver.mtu", "oncache.fastpath")


def accepted(calls):
    """The run with the user options oncache refuses ("-o foo=bar") left out of CreateNetwork, so
    that the calls after it succeed too; None if there were none."""
    out, changed = [], False
    for m, b in calls:
        if m == "NetworkDriver.CreateNetwork":
            req = json.loads(b)
            generic = req["Options"]["com.docker.network.generic"]
            kept = {("oncache.vni" if k == "capture.vni" else k): v for k, v in generic.items()
                    if k in KNOWN_OPTIONS or k == "capture.vni"}
            if kept != generic:
                req["Options"]["com.docker.network.generic"] = kept
                b, changed = json.dumps(req, separators=(",", ":")).encode() + b"\n", True
        out.append((m, b))
    return out if changed else None


# Hand-written call sequences (as the template pools name things: calls.rs) that reach the
# driver's less travelled paths: link-tag collisions, VNI and subnet conflicts, repeated calls,
# forced removal, peers, endpoints of other shapes.
N0 = "f2fe6f8c27236d1f063c120f79d992493000cca7cca793b4b0853222ed8b03bf"
N1 = "530844729eec64f8045ab75e38f733d11fc4fb1c3999bc678aba64c74c51c91b"
E0 = "c75a308e15d653e98e42577d3ca392efab348cd9a86743c9b126bb66185bd9a4"
E0B = "c75a308e15d653e98e42577d3ca392efab348cd9a86743c9b126bb66185bd9a5"  # E0's link tag
E1 = "51fb632b062431f4f51fe0009d2f7fa476298e30e34319d6d1fc945d30f23956"
SANDBOX = "/var/run/docker/netns/fdb557fae463"


def net(nid, pool="10.213.0.0/24", v6=None, **generic):
    return ("NetworkDriver.CreateNetwork", {
        "NetworkID": nid,
        "Options": {"com.docker.network.enable_ipv6": v6 is not None, "com.docker.network.generic": generic},
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Gateway": pool.rsplit(".", 1)[0] + ".1/" + pool.split("/")[1], "Pool": pool}],
        "IPv6Data": [{"AddressSpace": "LocalDefault", "Gateway": "", "Pool": v6}] if v6 else [],
    })


def ep(nid, eid, addr="10.213.0.2/24", v6="", mac=""):
    return ("NetworkDriver.CreateEndpoint", {
        "NetworkID": nid, "EndpointID": eid,
        "Interface": {"Address": addr, "AddressIPv6": v6, "MacAddress": mac},
        "Options": {"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": []},
    })


def call(method, nid=N0, eid=E0, **more):
    return ("NetworkDriver." + method, dict({"NetworkID": nid, "EndpointID": eid}, **more))


def join(nid=N0, eid=E0, sandbox=SANDBOX):
    return call("Join", nid, eid, SandboxKey=sandbox, Options={})


def peer(method, address):
    return ("Oncache." + method, {"Address": address})


def discover(method, address, self_node=False):
    return ("NetworkDriver." + method, {"DiscoveryType": 1, "DiscoveryData": {"Address": address, "BindAddress": address, "Self": self_node}})


SCENARIOS = {
    "tag-collision": [net(N0), ep(N0, E0), ep(N0, E0B, "10.213.0.3/24"), join(), join(eid=E0B),
                      call("DeleteEndpoint", eid=E0B), call("Leave", eid=E0B), call("EndpointOperInfo"),
                      call("Leave"), call("DeleteEndpoint"), ("NetworkDriver.DeleteNetwork", {"NetworkID": N0})],
    "conflicts": [net(N0, **{"oncache.vni": "5000"}), net(N1, "10.214.0.0/24", **{"oncache.vni": "5000"}),
                  net(N1, "10.213.0.0/16"), net(N1, "10.213.0.0/24", **{"oncache.vni": "5001"}),
                  ep(N1, E0), ep(N0, E0), join(N1), ("Oncache.Status", None),
                  ("NetworkDriver.DeleteNetwork", {"NetworkID": N1}), ("NetworkDriver.DeleteNetwork", {"NetworkID": N0})],
    "repeats": [net(N0, **{"com.docker.network.driver.mtu": "1400", "oncache.fastpath": "false"}), net(N0), ep(N0, E0), ep(N0, E0),
                join(), join(), join(sandbox="/run/docker/netns/1a2b3c4d5e6f"), call("Leave"), call("Leave"),
                join(), call("DeleteEndpoint"), call("DeleteEndpoint"),
                ("NetworkDriver.DeleteNetwork", {"NetworkID": N0}), ("NetworkDriver.DeleteNetwork", {"NetworkID": N0})],
    "force-remove": [net(N0), ep(N0, E0), join(), ep(N0, E1, "10.213.0.3/24"),
                     ("Oncache.NetworkRemove", {"ID": N0}), ("Oncache.NetworkRemove", {"ID": N0, "Force": True}),
                     call("Leave"), call("DeleteEndpoint"), ("Oncache.Status", None)],
    "delete-joined": [net(N0), ep(N0, E0), join(), ("NetworkDriver.DeleteNetwork", {"NetworkID": N0}),
                      call("EndpointOperInfo"), call("Leave"), ("Oncache.Status", None)],
    "peers": [peer("PeerAdd", "10.255.0.2"), net(N0), peer("PeerAdd", "10.255.0.3"), discover("DiscoverNew", "10.255.0.4"),
              discover("DiscoverNew", "10.255.0.1", True), peer("PeerAdd", "10.255.0.1"), peer("PeerAdd", "fd00::1"),
              ep(N0, E0), join(), ("Oncache.PeerList", None), discover("DiscoverDelete", "10.255.0.4"),
              peer("PeerRemove", "10.255.0.2"), peer("PeerRemove", "10.255.0.9"), ("Oncache.Status", None),
              ("NetworkDriver.DeleteNetwork", {"NetworkID": N0}), peer("PeerRemove", "10.255.0.3")],
    "endpoint-shapes": [net(N0, v6="fd00:213::/64"), ep(N0, E0, mac="02:42:0a:d5:00:09"), ep(N0, E1, "", "fd00:213::2/64"),
                        ep(N0, E0B, "", ""), join(), join(eid=E1), join(eid=E0B), net(N1, "10.214.0.0/24"),
                        ep(N1, E0, "10.214.0.2/24"), call("EndpointOperInfo", eid=E1), call("Leave", eid=E1),
                        ("Oncache.NetworkRemove", {"ID": N0, "Force": True}), ("Oncache.NetworkRemove", {"ID": N1, "Force": True})],
}


def encode(b):
    return b"" if b is None else json.dumps(b, separators=(",", ":")).encode() + b"\n"


def request(method, body, extra=b""):
    return (
        b"POST /" + method.encode() + b" HTTP/1.1\r\nHost: \r\nUser-Agent: Go-http-client/1.1\r\n"
        + b"Content-Length: %d\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n" % len(body)
        + extra + b"\r\n" + body
    )


def record(method, body=b"", template=False):
    i = METHODS.index(method)
    return struct.pack("<BBH", i, 1 if template else 0, len(body)) + body


def write(target, name, data):
    d = os.path.join(FUZZ, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as fh:
        fh.write(data)


JSON_TOKENS = [
    "NetworkID", "EndpointID", "Options", "IPv4Data", "IPv6Data", "AddressSpace", "Pool", "Gateway",
    "AuxAddresses", "Interface", "Address", "AddressIPv6", "MacAddress", "SandboxKey", "DiscoveryType",
    "DiscoveryData", "BindAddress", "Self", "ID", "Force", "com.docker.network.generic",
    "com.docker.network.enable_ipv6", "com.docker.network.internal", "com.docker.network.driver.mtu",
    "oncache.vni", "oncache.fastpath", "null", "true", "false", "10.213.0.0/24", "10.213.0.2/24",
    "fd00:213::/64", "02:42:0a:d5:00:02", "10.255.0.2", "fd00::1",
]
HTTP_TOKENS = [
    "POST /", " HTTP/1.1\r\n", " HTTP/1.0\r\n", "\r\n\r\n", "Host: \r\n", "Content-Length: ",
    "Transfer-Encoding: chunked\r\n", "Connection: close\r\n", "Connection: keep-alive\r\n",
    "Expect: 100-continue\r\n", "User-Agent: Go-http-client/1.1\r\n",
    "Accept: application/vnd.docker.plugins.v1.2+json\r\n", "0\r\n\r\n", "GET ",
]


def write_dict(target, tokens):
    def esc(t):
        return "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "\\x%02x" % ord(c) for c in t)
    with open(os.path.join(FUZZ, "seeds", target + ".dict"), "w") as fh:
        fh.write("".join(f'"{esc(t)}"\n' for t in tokens))


def main():
    shutil.rmtree(os.path.join(FUZZ, "seeds"), ignore_errors=True)
    fx = fixtures()
    conversations = runs(fx)
    for variant, calls in list(conversations.items()):
        ok = accepted(calls)
        if ok:
            conversations[(variant or "plain") + "-accepted"] = ok

    # http: one request per distinct method (first capture of it), each run pipelined.
    seen = set()
    for method, variant, n, body in fx:
        if method not in seen:
            seen.add(method)
            write("http", f"req-{method}", request(method, body))
    for variant, calls in conversations.items():
        write("http", f"run-{variant or 'plain'}", b"".join(request(m, b) for m, b in calls))
    for name, calls in SCENARIOS.items():
        write("http", f"scenario-{name}", b"".join(request(m, encode(b)) for m, b in calls))
    create = next(b for m, v, n, b in fx if m == "NetworkDriver.CreateNetwork" and v == "")
    write("http", "edge-get", b"GET /Plugin.Activate HTTP/1.1\r\nHost: \r\n\r\n")
    write("http", "edge-http10", b"POST /Oncache.Status HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
    write("http", "edge-chunked", b"POST /NetworkDriver.CreateNetwork HTTP/1.1\r\nHost: \r\nTransfer-Encoding: chunked\r\n\r\n"
          + b"%x\r\n" % len(create) + create + b"\r\n0\r\n\r\n")
    write("http", "edge-too-large", b"POST /NetworkDriver.Join HTTP/1.1\r\nHost: \r\nContent-Length: 1048577\r\n\r\n{}")
    write("http", "edge-short-body", b"POST /NetworkDriver.Join HTTP/1.1\r\nHost: \r\nContent-Length: 100\r\n\r\n{\"EndpointID\":")
    write("http", "edge-expect", request("Oncache.PeerAdd", b'{"Address":"10.255.0.2"}\n', b"Expect: 100-continue\r\n"))
    write("http", "edge-close", request("Plugin.Activate", b"", b"Connection: close\r\n") + request("Oncache.Status", b""))
    write("http", "edge-absolute-uri", b"POST http://x/NetworkDriver.GetCapabilities HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    write("http", "edge-control", b"".join([
        request("Oncache.PeerAdd", b'{"Address":"10.255.0.2"}'),
        request("Oncache.PeerList", b""),
        request("Oncache.Status", b""),
        request("Oncache.NetworkRemove", b'{"ID":"f2fe6f8c27236d1f063c120f79d992493000cca7cca793b4b0853222ed8b03bf","Force":true}'),
        request("Oncache.PeerRemove", b'{"Address":"10.255.0.2"}'),
        request("Oncache.CacheFlush", b""),
    ]))

    # driver: each run's calls as raw records (only methods the target knows), templates.
    for variant, calls in conversations.items():
        recs = [record(m, b) for m, b in calls if m in METHODS]
        for i in range(0, len(recs), MAX_CALLS):
            write("driver", f"run-{variant or 'plain'}-{i // MAX_CALLS}", b"".join(recs[i:i + MAX_CALLS]))
    for name, calls in SCENARIOS.items():
        assert len(calls) <= MAX_CALLS, name
        write("driver", f"scenario-{name}", b"".join(record(m, encode(b)) for m, b in calls))
    happy = ["NetworkDriver.CreateNetwork", "NetworkDriver.CreateEndpoint", "NetworkDriver.Join",
             "NetworkDriver.EndpointOperInfo", "Oncache.PeerAdd", "Oncache.Status", "NetworkDriver.DiscoverNew",
             "NetworkDriver.Leave", "NetworkDriver.DeleteEndpoint", "Oncache.PeerRemove", "NetworkDriver.DeleteNetwork"]
    write("driver", "template-happy", b"".join(record(m, template=True) for m in happy))
    write("driver", "template-force-remove", b"".join(record(m, template=True) for m in happy[:3] + ["Oncache.NetworkRemove"]))
    for i in range(0, len(METHODS), MAX_CALLS):
        write("driver", f"template-each-{i // MAX_CALLS}", b"".join(record(m, template=True) for m in METHODS[i:i + MAX_CALLS]))
    write_dict("driver", JSON_TOKENS)
    write_dict("http", HTTP_TOKENS + JSON_TOKENS + METHODS)
    n = sum(len(os.listdir(os.path.join(FUZZ, "seeds", t))) for t in ("http", "driver"))
    print(f"seeds.py: {n} seeds in {os.path.join(FUZZ, 'seeds')}", file=sys.stderr)


if __name__ == "__main__":
    main()
