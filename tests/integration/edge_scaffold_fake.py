#!/usr/bin/env python3
"""A scripted stand-in for fedge-aggregator, for edge_scaffold.sh.

Speaks plain CoAP over UDP (the edge's --insecure mode): GET /round, GET
/model and GET /control (Block2, ETag, 2.03), POST /update (Block1). It
plays four rounds and checks what the edge does in each:

  1  SCAFFOLD (control=c1) + FedProx; the update is accepted (2.04). The
     edge must send flags CONTROL and n_elems 2n; its committed c_i file must
     then hold exactly c_i + dc of that update (c_i started as zeros).
  2  SCAFFOLD with a new c2, but the first GET /control serves the stale c1:
     the edge must not train on it (no POST before a second GET /control
     that serves c2). The update is refused (4.00): the c_i file must stay.
  3  control=c2 again: GET /control carries c2's ETag and gets 2.03; the
     update is accepted and the file becomes c_i + dc.
  4  a plain round (no control=): n_elems n, no flag, the file unchanged.
  5  SCAFFOLD with a finite but implausible c (1e30 everywhere, a valid
     model file): the edge must fetch it and then neither train nor POST,
     the file unchanged (the round ends when the edge polls again).
  then state=finished.

With python3-cryptography the sealed updates are opened (the test knows the
device secret) and dc compared bit for bit; without it those two checks are
skipped with a message. Exit 0 when every check passed; failures are
printed one per line.
"""
import hashlib
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from coap_udp import build, parse, uint  # noqa: E402

PORT = int(sys.argv[1])
STATE_FILE = sys.argv[2]
KEYS_FILE = sys.argv[3]
DEVICE = sys.argv[4]
SPEC = "softmax:784-10"
N = 7850
RUN = bytes(range(16))
failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg, flush=True)


def model_file(params):
    spec = SPEC.encode()
    body = b"FMDL" + struct.pack("<II", 1, len(spec)) + spec + struct.pack("<Q", len(params))
    body += struct.pack("<%df" % len(params), *params)
    return body + hashlib.sha256(body).digest()


def parse_model_file(data):
    if data[-32:-24] == b"FEDGECV1":  # the run binding (edge/control.h)
        if data[-24:-8] != RUN:
            fail("state file bound to run %s, not the served %s" % (data[-24:-8].hex(), RUN.hex()))
        data = data[:-32]
    (sl,) = struct.unpack_from("<I", data, 8)
    off = 12 + sl
    (n,) = struct.unpack_from("<Q", data, off)
    assert hashlib.sha256(data[:-32]).digest() == data[-32:], "state file checksum"
    return list(struct.unpack_from("<%df" % n, data, off + 8))


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


MODEL = model_file([f32(((i * 37) % 101 - 50) * 1e-3) for i in range(N)])
C1 = model_file([f32(((i * 13) % 17 - 8) * 1e-3) for i in range(N)])
C2 = model_file([f32(((i * 7) % 23 - 11) * 2e-3) for i in range(N)])
CBAD = model_file([1e30] * N)
V = {k: v[-32:] for k, v in (("model", MODEL), ("c1", C1), ("c2", C2), ("cbad", CBAD))}

try:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    secret = None
    with open(KEYS_FILE) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[0] == DEVICE:
                secret = bytes.fromhex(parts[2])
    KEY = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"fedge-v1",
               info=b"fedge update key" + DEVICE.encode()).derive(secret)
except ImportError:
    KEY = None
    print("SKIP bit-exact dc checks: python3-cryptography is not installed", flush=True)


def open_update(frame):
    """(delta header fields, decrypted float payload or None)."""
    assert frame[:4] == b"FENV"
    aad_len, ct_len = struct.unpack_from("<II", frame, 36)
    aad = frame[44:44 + aad_len]
    hdr = aad[:64]
    h = {"encoding": hdr[6], "flags": hdr[7]}
    h["model_id"], h["round"], h["n_samples"], h["n_elems"] = struct.unpack_from("<IIII", hdr, 8)
    h["run"] = aad[64:80]
    values = None
    if KEY is not None:
        nonce = frame[24:36]
        ct = frame[44 + aad_len:44 + aad_len + ct_len + 16]
        plain = AESGCM(KEY).decrypt(nonce, ct, frame[:44 + aad_len])
        values = list(struct.unpack("<%df" % h["n_elems"], plain))
    return h, values


# ---- the rounds ----
ROUNDS = {
    1: {"control": "c1", "prox_mu": "0.01", "reply": 204},
    2: {"control": "c2", "stale_first": True, "reply": 400},
    3: {"control": "c2", "reply": 204},
    4: {"reply": 204},
    5: {"control": "cbad", "end_on_poll": True, "reply": 204},
}
rnd = 1
finished_at = None
events = []            # (round, what)
snapshots = {}         # round -> c_i file params after that round's answer (None: absent)
updates = {}           # round -> (header, values)
control_gets = {r: 0 for r in ROUNDS}
etag_hits = []         # (round, path)
pending_snapshot = None
upload = {}


def snapshot():
    try:
        with open(STATE_FILE, "rb") as f:
            return parse_model_file(f.read())
    except FileNotFoundError:
        return None


def round_body():
    if rnd not in ROUNDS:
        return b"state=finished\n"
    r = ROUNDS[rnd]
    lines = ["state=open", "round=%d" % rnd, "selected=1", "deadline_ms=60000",
             "model=" + V["model"].hex(), "spec=" + SPEC, "epochs=1", "lr=0.05", "batch=32",
             "run=" + RUN.hex()]
    if "prox_mu" in r:
        lines.append("prox_mu=" + r["prox_mu"])
    if "control" in r:
        lines.append("control=" + V[r["control"]].hex())
    return ("\n".join(lines) + "\n").encode()


# ---- CoAP ----
def opt(opts, number):
    for n, v in opts:
        if n == number:
            return v
    return None


def code(c):
    return ((c // 100) << 5) | (c % 100)


def serve_blocks(opts, body, etag):
    b2 = opt(opts, 23)
    b2 = int.from_bytes(b2, "big") if b2 is not None else 6
    num, szx = b2 >> 4, min(b2 & 7, 6)
    bs = 16 << szx
    chunk = body[num * bs:(num + 1) * bs]
    more = 1 if (num + 1) * bs < len(body) else 0
    o = [(4, etag), (23, uint((num << 4) | (more << 3) | szx)), (28, uint(len(body)))]
    return code(205), o, chunk


def handle(typ, c, opts, payload):
    global rnd, pending_snapshot, finished_at
    path = b"/".join(v for n, v in opts if n == 11).decode()
    if path == "round":
        if pending_snapshot is not None:
            snapshots[pending_snapshot] = snapshot()
            pending_snapshot = None
        if rnd in ROUNDS and ROUNDS[rnd].get("end_on_poll") and control_gets[rnd] >= 1:
            time.sleep(0.3)  # a POST would have come by now; the next poll ends the round
            snapshots[rnd] = snapshot()
            rnd += 1
        if rnd not in ROUNDS and finished_at is None:
            finished_at = time.time()
        return code(205), [], round_body()
    if path in ("model", "control"):
        if rnd not in ROUNDS:
            return code(503), [], b"no open round"
        r = ROUNDS[rnd]
        if path == "model":
            body, version = MODEL, V["model"]
        else:
            first = opt(opts, 23) is None or int.from_bytes(opt(opts, 23), "big") >> 4 == 0
            if first:
                control_gets[rnd] += 1
                events.append((rnd, "control"))
            name = r.get("control")
            if name is None:
                return code(404), [], b"not a SCAFFOLD round"
            if r.get("stale_first") and control_gets[rnd] == 1:
                name = "c1"
            body, version = {"c1": C1, "c2": C2, "cbad": CBAD}[name], V[name]
        etag = version[:8]
        req_etag = opt(opts, 4)
        if req_etag is not None and req_etag == etag:
            etag_hits.append((rnd, path))
            return code(203), [(4, etag)], b""
        return serve_blocks(opts, body, etag)
    if path == "update":
        b1 = opt(opts, 27)
        if b1 is None:
            return code(400), [], b"expected Block1"
        b1 = int.from_bytes(b1, "big")
        num, more, szx = b1 >> 4, (b1 >> 3) & 1, b1 & 7
        upload[num] = payload
        if more:
            return code(231), [(27, uint(b1))], b""
        frame = b"".join(upload[i] for i in range(num + 1))
        upload.clear()
        if rnd not in ROUNDS:
            return code(503), [], b"no open round"
        h, values = open_update(frame)
        events.append((rnd, "post"))
        updates[rnd] = (h, values)
        reply = ROUNDS[rnd]["reply"]
        pending_snapshot = rnd
        rnd += 1
        text = b"accepted" if reply == 204 else b"refused by the test"
        return code(reply), [(27, uint(b1))], text
    return code(404), [], b"no such resource"


def main():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", PORT))
    sock.settimeout(0.2)
    seen = {}
    deadline = time.time() + float(os.environ.get("FAKE_TIMEOUT_S", "150"))
    while time.time() < deadline:
        if finished_at is not None and time.time() - finished_at > 1.0:
            break
        try:
            msg, addr = sock.recvfrom(70000)
        except socket.timeout:
            continue
        typ, c, mid, token, opts, payload = parse(msg)
        if typ != 0:           # ACK / RST / NON: nothing to answer
            continue
        if c == 0:             # CoAP ping
            sock.sendto(build(3, 0, mid, b"", []), addr)
            continue
        key = (addr, mid)
        if key not in seen:    # a retransmission gets the same answer
            rc, o, p = handle(typ, c, opts, payload)
            seen[key] = build(2, rc, mid, token, o, p)
        sock.sendto(seen[key], addr)
    else:
        fail("the edge did not reach the end of the script (at round %d)" % rnd)
    check()
    for f in failures:
        print(f, file=sys.stderr)
    sys.exit(1 if failures else 0)


def check():
    for r in (1, 2, 3, 4):
        if r not in updates:
            fail("round %d: no update" % r)
            return
    h1, dc1 = updates[1]
    if not h1["flags"] & 2 or h1["n_elems"] != 2 * N or h1["round"] != 1:
        fail("round 1: flags %#x n_elems %d round %d, want CONTROL, %d, 1"
             % (h1["flags"], h1["n_elems"], h1["round"], 2 * N))
    s1 = snapshots.get(1)
    if s1 is None:
        fail("round 1 accepted but no c_i file")
    elif dc1 is not None and s1 != [f32(0.0 + x) for x in dc1[N:]]:
        fail("round 1: committed c_i is not 0 + dc of the update")
    # round 2: stale c served first -> no POST until the right c came
    ev2 = [w for r, w in events if r == 2]
    if ev2 != ["control", "control", "post"]:
        fail("round 2: events %s, want a refetch of /control before the one POST" % ev2)
    if snapshots.get(2) != s1:
        fail("round 2 refused but the c_i file changed")
    # round 3: ETag hit on /control, accepted, file = s1 + dc3
    if (3, "control") not in etag_hits:
        fail("round 3: GET /control without the cached c's ETag (hits %s)" % etag_hits)
    h3, dc3 = updates[3]
    s3 = snapshots.get(3)
    if s3 is None or s3 == s1:
        fail("round 3 accepted but the c_i file did not change")
    elif dc3 is not None and s1 is not None and s3 != [f32(a + b) for a, b in zip(s1, dc3[N:])]:
        fail("round 3: committed c_i is not c_i + dc of the update")
    # round 4: plain
    h4, _ = updates[4]
    if h4["flags"] & 2 or h4["n_elems"] != N:
        fail("round 4 (no control=): flags %#x n_elems %d, want plain %d"
             % (h4["flags"], h4["n_elems"], N))
    if snapshots.get(4) != s3:
        fail("round 4 (no SCAFFOLD) changed the c_i file")
    if control_gets[4]:
        fail("round 4 fetched /control")
    # round 5: implausible c fetched, nothing sent, the file as it was
    if control_gets[5] < 1:
        fail("round 5: the edge did not fetch /control")
    if 5 in updates:
        fail("round 5: the edge sent an update trained on an implausible c")
    if snapshots.get(5) != s3:
        fail("round 5: the c_i file changed")
    print("fake: rounds 1-5 checked (events %s, etag hits %s)" % (events, etag_hits), flush=True)


main()
