#!/usr/bin/env python3
"""udp_relay.py LISTEN_PORT TARGET_PORT STATS_FILE [DROP_PROBABILITY SEED]

A loopback UDP relay that counts datagrams and bytes (UDP payload, i.e.
DTLS records including CoAP) in each direction, per client address. Used by
tools/bench/federation.sh to measure what an update really costs on the
wire, and by tests/integration/lossy_link.sh to drop datagrams at random
(each direction independently, seeded). Writes STATS_FILE as JSON on
SIGTERM."""
import json
import random
import selectors
import signal
import socket
import sys

listen_port, target_port, stats_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
drop = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
rng = random.Random(int(sys.argv[5]) if len(sys.argv) > 5 else 1)
dropped = {"up": 0, "down": 0}
front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
front.bind(("127.0.0.1", listen_port))
sel = selectors.DefaultSelector()
sel.register(front, selectors.EVENT_READ, None)
upstream = {}  # client addr -> socket towards the aggregator
stats = {}     # client port -> counters
running = True


def stop(*_):
    global running
    running = False


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
while running:
    for key, _ in sel.select(timeout=0.2):
        sock, client = key.fileobj, key.data
        try:
            data, addr = sock.recvfrom(65536)
        except ConnectionRefusedError:  # the aggregator is not listening yet; the client retries
            continue
        if client is None:  # from a client
            s = upstream.get(addr)
            if s is None:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.connect(("127.0.0.1", target_port))
                upstream[addr] = s
                sel.register(s, selectors.EVENT_READ, addr)
            c = stats.setdefault(str(addr[1]), {"up_bytes": 0, "up_dgrams": 0, "down_bytes": 0, "down_dgrams": 0})
            c["up_bytes"] += len(data)
            c["up_dgrams"] += 1
            if rng.random() < drop:
                dropped["up"] += 1
                continue
            s.send(data)
        else:  # from the aggregator to `client`
            c = stats[str(client[1])]
            c["down_bytes"] += len(data)
            c["down_dgrams"] += 1
            if rng.random() < drop:
                dropped["down"] += 1
                continue
            front.sendto(data, client)
with open(stats_path, "w") as f:
    json.dump({"clients": stats, "dropped": dropped}, f)
