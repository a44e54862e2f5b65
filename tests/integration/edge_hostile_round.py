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
import socket
import struct
import sys
import time

PORT, MODE, SECONDS = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
ROUND = (b"state=open\nround=1\nselected=1\ndeadline_ms=60000\nmodel=" + b"ab" * 32 +
         b"\nspec=softmax:784-10\nepochs=1\nlr=0.05\nbatch=32\nrun=" + bytes(range(16)).hex().encode() + b"\n")


def parse(msg):
    tkl = msg[0] & 15
    typ, c, mid = (msg[0] >> 4) & 3, msg[1], struct.unpack_from(">H", msg, 2)[0]
    token = msg[4:4 + tkl]
    i, num, opts = 4 + tkl, 0, []
    while i < len(msg) and msg[i] != 0xFF:
        d, l = msg[i] >> 4, msg[i] & 15
        i += 1
        if d == 13:
            d = msg[i] + 13; i += 1
        elif d == 14:
            d = struct.unpack_from(">H", msg, i)[0] + 269; i += 2
        if l == 13:
            l = msg[i] + 13; i += 1
        elif l == 14:
            l = struct.unpack_from(">H", msg, i)[0] + 269; i += 2
        num += d
        opts.append((num, msg[i:i + l]))
        i += l
    return typ, c, mid, token, opts


def uint(v):
    return v.to_bytes((v.bit_length() + 7) // 8, "big") if v else b""


def build(typ, c, mid, token, opts, payload=b""):
    out = bytearray([0x40 | (typ << 4) | len(token), c]) + struct.pack(">H", mid) + token
    last = 0
    for num, val in sorted(opts, key=lambda o: o[0]):
        d, l = num - last, len(val)
        last = num
        assert d < 269 and l < 13
        if d < 13:
            out += bytes([(d << 4) | l])
        else:
            out += bytes([(13 << 4) | l, d - 13])
        out += val
    if payload:
        out += b"\xff" + payload
    return bytes(out)


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
        typ, c, mid, token, opts = parse(msg)
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
