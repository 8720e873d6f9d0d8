"""Regenerates tests/data/flops_expected.csv from the shared benchmark files.

For every architecture and task in NAS-Bench-Suite-Zero's zc_*.json files (../shared/data/naslib):
the published `flops` and `params` (millions, turned into integers) and the MACs of the reference
counter (../shared/tools/naslib_flops_reference.py). The script also checks that the reference's
`naslib` count equals the published numbers, so the CSV holds facts from two sources that agree.
The project computes both conventions from its own graphs; this file is only the test oracle.

Run from the repository root: python3 tests/data/make_flops_expected.py ../shared
"""
import ast, csv, json, os, sys

shared = sys.argv[1] if len(sys.argv) > 1 else "../shared"
sys.path.insert(0, os.path.join(shared, "tools"))
import naslib_flops_reference as ref  # noqa: E402

D = os.path.join(shared, "data", "naslib")
def sc(v): return v["score"] if isinstance(v, dict) else v
def micro(t): return "64-41414-{}_{}{}_{}{}{}".format(*ast.literal_eval(t))
def macro(t): return "64-{}-basic".format("".join(str(e) for e in ast.literal_eval(t) if e != 0))
NB201_OPS = ["skip_connect", "none", "nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3"]
def nb201_api(t):
    o = [NB201_OPS[i] for i in ast.literal_eval(t)]  # naslib edges (1,2),(1,3),(1,4),(2,3),(2,4),(3,4)
    return f"|{o[0]}~0|+|{o[1]}~0|{o[3]}~1|+|{o[2]}~0|{o[4]}~1|{o[5]}~2|"

rows = []
for fn, space, arch_of, ref_arch in [
        ("zc_nasbench201.json", "nb201", nb201_api, ast.literal_eval),
        ("zc_transbench101_micro.json", "tnb101_micro", micro, micro),
        ("zc_transbench101_macro.json", "tnb101_macro", macro, macro),
        ("zc_nasbench301.json", "darts", lambda k: k, ast.literal_eval)]:
    for task, archs in json.load(open(os.path.join(D, fn))).items():
        for k, v in archs.items():
            rows.append((space, task, arch_of(k), ref_arch(k), sc(v["flops"]), sc(v["params"])))
d = json.load(open(os.path.join(D, "zc_nasbench101.json")))["nasbench101"]["cifar10"]
for k, v in d.items():
    rows.append(("nb101", "cifar10", k, ast.literal_eval(k), v["flops"], v["params"]))

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flops_expected.csv")
with open(out, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["space", "task", "arch", "naslib_flops", "params", "macs"])
    for space, task, arch, rarch, tf, tp in rows:
        nf, npar = ref.count(space, rarch, task, "naslib")
        mf, mp = ref.count(space, rarch, task, "macs")
        pf, pp = round(tf * 1e6), round(tp * 1e6)
        assert (nf, npar) == (pf, pp), (space, task, arch, nf, pf, npar, pp)
        assert mp == pp
        w.writerow([space, task, arch, pf, pp, mf])
print(f"wrote {len(rows)} rows to {out}")
