#!/usr/bin/env bash
# The metrics port under a slowloris: 40 connections from 127.0.0.2..6 (8
# per address, the per-address cap; 32 fill the port) each dripping one
# header byte a second, which the 10 s idle timeout never ends. A request
# must be read and answered within 5 s of its connection's start
# (aggregator/metrics_http.c, REQUEST_MAX_S): the drips are cut off and
# /healthz from 127.0.0.1 answers again within a few seconds.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh
fed_setup 1
FED_PORT=$(fed_free_port)
MPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
fed_start_aggregator --model-spec softmax:784-10 --test-data fashion-mnist --rounds 100 \
    --round-timeout-s 2 --metrics-listen "127.0.0.1:$MPORT"
fed_wait_for "python3 -c 'import urllib.request as u; u.urlopen(\"http://127.0.0.1:$MPORT/healthz\", timeout=2)' 2>/dev/null" 20
python3 - "$MPORT" <<'PY' || fed_fail "/healthz stayed unreachable under a slowloris"
import socket, sys, time
port = int(sys.argv[1])
conns = []
for a in range(2, 7):
    for i in range(8):
        try:
            s = socket.socket(); s.bind(("127.0.0.%d" % a, 0)); s.settimeout(1)
            s.connect(("127.0.0.1", port)); s.sendall(b"GET /metrics HTTP/1.1\r\n"); conns.append(s)
        except OSError:
            pass
def probe():
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        d = s.recv(100); s.close(); return d.split(b"\r\n")[0].decode() or "(closed)"
    except Exception as e:
        return repr(e)
t0 = time.time(); first_ok = None; blocked_early = 0
while time.time() - t0 < 11:
    for s in conns:
        try: s.sendall(b"X")
        except OSError: pass
    r = probe()
    dt = time.time() - t0
    print("%4.1f s  /healthz: %s" % (dt, r))
    if " 200 " in r and first_ok is None:
        first_ok = dt
        break
    blocked_early += dt < 3
    time.sleep(max(0, 1 - (time.time() - t0 - dt)))
print("slow connections: %d; first 200 after %s s" % (len(conns), first_ok))
# the slowloris must have filled the port first (else the test proves nothing)
sys.exit(0 if first_ok is not None and blocked_early > 0 else 1)
PY
echo "PASS: metrics_slowloris"
