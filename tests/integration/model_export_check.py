"""model_export_check.py — the Python side of tests/integration/model_export.sh.

  check DIR SPEC IMAGES LABELS
      DIR holds model.onnx, model.safetensors, model.npz (fedge-model export),
      fedge_probs.csv and fedge_labels.txt (fedge-model predict on IMAGES).
      Loads the exports with onnxruntime, safetensors and numpy, runs each on
      the IDX images and checks probabilities to 1e-5, labels identical and
      accuracy identical to fedge's own; checks names, shapes, metadata,
      opset and IR version. Prints one summary line.
  malformed GOOD.safetensors OUTDIR
      Writes malformed variants of GOOD as OUTDIR/NAME.safetensors and a
      list OUTDIR/cases.txt of "NAME<TAB>expected error text".
  csv IMAGES N OUT.csv
      The first N images as CSV feature rows (for predict's CSV input).
  close A.csv B.csv N
      The first N rows of two --probs outputs agree to 1e-6.
malformed, csv and close need only the standard library (no venv).
"""
import gzip
import json
import re
import struct
import sys

TOL = 1e-5


def read_idx(path):
    import numpy as np
    with gzip.open(path, "rb") as f:
        b = f.read()
    magic, n = struct.unpack(">II", b[:8])
    if magic == 0x803:
        rows, cols = struct.unpack(">II", b[8:16])
        px = np.frombuffer(b, dtype=np.uint8, offset=16).reshape(n, rows * cols)
        # exactly shared/dataset.c: (float)pixel * (1.0f / 255.0f)
        return px.astype(np.float32) * np.float32(1.0 / 255.0)
    assert magic == 0x801, hex(magic)
    return np.frombuffer(b, dtype=np.uint8, offset=8).astype(np.int64)


def parse_spec(spec):
    """The layer list of model_api.h: list of (type, params) and the input shape."""
    kind, rest = spec.split(":", 1)
    layers = []
    if kind in ("softmax", "mlp"):
        dims = [int(t) for t in rest.split("-")]
        for i in range(1, len(dims)):
            layers.append(("dense", {"out": dims[i]}))
            if i + 1 < len(dims):
                layers.append(("relu", {}))
        return (dims[0],), layers
    assert kind == "cnn", spec
    toks = rest.split("-")
    c, h, w = (int(t) for t in toks[0].split("x"))
    flat = False
    for i, t in enumerate(toks[1:]):
        last = i == len(toks) - 2
        m = re.fullmatch(r"c(\d+)k(\d+)(?:s(\d+))?(?:p(\d+))?", t)
        if m:
            layers.append(("conv", {"out": int(m[1]), "k": int(m[2]), "s": int(m[3] or 1),
                                    "p": int(m[4] or 0)}))
            layers.append(("relu", {}))
            continue
        m = re.fullmatch(r"p(\d+)(?:s(\d+))?", t)
        if m:
            layers.append(("pool", {"k": int(m[1]), "s": int(m[2] or m[1])}))
            continue
        m = re.fullmatch(r"d(\d+)", t)
        if m:
            layers.append(("dropout", {}))
            continue
        m = re.fullmatch(r"f(\d+)", t) if not last else re.fullmatch(r"(\d+)", t)
        assert m, (spec, t)
        if not flat:
            layers.append(("flatten", {}))
            flat = True
        layers.append(("dense", {"out": int(m[1])}))
        if not last:
            layers.append(("relu", {}))
    return (c, h, w), layers


def conv2d(x, w, b, s, p):
    import numpy as np
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    oh = (h + 2 * p - k) // s + 1
    ow = (wd + 2 * p - k) // s + 1
    cols = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s][:, :, :oh, :ow]
    # cols: n, c, oh, ow, k, k
    y = np.einsum("nchwij,ocij->nohw", cols, w, optimize=True)
    return y + b[None, :, None, None]


def maxpool(x, k, s):
    import numpy as np
    n, c, h, w = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::s, ::s][:, :, :oh, :ow]
    return win.max(axis=(4, 5))


def numpy_forward(spec, tensors, x):
    import numpy as np
    shape, layers = parse_spec(spec)
    a = x.reshape((x.shape[0],) + shape).astype(np.float64)
    names = set()
    for i, (t, prm) in enumerate(layers):
        if t in ("dense", "conv"):
            w = tensors["layers.%d.weight" % i].astype(np.float64)
            b = tensors["layers.%d.bias" % i].astype(np.float64)
            names |= {"layers.%d.weight" % i, "layers.%d.bias" % i}
            if t == "dense":
                a = a.reshape(a.shape[0], -1) @ w.T + b
            else:
                a = conv2d(a, w, b, prm["s"], prm["p"])
        elif t == "relu":
            a = np.maximum(a, 0)
        elif t == "pool":
            a = maxpool(a, prm["k"], prm["s"])
        elif t == "flatten":
            a = a.reshape(a.shape[0], -1)
    assert names == set(tensors), "tensor names %s, the spec's layers give %s" % (
        sorted(tensors), sorted(names))
    a = a - a.max(axis=1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=1, keepdims=True)


def compare(what, probs, fedge_probs, fedge_labels, y):
    import numpy as np
    assert probs.shape == fedge_probs.shape, (what, probs.shape, fedge_probs.shape)
    diff = float(np.max(np.abs(probs - fedge_probs)))
    labels = probs.argmax(axis=1)
    mism = int((labels != fedge_labels).sum())
    acc = float((labels == y).mean())
    facc = float((fedge_labels == y).mean())
    print("  %-12s max |p - p_fedge| = %.3g, labels differing: %d, accuracy %.4f (fedge %.4f)"
          % (what, diff, mism, acc, facc))
    assert diff <= TOL, "%s: probabilities differ from fedge's by %g > %g" % (what, diff, TOL)
    assert mism == 0, "%s: %d labels differ from fedge's" % (what, mism)
    assert acc == facc, what
    return diff


def check(d, spec, images, labels_path):
    import numpy as np
    import onnx
    import onnxruntime as ort
    from safetensors import safe_open
    from safetensors.numpy import load_file

    x = read_idx(images)
    y = read_idx(labels_path)
    fedge_probs = np.loadtxt(d + "/fedge_probs.csv", delimiter=",", dtype=np.float64, ndmin=2)
    fedge_labels = np.loadtxt(d + "/fedge_labels.txt", dtype=np.int64, ndmin=1)
    assert len(fedge_labels) == len(x) == len(y) == len(fedge_probs)
    assert (fedge_probs.argmax(axis=1) == fedge_labels).all(), "predict's labels are not its probs' argmax"

    # safetensors
    st = load_file(d + "/model.safetensors")
    with safe_open(d + "/model.safetensors", framework="np") as f:
        meta = f.metadata()
    assert meta["fedge.spec"] == spec, meta
    version = meta["fedge.version"]
    assert re.fullmatch(r"[0-9a-f]{64}", version), version
    for k, v in st.items():
        assert v.dtype == np.float32, (k, v.dtype)
    # npz: the same arrays, bit for bit
    with np.load(d + "/model.npz", allow_pickle=False) as z:
        npz = {k: z[k] for k in z.files}
    assert str(npz.pop("fedge.spec")) == spec
    assert str(npz.pop("fedge.version")) == version
    assert set(npz) == set(st), (sorted(npz), sorted(st))
    for k in st:
        assert npz[k].dtype == np.float32 and npz[k].shape == st[k].shape, k
        assert np.array_equal(npz[k].view(np.uint32), st[k].view(np.uint32)), k

    # ONNX: valid, pinned, same metadata and initializers
    m = onnx.load(d + "/model.onnx")
    onnx.checker.check_model(m, full_check=True)
    assert m.ir_version == 7 and [(o.domain, o.version) for o in m.opset_import] == [("", 13)], (
        m.ir_version, m.opset_import)
    props = {p.key: p.value for p in m.metadata_props}
    assert props == {"fedge.spec": spec, "fedge.version": version}, props
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    assert set(inits) == set(st)
    for k in st:
        assert np.array_equal(inits[k], st[k]), k
    ops = [n.op_type for n in m.graph.node]
    assert ops[-1] == "Softmax", ops

    sess = ort.InferenceSession(d + "/model.onnx", providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    xin = x.reshape((x.shape[0],) + tuple(inp.shape[1:]))
    onnx_probs = sess.run(None, {inp.name: xin})[0].astype(np.float64)

    print("%s: %d test images, ops %s" % (spec, len(x), " ".join(ops)))
    compare("onnxruntime", onnx_probs, fedge_probs, fedge_labels, y)
    compare("safetensors", numpy_forward(spec, st, x), fedge_probs, fedge_labels, y)
    compare("npz", numpy_forward(spec, npz, x), fedge_probs, fedge_labels, y)


def malformed(good, outdir):
    b = open(good, "rb").read()
    hlen = struct.unpack("<Q", b[:8])[0]
    header = b[8:8 + hlen]
    data = b[8 + hlen:]
    hdr = json.loads(header)
    names = [k for k in hdr if k != "__metadata__"]
    cases = []

    def emit(name, blob, expect):
        open("%s/%s.safetensors" % (outdir, name), "wb").write(blob)
        cases.append((name, expect))

    def raw(h, d=data, hl=None):
        hb = h.encode() if isinstance(h, str) else h
        return struct.pack("<Q", len(hb) if hl is None else hl) + hb + d

    def js(h):
        return json.dumps(h, separators=(",", ":"))

    def edit(fn):
        h = json.loads(header)
        fn(h)
        return h

    w0, b0 = names[0], names[1]
    emit("empty", b"", "too short for the header length")
    emit("short-length", b[:5], "too short for the header length")
    emit("length-zero", raw(header, hl=0), "outside 2..")
    emit("length-huge", raw(header, hl=1 << 40), "outside 2..")
    emit("length-past-end", raw(header, d=b"", hl=hlen + 16)[:8 + hlen], "runs past the end")
    emit("not-object", raw(b"[" + header[1:]), "does not start with '{'")
    emit("trailing-garbage", raw(header.rstrip() + b"x" * (8 - len(header.rstrip()) % 8)),
         "bytes after the JSON object")
    emit("unterminated", raw(header[:len(header) // 2]), "header JSON")
    dup = js(hdr)[:-1] + "," + json.dumps(w0) + ":" + js(hdr[w0]) + "}"
    emit("duplicate-tensor", raw(dup), "given twice")
    emit("dtype-f16", raw(js(edit(lambda h: h[w0].update(dtype="F16")))), "dtype F16")
    emit("dtype-missing", raw(js(edit(lambda h: h[w0].pop("dtype")))), "missing dtype")
    emit("unknown-field", raw(js(edit(lambda h: h[w0].update(extra=1)))), "unknown field")
    emit("shape-wrong", raw(js(edit(lambda h: h[w0].update(shape=[h[w0]["shape"][0], h[w0]["shape"][1] + 1])))),
         "shape [")
    emit("shape-rank", raw(js(edit(lambda h: h[b0].update(shape=[1] + h[b0]["shape"])))), "shape [")
    emit("missing-tensor", raw(js(edit(lambda h: h.pop(names[-1])))), "is missing")
    emit("extra-tensor", raw(js(edit(lambda h: h.update({"layers.99.weight": h[w0]})))), "is not in spec")
    emit("spec-metadata", raw(js(edit(lambda h: h["__metadata__"].update({"fedge.spec": "mlp:1-2"})))),
         "exported from spec")
    emit("metadata-not-string", raw(js(edit(lambda h: h["__metadata__"].update(x=1)))),
         "__metadata__ value is not a string")

    def swap(h):
        h[w0]["data_offsets"], h[b0]["data_offsets"] = h[b0]["data_offsets"], h[w0]["data_offsets"]
    emit("offsets-mismatch", raw(js(edit(swap))), "do not span")

    def overlap(h):
        a, e = h[b0]["data_offsets"]
        h[b0]["data_offsets"] = [a - 4, e - 4]
    emit("offsets-overlap", raw(js(edit(overlap))), "overlaps")

    def gap(h):
        for k in names:
            a, e = h[k]["data_offsets"]
            h[k]["data_offsets"] = [a + 4, e + 4]
    emit("offsets-gap", raw(js(edit(gap)), d=data + b"\0" * 4), "gap of 4 bytes")
    emit("data-truncated", b[:-4], "past the data section")
    emit("data-trailing", b + b"\0" * 8, "bytes after the last tensor")
    emit("offset-huge", raw(js(edit(lambda h: h[w0].update(data_offsets=[2 ** 60, 2 ** 60 + 4])))),
         "above 2^53")
    emit("leading-zero", raw(js(hdr).replace('"data_offsets":[0,', '"data_offsets":[00,', 1)), "leading zero")
    emit("negative", raw(js(hdr).replace('"data_offsets":[0,', '"data_offsets":[-0,', 1)),
         "expected an unsigned integer")
    emit("bad-utf8", raw(js(hdr).replace('"format"', '"f\xff"', 1).encode("latin-1")), "invalid UTF-8")
    emit("control-byte", raw(js(hdr).replace('"format"', '"f\\u0000"', 1)), "\\u0000")
    nan = bytearray(data)
    nan[4:8] = struct.pack("<f", float("nan"))
    emit("nan", raw(header, d=bytes(nan)), "not finite")
    inf = bytearray(data)
    inf[-4:] = struct.pack("<f", float("-inf"))
    emit("inf", raw(header, d=bytes(inf)), "not finite")
    with open(outdir + "/cases.txt", "w") as f:
        for n, e in cases:
            f.write("%s\t%s\n" % (n, e))


def to_csv(images, n, out):
    """Pixels as shared/dataset.c computes them: float32(p) * float32(1/255),
    rounded to float32 (the double product of two floats is exact); repr of
    that double reads back (strtof) as the same float."""
    f32 = lambda v: struct.unpack("<f", struct.pack("<f", v))[0]
    scale = f32(1.0 / 255.0)
    with gzip.open(images, "rb") as f:
        b = f.read()
    magic, count, rows, cols = struct.unpack(">IIII", b[:16])
    assert magic == 0x803
    dim = rows * cols
    with open(out, "w") as o:
        o.write(",".join("px%d" % i for i in range(dim)) + "\n")  # a header line, skipped
        for r in range(min(int(n), count)):
            px = b[16 + r * dim: 16 + (r + 1) * dim]
            o.write(",".join(repr(f32(p * scale)) for p in px) + "\n")


def close(a, b, n):
    ra = [[float(v) for v in line.split(",")] for line in open(a).read().split("\n")[: int(n)]]
    rb = [[float(v) for v in line.split(",")] for line in open(b).read().split("\n")[: int(n)]]
    assert len(ra) == len(rb) == int(n), (len(ra), len(rb))
    worst = max(abs(x - y) for p, q in zip(ra, rb) for x, y in zip(p, q))
    assert all(len(p) == len(q) for p, q in zip(ra, rb)) and worst <= 1e-6, worst


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "check":
        check(*sys.argv[2:6])
    elif cmd == "malformed":
        malformed(*sys.argv[2:4])
    elif cmd == "csv":
        to_csv(*sys.argv[2:5])
    elif cmd == "close":
        close(*sys.argv[2:5])
    else:
        sys.exit("usage: model_export_check.py check|malformed|csv ...")
