#!/usr/bin/env python3
"""audit_html_check.py DIR DB: the checks of audit_html.sh on what it wrote
to DIR (report.html, report.json, shot.png, dom.html, the DOMs of the loss
and hostile copies) and the run's database DB. Python's standard library only. Exit 0
when every check holds; otherwise each failure is printed."""
import json
import sqlite3
import struct
import sys
import zlib
from collections import Counter, defaultdict
from html.parser import HTMLParser

D, DB = sys.argv[1], sys.argv[2]
failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
    return cond


def png_pixels(path):
    """(width, height, rows of RGB(A) tuples) of an 8-bit RGB/RGBA PNG."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, w = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if zlib.crc32(kind + body) != struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]:
            raise ValueError("bad CRC in " + kind.decode())
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or ctype not in (2, 6) or interlace:
                raise ValueError("unsupported PNG layout %d/%d/%d" % (depth, ctype, interlace))
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride, rows, prev = w * bpp, [], bytearray(w * bpp)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, bpp, rows


def check_png(path):
    try:
        w, h, bpp, rows = png_pixels(path)
    except (ValueError, zlib.error, struct.error) as e:
        check(False, "%s does not decode: %s" % (path, e))
        return
    colours, ink = Counter(), 0
    for row in rows[::3]:
        for x in range(0, w * bpp, bpp * 3):
            px = row[x:x + 3]
            colours[px] += 1
            ink += px != b"\xff\xff\xff"
    check(w >= 800 and h >= 1000, "%s is %dx%d" % (path, w, h))
    check(len(colours) >= 20, "%s has %d distinct colours: a blank page?" % (path, len(colours)))
    check(ink > 0.03 * sum(colours.values()), "%s is almost all white" % path)
    # the chart colours: blue (accuracy, bars), green (samples)
    near = lambda rgb: sum(n for c, n in colours.items() if all(abs(c[i] - rgb[i]) < 24 for i in range(3)))
    check(near((0x1f, 0x77, 0xb4)) > 20, "%s: no accuracy-line blue drawn" % path)
    check(near((0x2c, 0xa0, 0x2c)) > 20, "%s: no bar green drawn" % path)


class Dom(HTMLParser):
    """Rows of each table with an id (their attributes), tags seen, text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables, self.cur, self.tags, self.text, self.svg_ids = defaultdict(list), None, Counter(), [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags[tag] += 1
        if tag == "table":
            self.cur = a.get("id")
            if self.cur:
                self.tables[self.cur + "@"] = [a]
        elif tag == "tr" and self.cur and any(k.startswith("data-") for k in a):
            self.tables[self.cur].append(a)
        elif tag == "svg" and a.get("id"):
            self.svg_ids.append(a["id"])

    def handle_endtag(self, tag):
        if tag == "table":
            self.cur = None

    def handle_data(self, data):
        self.text.append(data)


def dom(path):
    d = Dom()
    d.feed(open(path, encoding="utf-8").read())
    return d


def num(s):
    return None if s is None else float(s)


# --- the page is self-contained
raw = open(D + "/report.html", encoding="utf-8").read()
low = raw.lower()
check("<script" not in low, "the page has a script")
check("<link" not in low and "@import" not in low and "src=" not in low, "the page loads something")
check(low.count("http") == low.count("http://www.w3.org/2000/svg"), "the page names a URL")

check_png(D + "/shot.png")
rep = json.load(open(D + "/report.json"))
d = dom(D + "/dom.html")
for svg in ("chart-accuracy", "chart-epsilon", "chart-epsilon-devices", "chart-devices",
            "chart-regions", "chart-decisions", "chart-lineage"):
    check(svg in d.svg_ids, "chart %s missing from the rendered page" % svg)

# accuracy per round: the lineage's models (round 0: the initial model)
want = {m["round"]: m["accuracy"] for m in rep["lineage"]["models"]}
got = {int(r["data-round"]): num(r.get("data-accuracy")) for r in d.tables["accuracy-data"]}
check(len(want) == 4, "3 aggregates and the initial model expected in the lineage: %s" % want)
check(all(got.get(k) == v for k, v in want.items()), "accuracy per round: page %s, JSON %s" % (got, want))

# train loss: absent columns say "not reported"
con = sqlite3.connect(DB)
cols = [r[1] for r in con.execute("PRAGMA table_info(updates)")]
if "train_loss" not in cols:
    check(any("not reported" in t for t in d.text), "no 'not reported' for the missing train loss")
    check(all("data-train-loss" not in r for r in d.tables["accuracy-data"]), "a train loss without the column")

# updates by decision; rejected ones by rule
summ = {r["item"]: r["value"] for r in rep["summary"]}
by_dec, rej_rule = Counter(), Counter()
for r in d.tables["decisions-data"]:
    if r["data-source"] == "update":
        by_dec[r["data-decision"]] += int(r["data-count"])
        if r["data-decision"] == "rejected":
            rej_rule[r["data-rule"]] += int(r["data-count"])
for dec in ("accepted", "clipped", "rejected"):
    check(by_dec[dec] == summ["updates " + dec], "updates %s: page %d, JSON %s" % (dec, by_dec[dec], summ["updates " + dec]))
want_rule = Counter(x["rule"] for x in rep["decisions"] if x["source"] == "update")
check(rej_rule == want_rule, "rejected by rule: page %s, JSON %s" % (rej_rule, want_rule))
check(by_dec["accepted"] + by_dec["clipped"] == 9, "9 updates expected to enter aggregates: %s" % by_dec)

# contributions per device: the lineage's contributions (every round closed)
want_c = defaultdict(lambda: [0, 0])
for c in rep["lineage"]["contributions"]:
    want_c[c["device"]][0] += 1
    want_c[c["device"]][1] += c["n_samples"]
got_c = {r["data-device"]: [int(r["data-updates"]), int(r["data-samples"])] for r in d.tables["contrib-devices"]}
check(got_c == dict(want_c), "contributions per device: page %s, JSON %s" % (got_c, dict(want_c)))
reg = {r["data-region"]: int(r["data-samples"]) for r in d.tables["contrib-regions"]}
check(reg == {"eu": sum(v[1] for v in want_c.values())}, "contributions per region: %s" % reg)

# epsilon: the run's total and budget, each device's
priv = rep["privacy"]
eps_rows = d.tables["epsilon-data"]
check(len(eps_rows) == 3, "3 DP rounds expected on the epsilon chart: %d" % len(eps_rows))
if eps_rows:
    check(num(eps_rows[-1].get("data-epsilon")) == priv["global"]["epsilon_spent"],
          "epsilon spent: page %s, JSON %s" % (eps_rows[-1].get("data-epsilon"), priv["global"]["epsilon_spent"]))
    e = [num(r["data-epsilon"]) for r in eps_rows]
    check(e == sorted(e) and e[0] > 0, "epsilon should grow from round to round: %s" % e)
head = d.tables["epsilon-data@"][0] if d.tables.get("epsilon-data@") else {}
check(num(head.get("data-budget")) == priv["policy"]["epsilon_budget"], "the budget: %s" % head)
check(num(head.get("data-device-budget")) == priv["policy"]["device_epsilon_budget"], "the device budget: %s" % head)
want_e = {x["device"]: x["epsilon"] for x in priv["devices"] if x["dp_rounds"]}
got_e = {r["data-device"]: num(r.get("data-epsilon")) for r in d.tables["epsilon-devices"]}
check(got_e == want_e, "epsilon per device: page %s, JSON %s" % (got_e, want_e))
if eps_rows:
    check(num(eps_rows[-1]["data-device-max"]) == max(want_e.values()), "device max epsilon")

# the lineage, newest first
lv = [r["data-version"] for r in d.tables["lineage-data"]]
check(lv == [m["version"] for m in rep["lineage"]["models"]], "lineage versions: %s" % lv)

# the keys ledger: the JSON report's keys_changes, row by row (the start's
# initial set: the 3 devices added)
def keys_rows(dm):
    return [{k[5:].replace("-", "_"): v for k, v in r.items() if k.startswith("data-")} for r in dm.tables["keys-data"]]


def keys_json(j):
    return [{k: str(v) for k, v in x.items() if v is not None} for x in j["keys_changes"]]


check(keys_rows(d) == keys_json(rep), "keys ledger: page %s, JSON %s" % (keys_rows(d), keys_json(rep)))
check(sorted((x["device"], x["change"], x["source"]) for x in keys_json(rep)) ==
      [("dev-00%d" % i, "added", "startup") for i in (1, 2, 3)], "keys ledger: %s" % keys_json(rep))

# --- train loss charted from the columns (the loss copy)
ld = dom(D + "/loss-dom.html")
lc = sqlite3.connect(D + "/loss.db")
want_l = {r[0]: r[1] for r in lc.execute(
    "SELECT round, sum(train_loss * n_samples) / sum(n_samples) FROM updates"
    " WHERE decision <> 'rejected' AND train_loss IS NOT NULL GROUP BY round")}
got_l = {int(r["data-round"]): num(r.get("data-train-loss")) for r in ld.tables["accuracy-data"] if r.get("data-train-loss")}
check(got_l and all(abs(got_l.get(k, -1) - v) <= 1e-12 * abs(v) for k, v in want_l.items()) and len(got_l) == len(want_l),
      "train loss per round: page %s, database %s" % (got_l, want_l))
check("chart-loss" in ld.svg_ids, "no loss chart with the train_loss column")
rel = {int(r["data-round"]): r["data-relays"] for r in ld.tables["lineage-data"] if r["data-kind"] == "aggregate"}
check(rel == {1: "", 2: "", 3: "relay-a"}, "relays behind each aggregate of the lineage: %s" % rel)

# --- markup in stored text renders as text
hraw = open(D + "/hostile.html", encoding="utf-8").read().lower()
check("<script" not in hraw and "<img" not in hraw and "<b>" not in hraw, "markup from the log reached the page raw")
check("&lt;script&gt;alert(1)&lt;/script&gt;" in hraw, "the hostile device id is not shown escaped")
hd = dom(D + "/hostile-dom.html")
check(all(hd.tags[t] == 0 for t in ("script", "img", "b", "i")),
      "the rendered DOM has elements from the log: %s" % {t: hd.tags[t] for t in ("script", "img", "b", "i")})
text = "".join(hd.text)
check("<script>alert(1)</script>" in text, "the hostile device id does not render as text")
hr = [r for r in hd.tables["decisions-data"] if r.get("data-rule") == "<b>rule</b>"]
check(len(hr) == 1 and hr[0]["data-count"] == "1", "the hostile rule's row: %s" % hr)
hj = json.load(open(D + "/hostile.json"))
check(Counter(x["rule"] for x in hj["decisions"] if x["source"] == "update") ==
      Counter(r["data-rule"] for r in hd.tables["decisions-data"] if r.get("data-decision") == "rejected" for _ in range(int(r["data-count"]))),
      "rejected by rule in the hostile copy")
check("</table><script>alert(3)</script>" in text, "the hostile reason does not render as text")
check(keys_rows(hd) == keys_json(hj) and len(keys_rows(hd)) == 4, "keys ledger in the hostile copy: page %s, JSON %s"
      % (keys_rows(hd), keys_json(hj)))
hk = (keys_json(hj) or [{}])[-1]
check((keys_rows(hd) or [{}])[-1] == {"device": "<script>alert(4)</script>", "change": "<b>ledger</b>",
                                      "at": hk.get("at"), "event": hk.get("event")},
      "the hostile keys event: %s" % keys_rows(hd)[-1:])
check("<script>alert(4)</script>" in text and "<b>ledger</b>" in text, "the hostile keys event does not render as text")
hc = defaultdict(lambda: [0, 0])
for c in hj["lineage"]["contributions"]:
    hc[c["device"]][0] += 1
    hc[c["device"]][1] += c["n_samples"]
got_hc = {r["data-device"]: [int(r["data-updates"]), int(r["data-samples"])] for r in hd.tables["contrib-devices"]}
check(got_hc == dict(hc) and got_hc.get("<script>alert(1)</script>") == [1, 5],
      "contributions per device in the hostile copy: page %s, JSON %s" % (got_hc, dict(hc)))
hw = {x["device"]: x["epsilon"] for x in hj["privacy"]["devices"] if x["dp_rounds"]}
hg = {r["data-device"]: num(r.get("data-epsilon")) for r in hd.tables["epsilon-devices"]}
check(hg == hw and hg.get("dev-001", 0) is None and hg.get("<script>alert(1)</script>") is not None,
      "epsilon per device after a round without DP: page %s, JSON %s" % (hg, hw))
check(any("no DP guarantee" in t for t in hd.text), "no 'no DP guarantee' for a device in a round without DP")
check(len(hd.tables["epsilon-data"]) == 2, "2 DP rounds expected in the copy without round 3's ledger row")
hv = [r["data-version"] for r in hd.tables["lineage-data"]]
check(hv == lv[:-1] + ["<i>init</i>"], "the hostile copy's lineage: %s" % hv)

for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
