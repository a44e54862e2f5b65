#!/usr/bin/env python3
"""Reference RDP values for test_rdp.c (not run by make test: mpmath takes
minutes). RDP(alpha) of the sampled Gaussian = log(A)/(alpha-1) with
A - 1 = E_{z~N(0,s^2)}[(1+x)^alpha - 1 - alpha x], x = q (exp((2z-1)/(2s^2)) - 1)
(Mironov, Talwar, Zhang 2019), by mpmath's adaptive quadrature at 40 digits.
Usage: python3 tests/unit/rdp_reference.py  (prints the C table rows)."""
import mpmath as mp

mp.mp.dps = 40

CASES = [(0.4, 12, 58.75), (0.4, 12, 10.5), (0.01, 2.5, 1.5), (0.01, 2.5, 7.3),
         (0.1, 2, 5.5), (0.25, 0.5, 2.5), (0.25, 0.5, 11.5), (0.6, 0.8, 1.1),
         (0.9, 1.5, 33.3), (0.001, 50, 1.1), (0.05, 1.0, 62.5), (0.99, 0.3, 3.7),
         (0.5, 4.0, 20.25), (0.02, 0.7, 45.5)]


def rdp(q, s, a):
    q, s, a = mp.mpf(q), mp.mpf(s), mp.mpf(a)
    c = 1 / (2 * s * s)

    def f(z):
        x = q * mp.expm1((2 * z - 1) * c)
        return mp.npdf(z, 0, s) * ((1 + x) ** a - 1 - a * x)

    pts = sorted({-12 * s, -6 * s, mp.mpf(0), mp.mpf(0.5), s, 2 * s, a / 2, a, a + 6 * s,
                  a + 12 * s + 1})
    return mp.log1p(mp.quad(f, pts, maxdegree=10)) / (a - 1)


if __name__ == "__main__":
    for q, s, a in CASES:
        print("        {%r, %r, %r, %s}," % (q, s, a, mp.nstr(rdp(q, s, a), 17)), flush=True)
