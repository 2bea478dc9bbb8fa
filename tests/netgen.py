"""Random CNNs for property tests: a list of layer specs and a traceable module that runs them.

Specs are drawn with hypothesis so failures shrink to small networks. Each spec
knows the (C, H, W) it needs and produces, so every drawn network is valid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

ACTS = ["relu", "relu6", "leaky_relu", "hardswish", "hardsigmoid", "sigmoid", "silu", "gelu", "tanh", "prelu"]


def make_act(name: str, channels: int) -> nn.Module:
    return {
        "relu": lambda: nn.ReLU(inplace=True),
        "relu6": lambda: nn.ReLU6(),
        "leaky_relu": lambda: nn.LeakyReLU(0.1),
        "hardswish": lambda: nn.Hardswish(),
        "hardsigmoid": lambda: nn.Hardsigmoid(),
        "sigmoid": lambda: nn.Sigmoid(),
        "silu": lambda: nn.SiLU(),
        "gelu": lambda: nn.GELU(),
        "tanh": lambda: nn.Tanh(),
        "prelu": lambda: nn.PReLU(channels),
    }[name]()


def _out(n, k, s, p, d=1, ceil=False):
    eff = d * (k - 1) + 1
    if ceil:
        o = -(-(n + 2 * p - eff) // s) + 1
        if (o - 1) * s >= n + p:
            o -= 1
        return o
    return (n + 2 * p - eff) // s + 1


class Block(nn.Module):
    """One drawn layer; ``kind`` selects what forward does (static config: traceable)."""

    def __init__(self, spec: dict, c_in: int):
        super().__init__()
        self.spec = spec
        kind = spec["kind"]
        c = spec.get("c_out", c_in)
        if kind == "conv":
            self.conv = nn.Conv2d(
                c_in, c, spec["k"], spec["s"], spec["p"], spec["d"], spec["groups"], bias=spec["bias"]
            )
        elif kind == "conv_t":
            self.conv = nn.ConvTranspose2d(c_in, c, spec["k"], spec["s"], spec["p"], spec["op"])
        elif kind == "bn":
            self.bn = nn.BatchNorm2d(c_in)
            with torch.no_grad():
                self.bn.running_mean.uniform_(-0.5, 0.5)
                self.bn.running_var.uniform_(0.5, 2.0)
                self.bn.weight.uniform_(0.5, 1.5)
                self.bn.bias.uniform_(-0.5, 0.5)
        elif kind == "act":
            self.act = make_act(spec["name"], c_in)
        elif kind == "residual":
            self.conv = nn.Conv2d(c_in, c_in, spec["k"], 1, "same", groups=spec["groups"])
            self.act = make_act(spec["act"], c_in)
        elif kind == "concat":
            self.conv = nn.Conv2d(c_in, spec["extra"], 1)
        elif kind == "se":
            self.fc1 = nn.Conv2d(c_in, max(1, c_in // 2), 1)
            self.fc2 = nn.Conv2d(max(1, c_in // 2), c_in, 1)

    def forward(self, x):
        s, kind = self.spec, self.spec["kind"]
        if kind in ("conv", "conv_t"):
            return self.conv(x)
        if kind == "bn":
            return self.bn(x)
        if kind == "act":
            return self.act(x)
        if kind == "maxpool":
            return F.max_pool2d(x, s["k"], s["s"], s["p"], s["d"], s["ceil"])
        if kind == "avgpool":
            return F.avg_pool2d(x, s["k"], s["s"], s["p"], s["ceil"], s["cip"])
        if kind == "residual":
            y = x + self.conv(x)
            return self.act(y) if s["post_act"] else y
        if kind == "concat":
            return torch.cat([x, torch.tanh(self.conv(x))], dim=1)
        if kind == "upsample":
            return F.interpolate(x, scale_factor=s["scale"], mode=s["mode"], align_corners=s["align"])
        if kind == "resize":
            return F.interpolate(x, size=(s["h"], s["w"]), mode=s["mode"], align_corners=s["align"])
        if kind == "pad":
            return F.pad(x, s["pad"], value=s["value"])
        if kind == "se":
            v = F.adaptive_avg_pool2d(x, 1)
            return x * torch.sigmoid(self.fc2(F.relu(self.fc1(v))))
        if kind == "pool_grid":
            return F.adaptive_avg_pool2d(x, (s["h"], s["w"]))
        if kind == "arith":
            return (x * 0.5 - 0.25) / 1.5 + 1.0 - x
        raise AssertionError(kind)


class RandomNet(nn.Module):
    def __init__(self, specs: list[dict], c_in: int, head: str):
        super().__init__()
        blocks, c = [], c_in
        for spec in specs:
            blocks.append(Block(spec, c))
            c = spec.get("c_after", c)
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        if head == "classifier":
            self.fc = nn.Linear(c, 5)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        if self.head == "classifier":
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        if self.head == "tuple":
            return x, x.mean((2, 3))
        if self.head == "dict":
            return {"out": x, "aux": torch.sigmoid(x)}
        return x


@st.composite
def layer_specs(draw, c: int, h: int, w: int, depth: int):
    """Draw ``depth`` layer specs valid for an input of (c, h, w); returns (specs, c, h, w)."""
    specs = []
    for _ in range(depth):
        options = ["conv", "bn", "act", "residual", "concat", "arith", "pad", "se"]
        if h >= 2 and w >= 2:
            options += ["maxpool", "avgpool", "pool_grid"]
        if h * w <= 400:
            options += ["upsample", "conv_t", "resize"]
        kind = draw(st.sampled_from(options))
        spec = {"kind": kind}
        if kind == "conv":
            k = draw(st.sampled_from([1, 2, 3, 5]))
            d = draw(st.sampled_from([1, 1, 2]))
            eff = d * (k - 1) + 1
            p = draw(st.integers(0, max(0, min(eff, 3))))
            if h + 2 * p < eff or w + 2 * p < eff:
                p = eff  # always leave at least one output position
            s = draw(st.sampled_from([1, 1, 2, 3]))
            c_out = draw(st.integers(1, 6))
            groups = draw(st.sampled_from([g for g in (1, 2, 3, c) if c % g == 0 and c_out % g == 0] or [1]))
            if draw(st.booleans()) and groups == c and c > 1:
                c_out = c  # depthwise
            spec.update(k=k, s=s, p=p, d=d, groups=groups, bias=draw(st.booleans()), c_out=c_out, c_after=c_out)
            h, w, c = _out(h, k, s, p, d), _out(w, k, s, p, d), c_out
        elif kind == "conv_t":
            k = draw(st.integers(1, 4))
            s = draw(st.integers(1, 2))
            p = draw(st.integers(0, (k - 1) // 2))
            op = draw(st.integers(0, s - 1))
            c_out = draw(st.integers(1, 4))
            spec.update(k=k, s=s, p=p, op=op, c_out=c_out, c_after=c_out)
            h, w, c = (h - 1) * s - 2 * p + k + op, (w - 1) * s - 2 * p + k + op, c_out
        elif kind == "act":
            spec["name"] = draw(st.sampled_from(ACTS))
        elif kind in ("maxpool", "avgpool"):
            k = draw(st.integers(2, min(3, h, w)))
            s = draw(st.integers(1, 2))
            p = draw(st.integers(0, k // 2))
            ceil = draw(st.booleans())
            spec.update(k=k, s=s, p=p, ceil=ceil, d=1, cip=draw(st.booleans()))
            h, w = _out(h, k, s, p, 1, ceil), _out(w, k, s, p, 1, ceil)
        elif kind == "residual":
            groups = draw(st.sampled_from([1, c]))
            spec.update(k=draw(st.sampled_from([1, 3])), groups=groups, act=draw(st.sampled_from(ACTS)),
                        post_act=draw(st.booleans()))
        elif kind == "concat":
            extra = draw(st.integers(1, 3))
            spec.update(extra=extra, c_after=c + extra)
            c = c + extra
        elif kind == "upsample":
            spec.update(scale=draw(st.sampled_from([2, 3])), mode=draw(st.sampled_from(["nearest", "bilinear"])))
            spec["align"] = draw(st.booleans()) if spec["mode"] == "bilinear" else None
            h, w = h * spec["scale"], w * spec["scale"]
        elif kind == "resize":
            nh, nw = draw(st.integers(1, 24)), draw(st.integers(1, 24))
            spec.update(h=nh, w=nw, mode=draw(st.sampled_from(["nearest", "bilinear"])))
            spec["align"] = draw(st.booleans()) if spec["mode"] == "bilinear" else None
            h, w = nh, nw
        elif kind == "pad":
            pad = tuple(draw(st.integers(0, 2)) for _ in range(4))
            spec.update(pad=pad, value=draw(st.sampled_from([0.0, 0.5])))
            h, w = h + pad[2] + pad[3], w + pad[0] + pad[1]
        elif kind == "pool_grid":
            spec.update(h=draw(st.integers(1, h)), w=draw(st.integers(1, w)))
            h, w = spec["h"], spec["w"]
        specs.append(spec)
    return specs, c, h, w


class SqueezeExciteNet(nn.Module):
    """Two squeeze-excite blocks, a head and an upsampled output: the shape of a MobileNetV3 segmenter."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.mid = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc3 = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        y = F.hardswish(self.stem(x))
        y = y * F.hardsigmoid(self.fc2(torch.relu(self.fc1(y.mean((2, 3), keepdim=True)))))
        z = torch.relu(self.mid(y))
        z = z * torch.sigmoid(self.fc3(F.adaptive_avg_pool2d(z, 1))) + y
        return F.interpolate(self.head(z), scale_factor=2, mode="bilinear", align_corners=False)
