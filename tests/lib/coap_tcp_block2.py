#!/usr/bin/env python3
"""Checks the first 2.05 carrying Block2 in a stream of CoAP-over-TCP
messages (RFC 8323 framing, RFC 7959 Block2) as written by openssl s_client.

  coap_tcp_block2.py FILE SZX_MIN SZX_MAX SIZE_ABOVE SIZE_MAX

Exits 0 when its SZX is in [SZX_MIN, SZX_MAX] and the message's size (code,
options, payload and token) is in (SIZE_ABOVE, SIZE_MAX]; prints what it saw.
"""
import sys

path, szx_min, szx_max, size_above, size_max = sys.argv[1], *map(int, sys.argv[2:6])
b = open(path, "rb").read()
i = 0
while i < len(b):
    n, tkl, i = b[i] >> 4, b[i] & 15, i + 1
    ext = {13: (1, 13), 14: (2, 269), 15: (4, 65805)}.get(n)
    if ext:
        n, i = int.from_bytes(b[i:i + ext[0]], "big") + ext[1], i + ext[0]
    code, body = b[i], b[i + 1 + tkl:i + 1 + tkl + n]
    size, i = 1 + len(body), i + 1 + tkl + n
    if code != 0x45:
        continue
    opt, j = 0, 0
    while j < len(body) and body[j] != 0xff:
        d, l, j = body[j] >> 4, body[j] & 15, j + 1
        if d == 13: d, j = body[j] + 13, j + 1
        if l == 13: l, j = body[j] + 13, j + 1
        opt += d
        if opt == 23:
            szx = body[j + l - 1] & 7 if l else 0
            print(f"2.05 with Block2 SZX {szx} in a {size + tkl}-byte message")
            sys.exit(0 if szx_min <= szx <= szx_max and size_above < size + tkl <= size_max else 1)
        j += l
sys.exit(f"no 2.05 with Block2 in the answer ({len(b)} bytes)")
