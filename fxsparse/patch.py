"""Patch-and-replace: re-run any per-pixel model on crops of the changed regions only.

Unlike :func:`fxsparse.transform`, this needs no tracing: the model is a black
box from an image to per-pixel maps (a tensor, or a dict / tuple of tensors
``[B, C, Ho, Wo]``, at the input's resolution or a lower one). It is
approximate: a crop sees only ``margin`` pixels of context around the change.

Per stream and frame:

1. change map: ``max_c |x - reference| > threshold``; dilated by ``dilate`` px;
2. changed cells on a grid of ``align`` px; 8-connected components; those
   with fewer than ``min_area`` changed pixels are dropped;
3. each component's box, widened by ``margin`` and aligned to the grid; boxes
   merged while they overlap or a merged box is no larger than the two apart;
   crop sizes rounded up to ``bucket`` so the model sees few shapes;
4. crops of one shape (from all streams) run as one batch;
5. the inner part of each result (the margin cut away) is pasted into the
   stored output, optionally feathered over ``blend`` output pixels; the
   reference is updated there.

The first frame, every ``refresh_every``-th frame, and any frame whose crops
would cover more than ``dense_above`` of the image run dense.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import FxSparseError, InputError, InputTypeError
from .kernels.morphology import max_filter

Box = tuple[int, int, int, int]  # y0, y1, x0, x1 in input pixels, end exclusive


@dataclass
class PatchStats:
    """What the last call of a :class:`PatchRunner` did."""

    changed_fraction: list[float] = field(default_factory=list)  # per stream, before clean-up
    crops: int = 0
    pixels_processed: int = 0  # input pixels the model ran on (crops incl. margins, dense streams)
    pixels_dense: int = 0  # what a dense run processes
    dense_streams: list[int] = field(default_factory=list)
    regions: list[list[tuple[Box, Box]]] = field(default_factory=list)  # per stream: (inner = pasted, crop = run)
    seconds: float = 0.0

    @property
    def processed_fraction(self) -> float:
        return self.pixels_processed / max(1, self.pixels_dense)


def _leaves(y):
    """(flat list of output tensors, rebuild function) for a tensor / dict / tuple / list output."""
    if isinstance(y, torch.Tensor):
        return [y], lambda ts: ts[0]
    if isinstance(y, dict):
        keys = list(y)
        return [y[k] for k in keys], lambda ts: dict(zip(keys, ts))
    if isinstance(y, (tuple, list)):
        kind = type(y)
        return list(y), lambda ts: kind(ts)
    raise FxSparseError(
        f"patch mode needs per-pixel maps as output, the model returned {type(y).__name__}. "
        "Hint: use a segmentation / detection-map model, or fxsparse.transform for classifiers."
    )


def components(cells: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean grid, as arrays of (row, col) cell indices."""
    seen = np.zeros_like(cells, dtype=bool)
    out = []
    h, w = cells.shape
    for start in zip(*np.nonzero(cells)):
        if seen[start]:
            continue
        stack, members = [start], []
        seen[start] = True
        while stack:
            r, c = stack.pop()
            members.append((r, c))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < h and 0 <= cc < w and cells[rr, cc] and not seen[rr, cc]:
                        seen[rr, cc] = True
                        stack.append((rr, cc))
        out.append(np.array(members))
    return out


def _area(b: Box) -> int:
    return (b[1] - b[0]) * (b[3] - b[2])


def _union(a: Box, b: Box) -> Box:
    return min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def merge_boxes(inner: list[Box], crop_of) -> list[tuple[Box, Box]]:
    """Merge (inner, crop) pairs while crops overlap or a merged crop is no larger than the two apart."""
    pairs = [(b, crop_of(b)) for b in inner]
    merged = True
    while merged and len(pairs) > 1:
        merged = False
        for i in range(len(pairs)):
            for j in range(i + 1, len(pairs)):
                (bi, ci), (bj, cj) = pairs[i], pairs[j]
                union_inner = _union(bi, bj)
                union_crop = crop_of(union_inner)
                if _overlap(ci, cj) or _area(union_crop) <= _area(ci) + _area(cj):
                    pairs[i] = (union_inner, union_crop)
                    pairs.pop(j)
                    merged = True
                    break
            if merged:
                break
    return pairs


class PatchRunner(nn.Module):
    """Re-run ``model`` on crops around the changed regions of each stream; paste the results.

    Args:
        model: any module mapping ``[B, C, H, W]`` images to per-pixel maps (tensor, dict or tuple of
            ``[B, K, Ho, Wo]``); it need not be traceable.
        threshold: a pixel changed when ``max_c |x - reference| > threshold`` (input scale).
        dilate: grow the change map by this many pixels before finding regions.
        min_area: drop regions with fewer changed pixels (noise).
        margin: context pixels added around each region (cut away again before pasting).
        align: grid (px) that crops snap to; default: 8, or the output stride if larger.
        bucket: crop sides are rounded up to multiples of this (fewer distinct shapes).
        refresh_every: run dense every this many frames (None: never after the first).
        dense_above: run a stream dense when its crops would cover more than this share of it.
        blend: feather pasted results over this many output pixels at the seams (0: hard paste).
    """

    def __init__(self, model: nn.Module, *, threshold: float = 0.0, dilate: int = 2, min_area: int = 0,
                 margin: int = 16, align: int | None = None, bucket: int = 32, refresh_every: int | None = None,
                 dense_above: float = 0.5, blend: int = 0):
        super().__init__()
        if threshold < 0 or dilate < 0 or min_area < 0 or margin < 0 or bucket < 1 or blend < 0:
            raise ValueError("threshold, dilate, min_area, margin and blend must be >= 0 and bucket >= 1")
        if refresh_every is not None and refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1 or None, got {refresh_every}")
        self.model = model.eval()
        self.threshold = float(threshold)
        self.dilate, self.min_area, self.margin = int(dilate), int(min_area), int(margin)
        self.align_arg, self.bucket = align, int(bucket)
        self.refresh_every, self.dense_above, self.blend = refresh_every, float(dense_above), int(blend)
        self.stats = PatchStats()
        self.reset()

    def reset(self, streams=None) -> None:
        """Forget all streams (next call runs dense), or make the given streams run dense next frame."""
        if streams is None or getattr(self, "_ref", None) is None:
            self._ref = None
            self._outputs = None
            self._rebuild = None
            self._frame = 0
            self._pending_dense: set[int] = set()
            return
        for s in torch.as_tensor(streams).view(-1).tolist():
            if not 0 <= s < self._ref.shape[0]:
                raise InputError(f"reset(streams=[{s}]): this runner holds {self._ref.shape[0]} streams.")
            self._pending_dense.add(int(s))

    # -- the per-frame work --------------------------------------------------------------

    def forward(self, x: torch.Tensor):
        with torch.inference_mode():
            self._step(x)
        with torch.no_grad():  # ordinary tensors, not inference tensors: callers may modify them
            return self._result()

    def _step(self, x: torch.Tensor) -> None:
        t0 = time.perf_counter()
        self._check(x)
        b, _, h, w = x.shape
        if self._ref is None:
            out = self.model(x)
            leaves, self._rebuild = _leaves(out)
            self._outputs = [t.clone() for t in leaves]
            self._ref = x.clone()
            self._stride = self._output_stride(h, w)
            self._align = self.align_arg or max(8, self._stride)
            full = ((0, h, 0, w), (0, h, 0, w))
            self.stats = PatchStats([1.0] * b, 0, b * h * w, b * h * w, list(range(b)), [[full] for _ in range(b)])
            self._frame = 1
            self.stats.seconds = time.perf_counter() - t0
            return
        refresh = self.refresh_every is not None and self._frame % self.refresh_every == 0
        changed = (x - self._ref).abs().amax(1) > self.threshold  # [B, H, W]
        stats = PatchStats(changed.flatten(1).float().mean(1).tolist(), 0, 0, b * h * w, [], [])
        crops_by_shape: dict[tuple[int, int], list[tuple[int, Box, Box]]] = defaultdict(list)
        dense = []
        full = ((0, h, 0, w), (0, h, 0, w))
        for s in range(b):
            if refresh or s in self._pending_dense:
                dense.append(s)
                stats.regions.append([full])
                continue
            pairs = self._regions(changed[s], h, w)
            if sum(_area(c) for _, c in pairs) > self.dense_above * h * w:
                dense.append(s)
                stats.regions.append([full])
                continue
            stats.regions.append(pairs)
            for inner, crop in pairs:
                crops_by_shape[(crop[1] - crop[0], crop[3] - crop[2])].append((s, inner, crop))
        if dense:
            idx = torch.tensor(dense)
            leaves, _ = _leaves(self.model(x[idx]))
            for stored, fresh in zip(self._outputs, leaves):
                stored[idx] = fresh
            self._ref[idx] = x[idx]
            stats.pixels_processed += len(dense) * h * w
        for items in crops_by_shape.values():
            batch = torch.stack([x[s, :, c[0] : c[1], c[2] : c[3]] for s, _, c in items])
            leaves, _ = _leaves(self.model(batch))
            for k, (s, inner, crop) in enumerate(items):
                self._paste([t[k] for t in leaves], s, inner, crop)
                ys, xs = slice(inner[0], inner[1]), slice(inner[2], inner[3])
                self._ref[s, :, ys, xs] = x[s, :, ys, xs]
                stats.pixels_processed += _area(crop)
                stats.crops += 1
        self._pending_dense.clear()
        stats.dense_streams = dense
        self._frame += 1
        stats.seconds = time.perf_counter() - t0
        self.stats = stats

    def _regions(self, changed: torch.Tensor, h: int, w: int) -> list[tuple[Box, Box]]:
        """(inner box, crop box) pairs covering the changed pixels of one stream."""
        if not bool(changed.any()):
            return []
        m = changed[None, None].float()
        if self.dilate:
            m = max_filter(m, self.dilate)
        a = self._align
        cells = F.max_pool2d(m, a, a, ceil_mode=True)[0, 0].numpy() > 0
        counts = F.avg_pool2d(changed[None, None].float(), a, a, ceil_mode=True)[0, 0].numpy() * a * a
        inner = []
        for comp in components(cells):
            if counts[comp[:, 0], comp[:, 1]].sum() < max(self.min_area, 1e-9):
                continue
            r0, c0 = comp.min(0)
            r1, c1 = comp.max(0) + 1
            inner.append((int(r0) * a, min(int(r1) * a, h), int(c0) * a, min(int(c1) * a, w)))
        return merge_boxes(inner, lambda box: self._crop(box, h, w))

    def _crop(self, inner: Box, h: int, w: int) -> Box:
        """The inner box widened by the margin, snapped to the grid, sides rounded up to the bucket."""
        a, bucket = self._align, self.bucket
        y0 = max(0, (inner[0] - self.margin) // a * a)
        x0 = max(0, (inner[2] - self.margin) // a * a)
        y1 = min(h, inner[1] + self.margin)
        x1 = min(w, inner[3] + self.margin)
        hh = -(-(y1 - y0) // bucket) * bucket
        ww = -(-(x1 - x0) // bucket) * bucket
        # grow toward the interior if the bucketed crop would leave the image (keep the origin aligned)
        if y0 + hh > h:
            y0 = max(0, (h - hh) // a * a)
        if x0 + ww > w:
            x0 = max(0, (w - ww) // a * a)
        return y0, min(h, y0 + hh), x0, min(w, x0 + ww)

    def _paste(self, results: list[torch.Tensor], s: int, inner: Box, crop: Box) -> None:
        st = self._stride
        for stored, res in zip(self._outputs, results):
            ho, wo = stored.shape[-2:]
            oy, ox = crop[0] // st, crop[2] // st  # global output index of the crop's output (0, 0)
            gy0, gx0 = -(-inner[0] // st), -(-inner[2] // st)
            gy1 = min(-(-inner[1] // st), ho, oy + res.shape[-2])
            gx1 = min(-(-inner[3] // st), wo, ox + res.shape[-1])
            if gy0 >= gy1 or gx0 >= gx1:
                continue
            fresh = res[..., gy0 - oy : gy1 - oy, gx0 - ox : gx1 - ox]
            region = stored[s, ..., gy0:gy1, gx0:gx1]
            if self.blend:
                region.copy_(torch.lerp(region, fresh, self._feather(gy1 - gy0, gx1 - gx0, inner, crop)))
            else:
                region.copy_(fresh)

    def _feather(self, hh: int, ww: int, inner: Box, crop: Box) -> torch.Tensor:
        """Weights rising from 0 to 1 over ``blend`` pixels from each inner edge that is not the image border."""
        def ramp(n):
            return torch.clamp((torch.arange(n, dtype=torch.float32) + 1) / (self.blend + 1), max=1.0)

        wy = torch.minimum(ramp(hh), ramp(hh).flip(0))
        wx = torch.minimum(ramp(ww), ramp(ww).flip(0))
        return torch.minimum(wy[:, None], wx[None, :])

    def _output_stride(self, h: int, w: int) -> int:
        """Input pixels per output pixel (1 for full-resolution maps), from the first frame's outputs."""
        strides = set()
        for t in self._outputs:
            if t.dim() != 4:
                raise FxSparseError(
                    f"patch mode needs [B, C, H, W] output maps; the model returned a tensor of shape {tuple(t.shape)}. "
                    "Hint: fxsparse.transform handles any output."
                )
            strides.add(max(1, round(h / t.shape[-2])))
        if len(strides) != 1:
            raise FxSparseError(f"output maps have different strides {sorted(strides)}; patch mode needs one.")
        return strides.pop()

    def _result(self):
        return self._rebuild([t.clone() for t in self._outputs])

    def _check(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise InputTypeError(f"expected a torch.Tensor [B, C, H, W], got {type(x).__name__}.")
        if not x.is_floating_point():
            raise InputTypeError(f"expected a floating-point frame, got {x.dtype}. Hint: x.float() / 255.")
        if x.dim() != 4:
            raise InputError(f"expected [B, C, H, W], got shape {tuple(x.shape)}. Hint: x.unsqueeze(0).")
        if self._ref is not None and x.shape != self._ref.shape:
            raise InputError(
                f"frames of shape {tuple(x.shape)}, but the streams hold {tuple(self._ref.shape)}. "
                "Hint: keep one frame per stream at a fixed size, or reset() to start over."
            )
        if not bool(torch.isfinite(x).all()):
            raise InputError("the frame contains NaN or infinite values; the state was left unchanged.")
