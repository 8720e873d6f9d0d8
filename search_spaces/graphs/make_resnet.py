"""Writes resnet18_cifar10.json: a ResNet-18 for 32x32 CIFAR-10 inputs in the aiop graph format.

He et al. 2016 basic blocks, CIFAR variant (3x3 stem, no max pool): stem conv3x3(3->64)+BN+ReLU,
four stages of two basic blocks at 64/128/256/512 channels (stride 2 in the first block of stages
2-4, with a 1x1 conv + BN projection shortcut), global average pooling, linear(512->10).
Run: python3 make_resnet.py > resnet18_cifar10.json; check: aiop graph --file resnet18_cifar10.json
"""
import json

nodes = []
def add(id, op, inputs=(), **kw):
    n = {"id": id, "op": op}
    if inputs: n["inputs"] = list(inputs)
    n.update(kw); nodes.append(n); return id

shape = {}
def conv(id, x, cout, k, s):
    c, h, w = shape[x]
    p = (k - 1) // 2
    ho = (h + 2 * p - k) // s + 1
    shape[id] = [cout, ho, ho]
    return add(id, "conv", [x], out=shape[id], kernel=k, stride=s, padding=p)
def same(id, op, x, **kw):
    shape[id] = shape[x]; return add(id, op, [x], **kw)

shape["x"] = [3, 32, 32]; add("x", "input", out=[3, 32, 32])
h = same("stem_relu", "relu", same("stem_bn", "batch_norm", conv("stem_conv", "x", 64, 3, 1)))
c = 64
for st, cout in enumerate([64, 128, 256, 512]):
    for b in range(2):
        s = 2 if (b == 0 and st > 0) else 1
        p = f"s{st+1}b{b+1}"
        y = same(p + "_relu1", "relu", same(p + "_bn1", "batch_norm", conv(p + "_conv1", h, cout, 3, s)))
        y = same(p + "_bn2", "batch_norm", conv(p + "_conv2", y, cout, 3, 1))
        sc = h
        if s != 1 or c != cout:
            sc = same(p + "_proj_bn", "batch_norm", conv(p + "_proj", h, cout, 1, s))
        shape[p + "_add"] = shape[y]
        add(p + "_add", "add", [y, sc])
        h = same(p + "_relu2", "relu", p + "_add")
        c = cout
shape["gap"] = [c, 1, 1]; add("gap", "global_avg_pool", [h])
shape["fc"] = [10, 1, 1]; add("fc", "linear", ["gap"], out=[10, 1, 1], bias=True)
add("y", "output", ["fc"])
print('{"format": "aiop-graph", "version": 1, "name": "ResNet-18 (CIFAR-10, 32x32)", "nodes": [')
print(",\n".join("  " + json.dumps(n) for n in nodes))
print("]}")
