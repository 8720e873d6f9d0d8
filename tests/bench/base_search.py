#!/usr/bin/env python3
"""Base searches before and after the base selection (BENCHMARKS.md, "Base predictions").

For every pretraining task, regularized evolution scored by the base predictor (`aiop search
--algorithm evolution --budget 1000`, seeds 0-4), once with the AIO-P model alone (a copy of
search_spaces/predictor without plain/ and base.json, the behaviour before session 17) and once
with the embedded pair and its selection; prints the TRUE label (the table's) of the best
predicted network, mean over the seeds, and its gap to the table's optimum.

Run from the repository root after `cargo build --release`. Standard library only.
"""
import csv, json, os, shutil, statistics, subprocess, sys, tempfile

B = "./target/release/aiop"
SPACES = {
    "nb201": ["cifar10", "cifar100", "ImageNet16-120"],
    "tnb101_micro": ["class_scene", "class_object", "room_layout", "jigsaw", "segmentsemantic", "normal", "autoencoder"],
    "tnb101_macro": ["class_scene", "class_object", "room_layout", "jigsaw", "segmentsemantic", "normal", "autoencoder"],
}

def main():
    tmp = tempfile.mkdtemp()
    alone = os.path.join(tmp, "aio-only")
    os.mkdir(alone)
    for f in ("model.json", "model.safetensors"):
        shutil.copy(os.path.join("search_spaces/predictor", f), alone)
    out = os.path.join(tmp, "s.json")
    better = worse = 0
    for space, tasks in SPACES.items():
        rows = list(csv.DictReader(open(f"search_spaces/{space}/labels.csv")))
        for task in tasks:
            col = f"val_acc_{task}" if space == "nb201" else task
            opt = max(float(r[col]) for r in rows if r[col])
            mean = {}
            for name, extra in (("aio-only", ["--model", alone]), ("base", [])):
                v = []
                for seed in range(5):
                    subprocess.run([B, "search", "--space", space, "--task", task, "--algorithm", "evolution",
                                    "--budget", "1000", "--seed", str(seed), "--json", out] + extra,
                                   check=True, capture_output=True)
                    v.append(json.load(open(out))["results"][0]["oracle"])
                mean[name] = statistics.mean(v)
            ga, gb = opt - mean["aio-only"], opt - mean["base"]
            better += gb < ga - 1e-9
            worse += gb > ga + 1e-9
            print(f"{space:<13} {task:<16} optimum {opt:.4f}  AIO-P alone: true {mean['aio-only']:.4f} gap {ga:.4f}"
                  f"  base: true {mean['base']:.4f} gap {gb:.4f}", flush=True)
    print(f"base closer to the optimum on {better} tasks, further on {worse}")
    shutil.rmtree(tmp)

if __name__ == "__main__":
    sys.exit(main())
