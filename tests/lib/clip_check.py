#!/usr/bin/env python3
"""clip_check.py — for tests/integration/clip_bound.sh. Modes:
  norms DB: each stored body's norm (decoded here, summed in fedge_l2_norm's
    eight lanes) must equal the row's norm column bit for bit; prints
    'device norm' lines.
  clips RUN1.db RUN2.db BOUND: run 2's decision is 'clipped' exactly when run
    1's norm > BOUND; a clipped body is fp32, run 1's decoded body times ONE
    float factor f <= BOUND / norm, and its norm (the same lanes) is <= BOUND:
    DP's sensitivity. Prints how far float(BOUND / norm) alone would land."""
import math, sqlite3, struct, sys

HDR = 64

def f32(x):
    return struct.unpack('<f', struct.pack('<f', x))[0]

def decode(blob):
    enc = blob[6]
    n, block = struct.unpack_from('<II', blob, 20)
    p = blob[HDR:]
    if enc == 0:
        return list(struct.unpack_from('<%df' % n, p)), enc
    assert enc == 3, 'encoding %d' % enc
    out, off = [], 0
    for st in range(0, n, block):
        ln = min(block, n - st)
        sc = struct.unpack_from('<f', p, off)[0]
        q = struct.unpack_from('<%db' % ln, p, off + 4)
        out += [f32(v * sc) for v in q]
        off += 4 + ln
    return out, enc

def f32_step(x, k):
    """The float k ulps from positive float x."""
    return struct.unpack('<f', struct.pack('<I', struct.unpack('<I', struct.pack('<f', x))[0] + k))[0]

def lanes_norm(x):
    acc = [0.0] * 8
    for g, v in enumerate(x):
        acc[g % 8] += v * v
    s = 0.0
    for a in acc:
        s += a
    return math.sqrt(s)

def rows(db):
    c = sqlite3.connect(db)
    return {d: (n, dec, b) for d, n, dec, b in c.execute('SELECT device, norm, decision, delta FROM updates')}

bad = 0
if sys.argv[1] == 'norms':
    for d, (n, dec, b) in sorted(rows(sys.argv[2]).items()):
        m = lanes_norm(decode(b)[0])
        if m != n:
            print('FAIL: %s stored norm %r, its body\'s norm %r' % (d, n, m)); bad += 1
        print(d, repr(n))
else:
    r1, r2, bound = rows(sys.argv[2]), rows(sys.argv[3]), float(sys.argv[4])
    clipped = 0
    for d in sorted(r1):
        n, _, b1 = r1[d]
        n2, dec2, b2 = r2[d]
        want = 'clipped' if n > bound else 'accepted'
        if n2 != n or dec2 != want:
            print('FAIL: %s norm %r (run 1 %r), bound %r: %s, expected %s' % (d, n2, n, bound, dec2, want)); bad += 1
            continue
        if want != 'clipped':
            print('%s: norm %r <= %r, accepted as sent' % (d, n, bound))
            if b2 != b1:
                print('FAIL: %s body changed' % d); bad += 1
            continue
        clipped += 1
        x, _ = decode(b1)
        y, enc2 = decode(b2)
        i = max(range(len(x)), key=lambda k: abs(x[k]))
        f0 = f32(y[i] / x[i]) if x[i] else 0.0
        naive = f32(bound / n)
        f, ok = f0, False
        for f in (f0, f32_step(f0, -1), f32_step(f0, 1), f32_step(f0, -2), f32_step(f0, 2)):
            if enc2 == 0 and all(f32(v * f) == w for v, w in zip(x, y)):
                ok = True
                break
        got = lanes_norm(y)
        print('%s: norm %r > %r clipped, factor %r (float(bound/norm) %r, whose norm would be %r), norm now %r'
              % (d, n, bound, f, naive, lanes_norm([f32(v * naive) for v in x]), got))
        if not ok:
            print('FAIL: %s clipped body is not run 1\'s times one float factor' % d); bad += 1
        if f > bound / n:
            print('FAIL: %s factor %r above bound/norm %r' % (d, f, bound / n)); bad += 1
        if got > bound:
            print('FAIL: %s clipped norm %r is over the bound %r' % (d, got, bound)); bad += 1
    if clipped == 0:
        print('FAIL: nothing was clipped'); bad += 1
sys.exit(1 if bad else 0)
