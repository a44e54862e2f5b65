#!/usr/bin/env python3
"""udp_relay.py LISTEN_PORT TARGET_PORT STATS_FILE [DROP_PROBABILITY SEED] [--delay-ms D] [--coap]

A loopback UDP relay that counts datagrams and bytes (UDP payload, i.e.
DTLS records including CoAP) in each direction, per client address. Used by
tools/bench/federation.sh to measure what an update really costs on the
wire, by tests/integration/lossy_link.sh to drop datagrams at random
(each direction independently, seeded), and by tests/integration/slow_link.sh
to delay them: with --delay-ms D every datagram that is not dropped leaves
the relay D ms after it arrived, in both directions (one-way delay D, so the
round-trip time grows by 2 D), in arrival order. With --coap (plain CoAP,
an aggregator with insecure = true) each client's counters also get "coap":
requests by method and path ("GET /round", "POST /update", ...; a GET /round
with Observe: 0 counts as "GET /round observe"), and "notifications": the
server's CON/NON 2.xx responses carrying an Observe option (RFC 7641), as they
reach the relay (before any drop). Writes STATS_FILE as JSON on SIGTERM."""
import collections
import json
import random
import selectors
import signal
import socket
import sys
import time

args = sys.argv[1:]
coap = "--coap" in args
if coap:
    args.remove("--coap")
delay_s = 0.0
if "--delay-ms" in args:
    i = args.index("--delay-ms")
    delay_s = float(args[i + 1]) / 1000.0
    del args[i:i + 2]
if len(args) < 3 or delay_s < 0:
    sys.exit(__doc__)
listen_port, target_port, stats_path = int(args[0]), int(args[1]), args[2]
drop = float(args[3]) if len(args) > 3 else 0.0
rng = random.Random(int(args[4]) if len(args) > 4 else 1)
dropped = {"up": 0, "down": 0}
front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
front.bind(("127.0.0.1", listen_port))
# Non-blocking: a socket select() calls readable can still have nothing to
# read (a pending ICMP error already taken), and a blocking recvfrom() there
# outlived SIGTERM (Python retries it after the handler), hanging the test.
front.setblocking(False)
sel = selectors.DefaultSelector()
sel.register(front, selectors.EVENT_READ, None)
upstream = {}  # client addr -> socket towards the aggregator
stats = {}     # client port -> counters
# Datagrams on their way: (release time, send function, data). A constant
# delay keeps arrival order, so a FIFO is a priority queue here.
in_flight = collections.deque()
running = True


def coap_parse(data):
    """(type, code, uri path, observe value or None) of a CoAP message, None if malformed."""
    if len(data) < 4 or data[0] >> 6 != 1:
        return None
    typ, tkl, code = (data[0] >> 4) & 3, data[0] & 15, data[1]
    i, num, path, observe = 4 + tkl, 0, [], None
    if tkl > 8 or i > len(data):
        return None
    while i < len(data) and data[i] != 0xFF:
        delta, length = data[i] >> 4, data[i] & 15
        i += 1
        ext = []
        for v in (delta, length):
            if v == 13:
                ext.append(data[i] + 13 if i < len(data) else None)
                i += 1
            elif v == 14:
                ext.append((data[i] << 8 | data[i + 1]) + 269 if i + 1 < len(data) else None)
                i += 2
            elif v == 15:
                return None
            else:
                ext.append(v)
        if None in ext or i + ext[1] > len(data):
            return None
        num += ext[0]
        value = data[i:i + ext[1]]
        i += ext[1]
        if num == 11:
            path.append(value.decode("utf-8", "replace"))
        elif num == 6:
            observe = int.from_bytes(value, "big") if value else 0
    return typ, code, "/" + "/".join(path), observe


def coap_count(c, data, up):
    m = coap_parse(data)
    if m is None:
        return
    typ, code, path, observe = m
    cc = c.setdefault("coap", {})
    if up and 1 <= code <= 4:
        key = "%s %s%s" % (("GET", "POST", "PUT", "DELETE")[code - 1], path,
                           " observe" if observe == 0 and code == 1 else "")
        cc[key] = cc.get(key, 0) + 1
    elif not up and typ in (0, 1) and code >> 5 == 2 and observe is not None:
        cc["notifications"] = cc.get("notifications", 0) + 1


def stop(*_):
    global running
    running = False


def forward(send, data):
    if delay_s > 0:
        in_flight.append((time.monotonic() + delay_s, send, data))
    else:
        try:
            send(data)
        except OSError:  # the aggregator is not listening (yet): a lost datagram
            pass


def release_due():
    now = time.monotonic()
    while in_flight and in_flight[0][0] <= now:
        _, send, data = in_flight.popleft()
        try:
            send(data)
        except OSError:  # the aggregator is not listening (yet): a lost datagram
            pass


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
while running:
    wait = 0.2
    if in_flight:
        wait = max(0.0, min(wait, in_flight[0][0] - time.monotonic()))
    for key, _ in sel.select(timeout=wait):
        sock, client = key.fileobj, key.data
        try:
            data, addr = sock.recvfrom(65536)
        except ConnectionRefusedError:  # the aggregator is not listening yet; the client retries
            continue
        except BlockingIOError:  # nothing to read after all
            continue
        if client is None:  # from a client
            s = upstream.get(addr)
            if s is None:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.connect(("127.0.0.1", target_port))
                s.setblocking(False)
                upstream[addr] = s
                sel.register(s, selectors.EVENT_READ, addr)
            c = stats.setdefault(str(addr[1]), {"up_bytes": 0, "up_dgrams": 0, "down_bytes": 0, "down_dgrams": 0})
            c["up_bytes"] += len(data)
            c["up_dgrams"] += 1
            if coap:
                coap_count(c, data, True)
            if rng.random() < drop:
                dropped["up"] += 1
                continue
            forward(s.send, data)
        else:  # from the aggregator to `client`
            c = stats[str(client[1])]
            c["down_bytes"] += len(data)
            c["down_dgrams"] += 1
            if coap:
                coap_count(c, data, False)
            if rng.random() < drop:
                dropped["down"] += 1
                continue
            forward(lambda d, to=client: front.sendto(d, to), data)
    release_due()
with open(stats_path, "w") as f:
    json.dump({"clients": stats, "dropped": dropped}, f)
