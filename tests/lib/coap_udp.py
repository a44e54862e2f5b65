"""CoAP over UDP messages (RFC 7252 section 3) for the plain-CoAP stand-in
aggregators of the integration tests (edge_scaffold_fake.py,
edge_hostile_round.py): parse one datagram, build one, encode a uint option.
Options are (number, bytes) pairs; parse returns
(type, code, message id, token, options, payload)."""
import struct


def parse(msg):
    typ, tkl = (msg[0] >> 4) & 3, msg[0] & 15
    code, mid = msg[1], struct.unpack_from(">H", msg, 2)[0]
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
    payload = msg[i + 1:] if i < len(msg) else b""
    return typ, code, mid, token, opts, payload


def uint(v):
    return v.to_bytes((v.bit_length() + 7) // 8, "big") if v else b""


def build(typ, code, mid, token, opts, payload=b""):
    out = bytearray([0x40 | (typ << 4) | len(token), code]) + struct.pack(">H", mid) + token
    last = 0
    for num, val in sorted(opts, key=lambda o: o[0]):
        d, l = num - last, len(val)
        last = num

        def ext(x):
            if x < 13:
                return x, b""
            if x < 269:
                return 13, bytes([x - 13])
            return 14, struct.pack(">H", x - 269)
        dn, de = ext(d)
        ln, le = ext(l)
        out += bytes([(dn << 4) | ln]) + de + le + val
    if payload:
        out += b"\xff" + payload
    return bytes(out)
