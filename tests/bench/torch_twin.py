#!/usr/bin/env python3
"""PyTorch twin of aiop's predictor: the same model, weights and graphs, timed side by side.

1. Runs `aiop bench predictor --dump DIR` once: aiop writes its model (safetensors + JSON
   config), 4096 NB-201 CIFAR-10 graphs' node features as JSON, its predictions (both its
   candle-free inference path and its candle autograd path) and the loss and gradients of the
   first training step.
2. Builds the identical network in PyTorch (node embedding, GraphConv layers with
   index_select + index_add_, mean pooling, MLP head), loads the same weights, and checks that
   predictions (and first-step gradients) agree.
3. Times, in alternating rounds, `aiop bench predictor --json --rounds 1` and the same work in
   PyTorch: inference at batch 1 (300 graphs), 256 (4096 graphs) and 4096 (8192 graphs), each
   after one warm-up batch, and training at batch 32 (forward, MSE, backward, clip_grad_norm_ 5,
   Adam lr 1e-4) for --train-steps steps after one warm-up step, over the same batches and targets.
   aiop runs with --threads threads (RAYON_NUM_THREADS); PyTorch is timed with each of
   --torch-threads (default 1 and --threads, torch.set_num_threads) and its best is compared, so
   that a PyTorch slowed by OpenMP spin-waiting on a busy machine does not flatter aiop. PyTorch gets its batches pre-packed (its timings exclude building
   the index tensors); aiop's timings include packing its batches.
4. Prints medians of the wall-clock rates (the figures the targets are about), the aiop/PyTorch
   ratios, the agreement, and the same rates per CPU-second of each process (which other
   processes sharing the cores disturb far less); --json-out writes everything as JSON.

torch is needed only here, never by the Rust build or `cargo test`; see README.md.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file


def pack(graphs):
    """Concatenate graphs like aiop's Batch::pack (node offsets, plain/weighted split, perm)."""
    ops, res, src, dst, graph, counts = [], [], [], [], [], []
    weighted, kernel, bias = [], [], []
    offset = 0
    for gi, g in enumerate(graphs):
        n = len(g["op"])
        ops.append(np.asarray(g["op"], dtype=np.int64))
        res.append(np.asarray(g["res"], dtype=np.float32).reshape(n, 6))
        src.append(np.asarray(g["src"], dtype=np.int64) + offset)
        dst.append(np.asarray(g["dst"], dtype=np.int64) + offset)
        graph.append(np.full(n, gi, dtype=np.int64))
        counts.append(n)
        weighted.append(np.asarray(g["weighted"], dtype=bool))
        kernel.append(np.asarray(g["kernel"], dtype=np.int64).reshape(n, 2))
        bias.append(np.asarray(g["bias"], dtype=bool))
        offset += n
    op = np.concatenate(ops)
    w = np.concatenate(weighted)
    k = np.concatenate(kernel)
    b = np.concatenate(bias)
    plain_idx = np.nonzero(~w)[0]
    w_idx = np.nonzero(w)[0]
    perm = np.empty(offset, dtype=np.int64)
    perm[plain_idx] = np.arange(len(plain_idx))
    perm[w_idx] = len(plain_idx) + np.arange(len(w_idx))
    onehot = np.stack([1.0 - b[w_idx], b[w_idx].astype(np.float64)], 1).astype(np.float32)
    t = torch.from_numpy
    return {
        "op": t(op),
        "res": t(np.concatenate(res)),
        "plain": t(plain_idx),
        "weighted": t(w_idx),
        "kh": t(np.ascontiguousarray(k[w_idx, 0])),
        "kw": t(np.ascontiguousarray(k[w_idx, 1])),
        "bias": t(onehot),
        "perm": t(perm),
        "src": t(np.concatenate(src)),
        "dst": t(np.concatenate(dst)),
        "graph": t(np.concatenate(graph)),
        "counts": torch.tensor(counts, dtype=torch.float32).unsqueeze(1),
        "num_graphs": len(graphs),
    }


ACT = {"tanh": torch.tanh, "relu": torch.relu, "identity": lambda x: x}


class Twin(nn.Module):
    """aiop's Predictor (src/predictor/model.rs) in PyTorch, written the idiomatic way."""

    def __init__(self, c):
        super().__init__()
        d = c["op_dim"] + c["res_dim"]
        self.op = nn.Embedding(c["num_ops"], c["op_dim"])
        self.w_op = nn.Embedding(c["num_ops"], c["weighted_op_dim"])
        self.res = nn.Linear(6, c["res_dim"])
        self.kernel = nn.Embedding(c["kernel_vocab"], c["kernel_dim"])
        self.bias = nn.Linear(2, c["bias_dim"])
        self.root = nn.ModuleList()
        self.rel = nn.ModuleList()
        for _ in range(c["layers"]):
            self.root.append(nn.Linear(d, c["hidden"], bias=False))
            self.rel.append(nn.Linear(d, c["hidden"]))
            d = c["hidden"]
        self.head = nn.ModuleList()
        for w in c["head"] + [1]:
            self.head.append(nn.Linear(d, w))
            d = w
        self.act = ACT[c["activation"]]
        self.head_act = ACT[c["head_activation"]]
        self.mean = c["pooling"] == "mean"

    def load_aiop(self, weights):
        names = {
            "op.weight": "embed.op.weight",
            "w_op.weight": "embed.w_op.weight",
            "res.weight": "embed.res.weight",
            "res.bias": "embed.res.bias",
            "kernel.weight": "embed.kernel.weight",
            "bias.weight": "embed.bias.weight",
            "bias.bias": "embed.bias.bias",
        }
        for i in range(len(self.root)):
            names[f"root.{i}.weight"] = f"gnn.layer{i}.root.weight"
            names[f"rel.{i}.weight"] = f"gnn.layer{i}.rel.weight"
            names[f"rel.{i}.bias"] = f"gnn.layer{i}.rel.bias"
        for i in range(len(self.head)):
            names[f"head.{i}.weight"] = f"head.layer{i}.weight"
            names[f"head.{i}.bias"] = f"head.layer{i}.bias"
        state = {k: weights[v].float() for k, v in names.items()}
        self.load_state_dict(state, strict=True)
        return {v: k for k, v in names.items()}

    def forward(self, b):
        res = self.res(b["res"])
        plain = torch.cat([self.op(b["op"][b["plain"]]), res[b["plain"]]], 1)
        weighted = torch.cat(
            [
                self.w_op(b["op"][b["weighted"]]),
                res[b["weighted"]],
                self.kernel(b["kh"]),
                self.kernel(b["kw"]),
                self.bias(b["bias"]),
            ],
            1,
        )
        x = torch.cat([plain, weighted], 0)[b["perm"]]
        for root, rel in zip(self.root, self.rel):
            agg = torch.zeros_like(x).index_add_(0, b["dst"], x[b["src"]])
            x = self.act(root(x) + rel(agg))
        g = torch.zeros(b["num_graphs"], x.shape[1]).index_add_(0, b["graph"], x)
        if self.mean:
            g = g / b["counts"]
        for i, lin in enumerate(self.head):
            g = lin(g)
            if i + 1 < len(self.head):
                g = self.head_act(g)
        return g.squeeze(1)


def clocks():
    return time.perf_counter(), time.process_time()


def rates(n, start):
    """(per wall-clock second, per CPU-second of the process) since `start`."""
    wall, cpu = clocks()
    return n / (wall - start[0]), n / max(cpu - start[1], 1e-9)


# A PyTorch configuration slowed down by spin-waiting stops after this many seconds (its rate is
# then measured over what it did); see --max-seconds.
MAX_SECONDS = [20.0]


def time_inference(model, batches, min_graphs):
    """Graphs/s over `batches` (cycled) until min_graphs graphs, after one warm-up batch."""
    with torch.inference_mode():
        model(batches[0])
        done = 0
        start = clocks()
        while done < min_graphs:
            for b in batches:
                model(b)
                done += b["num_graphs"]
                if done >= min_graphs or time.perf_counter() - start[0] > MAX_SECONDS[0]:
                    return rates(done, start)
        return rates(done, start)


def train_window(i, batch, total):
    lo = (i * batch) % (total - batch)
    return lo, lo + batch


def make_model(cfg, weights):
    m = Twin(cfg)
    m.load_aiop(weights)
    return m


def time_training(cfg, weights, steps, windows, targets, lr, clip):
    """Graphs/s of `steps` Adam steps (after one warm-up), on a fresh copy of the weights."""
    model = make_model(cfg, weights)
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def step(i):
        b, lo, hi = windows[i]
        loss = ((model(b) - targets[lo:hi]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        return loss.item()

    step(0)
    start = clocks()
    done = 0
    for i in range(1, steps + 1):
        step(i)
        done += windows[i][0]["num_graphs"]
        if time.perf_counter() - start[0] > MAX_SECONDS[0]:
            break
    return rates(done, start)


def run_aiop(exe, args, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run(
        [exe, "bench", "predictor", *args], env=env, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def load_avg():
    try:
        return os.getloadavg()
    except OSError:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--aiop", default="target/release/aiop", help="the aiop binary")
    ap.add_argument("--dir", default="/tmp/aiop-twin", help="where aiop dumps the model and graphs")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="threads of aiop (and of torch)")
    ap.add_argument("--torch-threads", default=None,
                    help="comma-separated torch thread counts to try each round; the best is "
                    "compared (default: 1 and --threads)")
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--json-out", help="also write the results here")
    ap.add_argument("--model", default="search_spaces/predictor",
                    help="checkpoint aiop benchmarks and dumps (default: the shipped pretrained "
                    "model, whose predictions span a real range; '' for a fresh model)")
    ap.add_argument("--max-seconds", type=float, default=20.0,
                    help="stop a PyTorch workload after this long (rate over what it did)")
    ap.add_argument("--baseline", help="another aiop binary (e.g. an older build) to time in the "
                    "same rounds; its model is its own default (same configuration and seed)")
    a = ap.parse_args()

    MAX_SECONDS[0] = a.max_seconds
    if a.torch_threads:
        torch_threads = [int(t) for t in a.torch_threads.split(",")]
    else:
        torch_threads = sorted({1, a.threads})
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, threads tried {torch_threads} (best per round compared), "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
          f"aiop RAYON_NUM_THREADS={a.threads}; load average {load_avg()}", flush=True)
    model_args = ["--model", a.model] if a.model else []
    run_aiop(a.aiop, ["--dump", a.dir, "--rounds", "1", "--train-steps", "2", "--json",
                      *model_args], a.threads)
    meta = json.load(open(os.path.join(a.dir, "model.json")))
    cfg = meta["config"]
    graphs = json.load(open(os.path.join(a.dir, "graphs.json")))["graphs"]
    ref = json.load(open(os.path.join(a.dir, "aiop.json")))
    weights = load_file(os.path.join(a.dir, "model.safetensors"))
    model = make_model(cfg, weights)

    # Agreement: predictions on all graphs (batches of 256), first-step loss and gradients.
    with torch.inference_mode():
        pred = torch.cat([model(pack(graphs[i:i + 256])) for i in range(0, len(graphs), 256)])
    pred = pred.double().numpy()
    fast = np.asarray(ref["predictions_fast"])
    generic = np.asarray(ref["predictions_candle"])
    agree = {
        "max_abs_diff_inference_path": float(np.abs(pred - fast).max()),
        "max_abs_diff_candle_path": float(np.abs(pred - generic).max()),
        "prediction_range": [float(pred.min()), float(pred.max())],
    }
    batch = ref["train_batch"]
    targets = torch.tensor(ref["targets"], dtype=torch.float32)
    lo, hi = train_window(0, batch, len(graphs))
    m2 = make_model(cfg, weights)
    loss = ((m2(pack(graphs[lo:hi])) - targets[lo:hi]) ** 2).mean()
    loss.backward()
    names = m2.load_aiop(weights)
    aiop_grads = load_file(os.path.join(a.dir, "grads.safetensors"))
    params = dict(m2.named_parameters())
    worst = 0.0
    for aiop_name, g in aiop_grads.items():
        tg = params[names[aiop_name]].grad
        scale = max(float(tg.abs().max()), 1e-12)
        worst = max(worst, float((tg - g).abs().max()) / scale)
    norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in m2.parameters())))
    agree["first_step_loss"] = {"aiop": ref["first_step"]["loss"], "torch": float(loss)}
    agree["first_step_grad_norm"] = {"aiop": ref["first_step"]["grad_norm"], "torch": norm}
    agree["max_rel_grad_diff"] = worst
    ok = agree["max_abs_diff_inference_path"] <= 1e-4 and agree["max_abs_diff_candle_path"] <= 1e-4
    print(json.dumps(agree, indent=1))
    print(f"predictions equal to 1e-4: {'yes' if ok else 'NO'}", flush=True)

    # Pre-packed batches for PyTorch.
    inf_batches = {}
    for bs, min_graphs in ref["inference"]:
        n = min(len(graphs), max(min_graphs, bs))
        inf_batches[bs] = (
            [pack(graphs[i:i + bs]) for i in range(0, min(n, len(graphs)), bs)],
            min_graphs,
        )
    windows = []
    for i in range(a.train_steps + 1):
        lo, hi = train_window(i, batch, len(graphs))
        windows.append((pack(graphs[lo:hi]), lo, hi))

    rounds = {"aiop": {}, "torch": {}, "aiop_cpu": {}, "torch_cpu": {}, "baseline": {},
              "load": []}
    for r in range(a.rounds):
        rounds["load"].append(load_avg())
        order = ["aiop", "torch"] if r % 2 == 0 else ["torch", "aiop"]
        if a.baseline:
            order.append("baseline")
        for side in order:
            if side == "baseline":
                res = run_aiop(a.baseline,
                               ["--json", "--train-steps", str(a.train_steps), *model_args],
                               a.threads)
                for entry in res["inference"]:
                    rounds["baseline"].setdefault(f"inference_{entry[0]}", []).append(entry[1])
                rounds["baseline"].setdefault("training_32", []).append(
                    res["train_graphs_per_s"])
            elif side == "aiop":
                res = run_aiop(
                    a.aiop,
                    ["--json", "--rounds", "1", "--train-steps", str(a.train_steps), *model_args],
                    a.threads,
                )
                for bs, gps, _ in res["inference"]:
                    rounds["aiop"].setdefault(f"inference_{bs}", []).append(gps)
                for bs, gps, _ in res.get("inference_cpu", []):
                    rounds["aiop_cpu"].setdefault(f"inference_{bs}", []).append(gps)
                rounds["aiop"].setdefault("training_32", []).append(res["train_graphs_per_s"])
                if res.get("train_graphs_per_cpu_s"):
                    rounds["aiop_cpu"].setdefault("training_32", []).append(
                        res["train_graphs_per_cpu_s"])
            else:
                # Every torch thread count asked for; the round's torch figure per workload is
                # the best of them (wall clock), with that configuration's CPU-time rate.
                best = {}
                for tt in torch_threads:
                    torch.set_num_threads(tt)
                    got = {}
                    for bs, (bl, min_graphs) in inf_batches.items():
                        got[f"inference_{bs}"] = time_inference(model, bl, min_graphs)
                    got["training_32"] = time_training(cfg, weights, a.train_steps, windows,
                                                       targets, ref["lr"], ref["clip_norm"])
                    for key, (gps, cps) in got.items():
                        rounds.setdefault(f"torch@{tt}", {}).setdefault(key, []).append(gps)
                        if key not in best or gps > best[key][0]:
                            best[key] = (gps, cps)
                for key, (gps, cps) in best.items():
                    rounds["torch"].setdefault(key, []).append(gps)
                    rounds["torch_cpu"].setdefault(key, []).append(cps)
        print(f"round {r + 1}/{a.rounds} done (load {rounds['load'][-1]})", flush=True)

    print()
    print(f"{'workload':<16}{'aiop graphs/s':>15}{'torch graphs/s':>16}{'aiop/torch':>12}  target"
          f"{'per CPU-s: aiop':>18}{'torch':>9}{'ratio':>8}")
    summary = {}
    for key in rounds["aiop"]:
        ma = statistics.median(rounds["aiop"][key])
        mt = statistics.median(rounds["torch"][key])
        target = 1.5 if key.startswith("inference") else 1.0
        summary[key] = {"aiop": ma, "torch": mt, "ratio": ma / mt, "target": target,
                        "aiop_rounds": rounds["aiop"][key], "torch_rounds": rounds["torch"][key]}
        met = "met" if ma / mt >= target else "MISSED"
        cpu = ""
        if rounds["aiop_cpu"].get(key) and rounds["torch_cpu"].get(key):
            ca = statistics.median(rounds["aiop_cpu"][key])
            ct = statistics.median(rounds["torch_cpu"][key])
            summary[key].update({"aiop_per_cpu_s": ca, "torch_per_cpu_s": ct,
                                 "cpu_ratio": ca / ct})
            cpu = f"{ca:>18.0f}{ct:>9.0f}{ca / ct:>7.2f}x"
        print(f"{key:<16}{ma:>15.0f}{mt:>16.0f}{ma / mt:>11.2f}x  >= {target}x {met:<7}{cpu}")
    if a.baseline:
        print(f"\nbaseline {a.baseline}:")
        for key, xs in rounds["baseline"].items():
            mb = statistics.median(xs)
            mt = statistics.median(rounds["torch"][key])
            ma = statistics.median(rounds["aiop"][key])
            summary[key].update({"baseline": mb, "baseline_rounds": xs})
            print(f"{key:<16}{mb:>15.0f} graphs/s  baseline/torch {mb / mt:5.2f}x  "
                  f"aiop/baseline {ma / mb:6.1f}x")
    for tt in torch_threads:
        per = rounds.get(f"torch@{tt}", {})
        print(f"torch with {tt} thread(s): " + ", ".join(
            f"{k} {statistics.median(v):.0f}" for k, v in per.items()))
    print(f"load averages at round starts: {rounds['load']}")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"threads": a.threads, "torch_threads": torch_threads,
                       "torch": torch.__version__, "agreement": agree, "summary": summary,
                       "rounds": rounds, "load": rounds["load"]}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
