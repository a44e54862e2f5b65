#!/usr/bin/env python3
"""Authenticated CoAP-over-TLS/TCP peers (RFC 8323) that send BERT Block1
blocks of POST /update as they are told, for tests/integration/tcp_upload_limits.sh.

TLS-PSK is openssl s_client's (one per peer); this script frames CoAP over
TCP on its stdin/stdout. Each step prints one line; a failed expectation
exits non-zero with the reason.

  tcp_bert_peer.py PORT AGG_PID PSKS_FILE   (PSKS_FILE: "device hexkey" lines)

RSS_SLACK_KB (default 4096): how far the aggregator's peak RSS may rise
while 17 MiB of refused BERT blocks arrive; 0: not checked (an ASan build
keeps freed messages in its quarantine).
"""
import os
import select
import subprocess
import sys
import time

PORT, AGG_PID, PSKS = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
KEYS = dict(line.split() for line in open(PSKS) if line.strip())
MAX_BODY = 31572  # softmax:784-10's largest update (the aggregator's max_update_bytes)


def fail(why):
    print("FAIL: " + why, flush=True)
    sys.exit(1)


def vm(key):
    with open(f"/proc/{AGG_PID}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    fail(f"no {key} for the aggregator (pid {AGG_PID}): has it died?")


def uint(v):
    b = v.to_bytes(4, "big").lstrip(b"\0")
    return b


def ext(n):
    if n < 13:
        return n, b""
    if n < 269:
        return 13, bytes([n - 13])
    return 14, (n - 269).to_bytes(2, "big")


def options(opts):
    out, last = b"", 0
    for num, val in sorted(opts, key=lambda o: o[0]):
        d, dx = ext(num - last)
        l, lx = ext(len(val))
        out += bytes([d << 4 | l]) + dx + lx + val
        last = num
    return out


def frame(code, token, opts, payload=b""):
    body = options(opts) + (b"\xff" + payload if payload else b"")
    n = len(body)
    if n < 13:
        head = bytes([n << 4 | len(token)])
    elif n < 269:
        head = bytes([13 << 4 | len(token), n - 13])
    elif n < 65805:
        head = bytes([14 << 4 | len(token)]) + (n - 269).to_bytes(2, "big")
    else:
        head = bytes([15 << 4 | len(token)]) + (n - 65805).to_bytes(4, "big")
    return head + bytes([code]) + token + body


def parse(buf):
    """One message from buf: (code, options, payload, rest) or None."""
    if len(buf) < 2:
        return None
    ln, tkl = buf[0] >> 4, buf[0] & 15
    i = 1
    if ln == 13:
        if len(buf) < 2 + 1:
            return None
        ln, i = buf[1] + 13, 2
    elif ln == 14:
        if len(buf) < 3 + 1:
            return None
        ln, i = int.from_bytes(buf[1:3], "big") + 269, 3
    elif ln == 15:
        if len(buf) < 5 + 1:
            return None
        ln, i = int.from_bytes(buf[1:5], "big") + 65805, 5
    end = i + 1 + tkl + ln
    if len(buf) < end:
        return None
    code = buf[i]
    body = buf[i + 1 + tkl:end]
    opts, num, j, payload = {}, 0, 0, b""
    while j < len(body):
        if body[j] == 0xFF:
            payload = body[j + 1:]
            break
        d, l = body[j] >> 4, body[j] & 15
        j += 1
        for which in (0, 1):
            v = d if which == 0 else l
            if v == 13:
                v, j = body[j] + 13, j + 1
            elif v == 14:
                v, j = int.from_bytes(body[j:j + 2], "big") + 269, j + 2
            if which == 0:
                d = v
            else:
                l = v
        num += d
        opts[num] = body[j:j + l]
        j += l
    return code, opts, payload, buf[end:]


def code_str(c):
    return f"{c >> 5}.{c & 31:02d}"


class Peer:
    def __init__(self, device):
        self.device, self.buf, self.token = device, b"", 0
        self.p = subprocess.Popen(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{PORT}", "-psk_identity", device,
             "-psk", KEYS[device], "-tls1_2", "-quiet"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        os.set_blocking(self.p.stdout.fileno(), False)
        # CSM: Max-Message-Size (2) 1 MiB and Block-Wise-Transfer (4): BERT
        self.send(frame(0xE1, b"", [(2, uint(1 << 20)), (4, b"")]))
        code, _, _ = self.recv()
        if code != 0xE1:
            fail(f"{device}: expected the server's CSM, got {code_str(code)}")

    def send(self, data):
        self.p.stdin.write(data)
        self.p.stdin.flush()

    def recv(self, timeout=10.0):
        end = time.monotonic() + timeout
        while True:
            m = parse(self.buf)
            if m:
                self.buf = m[3]
                return m[0], m[1], m[2]
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.p.stdout], [], [], left)[0]:
                fail(f"{self.device}: no answer within {timeout} s")
            chunk = self.p.stdout.read(65536)
            if not chunk:
                fail(f"{self.device}: the server closed the connection")
            self.buf += chunk

    def block(self, num, payload, more=True, size1=None):
        """POST /update with Block1 NUM (1024-byte units), SZX 7 (BERT)."""
        self.token += 1
        opts = [(11, b"update"), (27, uint(num << 4 | (8 if more else 0) | 7) or b"")]
        if size1 is not None:
            opts.append((60, uint(size1) or b""))
        self.send(frame(0x02, self.token.to_bytes(2, "big"), opts, payload))

    def answer(self):
        code, opts, payload = self.recv()
        age = opts.get(14)
        return code_str(code), (int.from_bytes(age, "big") if age is not None else None), payload.decode(errors="replace")

    def close(self):
        # s_client -quiet ignores the end of its input: it is stopped, the
        # connection closes without a close_notify
        self.p.terminate()
        self.p.wait(timeout=10)
        self.p.stdin.close()


def expect(peer, what, code, text=""):
    got, age, msg = peer.answer()
    if got != code or text not in msg:
        fail(f"{peer.device} {what}: expected {code} {text!r}, got {got} {msg!r}")
    if code == "5.03" and not age:
        fail(f"{peer.device} {what}: 5.03 without Max-Age")
    print(f"{peer.device} {what}: {got} {msg}".rstrip(), flush=True)


# 1. streams of BERT blocks far past max_update_bytes: 16 MiB of 64 KiB blocks
#    declaring their Size1 (libcoap 4.3.1 itself would allocate it and keep
#    every block), then 1 MiB without Size1: 4.13 at the first block, or at
#    the block that passes the limit, and for every block after it (the peer
#    carries on regardless); nothing is kept
hwm0 = vm("VmHWM")
p = Peer("dev-001")
chunk = bytes(65536)
n = 256
for i in range(n):
    p.block(i * 64, chunk, size1=n * 65536)
expect(p, "BERT stream, block 0 (64 KiB, Size1 16 MiB)", "4.13", f"{n * 65536} bytes exceeds the limit of {MAX_BODY}")
for i in range(1, n):
    got, _, msg = p.answer()
    if got != "4.13":
        fail(f"dev-001 BERT stream, block {i * 64}: expected 4.13, got {got} {msg!r}")
print(f"BERT stream of {n * 64} KiB (Size1): {n} x 4.13", flush=True)
for i in range(16):
    p.block(i * 64, chunk)
expect(p, "BERT stream, block 0 (64 KiB, no Size1)", "4.13", f"exceeds the limit of {MAX_BODY}")
for i in range(1, 16):
    got, _, msg = p.answer()
    if got != "4.13":
        fail(f"dev-001 BERT stream without Size1, block {i * 64}: expected 4.13, got {got} {msg!r}")
hwm1 = vm("VmHWM")
print(f"BERT streams of 17 MiB: 4.13 for every block; VmHWM {hwm0} -> {hwm1} kB", flush=True)
slack = int(os.environ.get("RSS_SLACK_KB", "4096"))
if slack == 0:
    print("peak RSS not checked (RSS_SLACK_KB=0: an ASan build)", flush=True)
elif hwm1 - hwm0 > slack:
    fail(f"17 MiB of BERT blocks raised the aggregator's peak RSS from {hwm0} to {hwm1} kB")
p.close()

# a declared Size1 past the limit on a 15 KiB block: 4.13 at once
p = Peer("dev-001")
p.block(0, bytes(15 * 1024), size1=400000)
expect(p, "BERT block 0 with Size1 400000", "4.13", "400000 bytes exceeds")
p.close()

# 2. partial uploads past the caps (1 per device, 3 in all): 5.03 with Max-Age
held = {}
for d in ("dev-001", "dev-002", "dev-003"):
    held[d] = Peer(d)
    held[d].block(0, bytes(8 * 1024), size1=30000)
    expect(held[d], "partial BERT upload, block 0", "2.31")
    held[d].block(8, bytes(8 * 1024), size1=30000)
    expect(held[d], "partial BERT upload, block 8", "2.31")
again = Peer("dev-001")
again.block(0, bytes(8 * 1024), size1=30000)
expect(again, "second partial BERT upload", "5.03", "uploads of this device in progress")
fourth = Peer("dev-004")
fourth.block(0, bytes(8 * 1024), size1=30000)
expect(fourth, "fourth partial BERT upload", "5.03", "3 uploads in progress")

# 3. a closed connection's partial upload is freed at once: its room serves
#    another device
held["dev-002"].close()
time.sleep(0.3)
fourth.block(0, bytes(8 * 1024), size1=30000)
expect(fourth, "partial BERT upload after dev-002 closed", "2.31")
# a whole body of BERT blocks: reassembled by upload.c, then the update path
# answers it (zeros are no update envelope: 4.00)
again.block(0, bytes(15 * 1024))
expect(again, "a new upload on a second connection of dev-001", "5.03", "uploads of this device in progress")
held["dev-001"].block(16, bytes(8 * 1024), size1=30000)
expect(held["dev-001"], "partial BERT upload, block 16", "2.31")
held["dev-001"].block(24, bytes(30000 - 24 * 1024), more=False, size1=30000)
expect(held["dev-001"], "final BERT block (30000 bytes in all)", "4.00", "malformed update")
print("held", flush=True)
# the bash side checks /status and the database while these are held
sys.stdin.readline()
for q in (held["dev-001"], held["dev-003"], again, fourth):
    q.close()
print("done", flush=True)
