"""The PyTorch and scikit-learn sides of tools/bench/vs_torch.sh, and its table.

    vs_torch.py torch   SPEC BATCH LR MOMENTUM SEED REPEAT
    vs_torch.py sklearn SPEC BATCH LR MOMENTUM SEED REPEAT
    vs_torch.py table   < lines of key=value pairs

One thread each (torch.set_num_threads(1); threadpoolctl for numpy's BLAS).
Data: Debian's dataset-fashion-mnist IDX files scaled to [0, 1], as fedge
loads them. The model is built from the fedge spec string (softmax:, mlp:,
cnn: grammar of shared/model.h). PyTorch: He-uniform weights, zero biases
(fedge_model_randomize's family), SGD with the same lr and momentum, mean
cross-entropy, one epoch in a random order, minibatches gathered by index.
scikit-learn: MLPClassifier (dense specs only), solver='sgd', no L2, no
Nesterov, one epoch; its own init (Glorot uniform). Each repeat builds a fresh
model; only the epoch is timed, by this thread's CPU time (wall beside it);
the fastest repeat is reported with its test accuracy."""
import gzip
import os
import re
import struct
import sys
import time
import warnings

DATA = "/usr/share/datasets/fashion-mnist"


def load_idx(name):
    with gzip.open(os.path.join(DATA, name), "rb") as f:
        raw = f.read()
    import numpy as np
    magic = struct.unpack(">I", raw[:4])[0]
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(split):
    import numpy as np
    prefix = "train" if split == "train" else "t10k"
    x = load_idx(prefix + "-images-idx3-ubyte.gz").astype(np.float32) * np.float32(1.0 / 255.0)
    y = load_idx(prefix + "-labels-idx1-ubyte.gz").astype(np.int64)
    return x.reshape(x.shape[0], -1), y


def parse_spec(text):
    """-> (kind, input shape (C, H, W), list of layer tuples)."""
    kind, _, body = text.partition(":")
    toks = body.split("-")
    if kind in ("softmax", "mlp"):
        dims = [int(t) for t in toks]
        layers = []
        for i in range(1, len(dims)):
            layers.append(("dense", dims[i]))
            if i < len(dims) - 1:
                layers.append(("relu",))
        return kind, (dims[0], 1, 1), layers
    if kind != "cnn":
        raise SystemExit("unknown spec kind: " + text)
    c, h, w = (int(v) for v in toks[0].split("x"))
    layers = []
    for t in toks[1:-1]:
        m = re.fullmatch(r"c(\d+)k(\d+)(?:s(\d+))?(?:p(\d+))?", t)
        if m:
            layers += [("conv", int(m[1]), int(m[2]), int(m[3] or 1), int(m[4] or 0)), ("relu",)]
            continue
        m = re.fullmatch(r"p(\d+)(?:s(\d+))?", t)
        if m:
            layers.append(("pool", int(m[1]), int(m[2] or m[1])))
            continue
        m = re.fullmatch(r"f(\d+)", t)
        if m:
            layers += [("dense", int(m[1])), ("relu",)]
            continue
        m = re.fullmatch(r"d(\d+)", t)
        if m:
            layers.append(("dropout", int(m[1])))
            continue
        raise SystemExit("bad cnn token: " + t)
    layers.append(("dense", int(toks[-1])))
    return kind, (c, h, w), layers


def torch_model(spec):
    import torch
    from torch import nn
    kind, shape, layers = parse_spec(spec)
    c, h, w = shape
    mods, flat = [], kind != "cnn"
    feat = c * h * w
    for L in layers:
        if L[0] == "conv":
            _, out, k, s, p = L
            mods.append(nn.Conv2d(c, out, k, stride=s, padding=p))
            c, h, w = out, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        elif L[0] == "pool":
            _, k, s = L
            mods.append(nn.MaxPool2d(k, stride=s))
            h, w = (h - k) // s + 1, (w - k) // s + 1
        elif L[0] == "relu":
            mods.append(nn.ReLU())
        elif L[0] == "dropout":
            mods.append(nn.Dropout(L[1] / 100.0))
        elif L[0] == "dense":
            if not flat:
                mods.append(nn.Flatten())
                flat = True
                feat = c * h * w
            mods.append(nn.Linear(feat, L[1]))
            feat = L[1]
    model = nn.Sequential(*mods)
    for mod in model.modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_uniform_(mod.weight, nonlinearity="relu")  # bound sqrt(6 / fan_in)
            nn.init.zeros_(mod.bias)
    return model, kind, shape


def run_torch(spec, batch, lr, mu, seed, repeat):
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    torch.manual_seed(seed)
    xtr, ytr = load("train")
    xte, yte = load("test")
    _, kind, shape = torch_model(spec)
    X, Y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    XT, YT = torch.from_numpy(xte), torch.from_numpy(yte)
    if kind == "cnn":
        X, XT = X.reshape(-1, *shape), XT.reshape(-1, *shape)
    n = X.shape[0]
    # warm-up on a throwaway model: library start-up (kernel selection, allocator) is not training
    wm, _, _ = torch_model(spec)
    wopt = torch.optim.SGD(wm.parameters(), lr=lr, momentum=mu)
    for i in range(5):
        wopt.zero_grad(set_to_none=True)
        F.cross_entropy(wm(X[i * batch:(i + 1) * batch]), Y[i * batch:(i + 1) * batch]).backward()
        wopt.step()
    best = None
    for r in range(repeat):
        model, _, _ = torch_model(spec)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=mu, weight_decay=0.0)
        gen = torch.Generator().manual_seed(seed + r)
        w0, c0 = time.perf_counter(), time.thread_time()
        perm = torch.randperm(n, generator=gen)
        loss_sum = 0.0
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            xb, yb = X[idx], Y[idx]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
        cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(XT[i:i + 1000]).argmax(1) == YT[i:i + 1000]).sum())
                          for i in range(0, XT.shape[0], 1000))
        res = dict(cpu=cpu, wall=wall, loss=loss_sum / n, acc=correct / XT.shape[0])
        if best is None or res["cpu"] < best["cpu"]:
            best = res
    report("torch-" + torch.__version__.split("+")[0], spec, batch, lr, mu, n, best, repeat)


def run_sklearn(spec, batch, lr, mu, seed, repeat):
    import numpy as np
    import sklearn
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits
    kind, _, layers = parse_spec(spec)
    if kind == "cnn":
        print("impl=sklearn spec=%s batch=%d skipped=no_cnn" % (spec, batch))
        return
    hidden = tuple(L[1] for L in layers if L[0] == "dense")[:-1]
    xtr, ytr = load("train")
    xte, yte = load("test")
    best = None
    with threadpool_limits(limits=1):
        for r in range(repeat):
            clf = MLPClassifier(hidden_layer_sizes=hidden or (), activation="relu", solver="sgd",
                                alpha=0.0, batch_size=batch, learning_rate="constant",
                                learning_rate_init=lr, momentum=mu, nesterovs_momentum=False,
                                max_iter=1, shuffle=True, random_state=seed + r, tol=0.0,
                                early_stopping=False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                w0, c0 = time.perf_counter(), time.thread_time()
                clf.fit(xtr, ytr)
                cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
            acc = float(np.mean(clf.predict(xte) == yte))
            res = dict(cpu=cpu, wall=wall, loss=float(clf.loss_), acc=acc)
            if best is None or res["cpu"] < best["cpu"]:
                best = res
    report("sklearn-" + sklearn.__version__, spec, batch, lr, mu, xtr.shape[0], best, repeat)


def report(impl, spec, batch, lr, mu, n, r, repeat):
    print("impl=%s spec=%s batch=%d lr=%g momentum=%g samples=%d cpu_s=%.3f wall_s=%.3f "
          "samples_per_s=%.0f train_loss=%.4f test_acc=%.4f repeats=%d"
          % (impl, spec, batch, lr, mu, n, r["cpu"], r["wall"], n / r["cpu"], r["loss"], r["acc"],
             repeat))


def table():
    rows = []
    for line in sys.stdin:
        kv = dict(p.split("=", 1) for p in line.split() if "=" in p)
        if "impl" in kv:
            rows.append(kv)
    cases = []
    for r in rows:
        key = (r["spec"], r["batch"])
        if key not in cases:
            cases.append(key)
    print("| model | batch | implementation | samples/s (CPU) | epoch CPU s | wall s | test acc "
          "| fedge / this |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for spec, batch in cases:
        group = [r for r in rows if (r["spec"], r["batch"]) == (spec, batch)]
        fedge = next((r for r in group if r["impl"] == "fedge" and "samples_per_s" in r), None)
        for r in group:
            if "samples_per_s" not in r:
                print("| %s | %s | %s | – | – | – | – | (%s) |"
                      % (spec, batch, r["impl"], r.get("skipped", "failed")))
                continue
            ratio = "1.00x" if r is fedge else (
                "%.2fx" % (float(fedge["samples_per_s"]) / float(r["samples_per_s"]))
                if fedge else "–")
            print("| %s | %s | %s | %s | %s | %s | %s | %s |"
                  % (spec, batch, r["impl"], "{:,}".format(int(r["samples_per_s"])), r["cpu_s"],
                     r["wall_s"], r["test_acc"], ratio))


def main():
    if len(sys.argv) == 2 and sys.argv[1] == "table":
        table()
        return
    if len(sys.argv) != 8 or sys.argv[1] not in ("torch", "sklearn"):
        raise SystemExit(__doc__)
    spec, batch, lr, mu = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
    seed, repeat = int(sys.argv[6]), int(sys.argv[7])
    (run_torch if sys.argv[1] == "torch" else run_sklearn)(spec, batch, lr, mu, seed, repeat)


if __name__ == "__main__":
    main()
