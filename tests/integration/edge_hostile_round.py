#!/usr/bin/env python3
"""A stand-in aggregator (plain CoAP/UDP, the edge's --insecure mode) that
answers /round in ways libcoap or the edge must not take at face value
(tests/integration/edge_hostile_round.sh; after review16's hostile_agg.py).

  edge_hostile_round.py PORT MODE SECONDS

MODE:
  round_big      GET /round: a 2.05 of 1,200 bytes without Block2 (more than
                 one CoAP message over UDP may carry for libcoap)
  observe_block  GET /round with Observe: state=waiting, then one notification
                 carrying Block2 block 0 with M=1 (a longer body); the next
                 GET /round answers state=finished
Prints "REQ round <observe?> -> <code>" per request served.
"""
import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from coap_udp import build, parse, uint  # noqa: E402

PORT, MODE, SECONDS = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
ROUND = (b"state=open\nround=1\nselected=1\ndeadline_ms=60000\nmodel=" + b"ab" * 32 +
         b"\nspec=softmax:784-10\nepochs=1\nlr=0.05\nbatch=32\nrun=" + bytes(range(16)).hex().encode() + b"\n")


CONTENT = (2 << 5) | 5


def main():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", PORT))
    sock.settimeout(0.1)
    deadline = time.time() + SECONDS
    registered = False
    while time.time() < deadline:
        try:
            msg, addr = sock.recvfrom(70000)
        except socket.timeout:
            continue
        typ, c, mid, token, opts, _ = parse(msg)
        if typ != 0 or c == 0:
            if typ == 0:
                sock.sendto(build(3, 0, mid, b"", []), addr)
            continue
        observe = any(n == 6 for n, _ in opts)
        print("REQ round %s -> 2.05" % ("observe" if observe else "get"), flush=True)
        if MODE == "round_big":
            sock.sendto(build(2, CONTENT, mid, token, [], ROUND + b"pad=" + b"x" * (1200 - len(ROUND) - 5) + b"\n"),
                        addr)
        elif observe and not registered:
            registered = True
            sock.sendto(build(2, CONTENT, mid, token, [(6, uint(1))], b"state=waiting\nround=1\n"), addr)
            time.sleep(0.2)
            block0 = (b"state=finished\n" + b"pad=" + b"y" * 1100 + b"\n")[:512]
            sock.sendto(build(1, CONTENT, 7, token, [(6, uint(2)), (23, uint((0 << 4) | 8 | 5)), (28, uint(1120))],
                              block0), addr)
        else:
            sock.sendto(build(2, CONTENT, mid, token, [], b"state=finished\n"), addr)


main()
