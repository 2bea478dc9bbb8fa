"""Per-layer micro benchmark: one conv, dense vs the sparse lowerings, at a given changed share.

    python benchmarks/micro_lowering.py

Six square blobs cover the changed share of the conv's output; times are medians (ms) in one process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fxsparse.kernels import tiles as T
from fxsparse.kernels.rows import RowCache
from fxsparse.timing import median_seconds


def _median_ms(fn, n=9):
    return median_seconds(fn, n) * 1e3


def blob_mask(h, w, share, blobs=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, 1, h, w)
    side = int((share * h * w / blobs) ** 0.5) + 1
    for _ in range(blobs):
        y0 = int(torch.randint(0, max(1, h - side), (1,), generator=g))
        x0 = int(torch.randint(0, max(1, w - side), (1,), generator=g))
        mask[0, 0, y0 : y0 + side, x0 : x0 + side] = 1
    return mask


def conv_lowerings(c, h, w, share, depthwise=False):
    x = torch.randn(1, c, h, w)
    cache, out = RowCache.from_tensor(x), RowCache((1, c, h, w), torch.float32)
    groups = c if depthwise else 1
    weight, bias = torch.randn(c, c // groups, 3, 3), torch.randn(c)
    mask = blob_mask(h, w, share)
    offsets = T.kernel_offsets((3, 3), (1, 1), (1, 1))
    w2d = weight.permute(0, 2, 3, 1).reshape(c, -1)
    taps_w = weight.flatten(1).t().contiguous()

    def dense():
        out.adopt(F.conv2d(cache.view(), weight, bias, padding=1, groups=groups))

    def tiles(size):
        def run():
            b, oy, ox = T.active_tiles(mask, size, size)
            src, outside = T.window_rows(b, oy, ox, stride=(1, 1), pad_top_left=(1, 1), window=(size + 2, size + 2),
                                         in_hw=(h, w))
            res = F.conv2d(T.gather_windows(cache.buf, src, outside, 0.0), weight, bias, groups=groups)
            T.scatter_tiles(out.buf, T.tile_rows(b, oy, ox, (size, size), (h, w)), res)
        return run

    def gemm():
        pos = T.positions(mask)
        src, outside = T.neighbour_rows(pos, (h, w), (h, w), (1, 1), offsets)
        out.buf.index_copy_(0, pos, F.linear(T.gather(cache.buf, src, outside, 0.0).view(len(pos), -1), w2d, bias))

    def taps():
        pos = T.positions(mask)
        src, outside = T.neighbour_rows(pos, (h, w), (h, w), (1, 1), offsets)
        rows = T.gather(cache.buf, src, outside, 0.0)
        acc = rows[:, 0] * taps_w[0]
        for k in range(1, 9):
            acc.addcmul_(rows[:, k], taps_w[k])
        out.buf.index_copy_(0, pos, acc + bias)

    result = {"dense": _median_ms(dense), "tiles 8x8": _median_ms(tiles(8)), "tiles 4x4": _median_ms(tiles(4))}
    result["taps" if depthwise else "im2col GEMM"] = _median_ms(taps if depthwise else gemm)
    return float(mask.mean()), result


def main():
    torch.set_num_threads(2)
    cases = [(64, 144, 192, 0.03), (128, 72, 96, 0.05), (256, 36, 48, 0.1), (512, 18, 24, 0.3), (256, 36, 48, 1.0)]
    for depthwise in (False, True):
        print(f"\n3x3 conv, {'depthwise' if depthwise else 'groups=1'}, times in ms")
        header = None
        for c, h, w, share in cases:
            c = c * 2 if depthwise else c
            changed, res = conv_lowerings(c, h, w, share, depthwise)
            if header is None:
                header = list(res)
                print("| C, HxW | changed | " + " | ".join(header) + " |")
                print("|---" * (len(header) + 2) + "|")
            print(f"| {c}, {h}x{w} | {changed:.1%} | " + " | ".join(f"{res[k]:.2f}" for k in header) + " |")


if __name__ == "__main__":
    main()
