"""Draw a model's output on its frame: segmentation colours, heat maps, or the top class."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .outputs import first_tensor

_PALETTE = (np.random.default_rng(7).integers(40, 255, (256, 3))).astype(np.uint8)


def first_map(output):
    """The first ``[B, K, h, w]`` tensor in a model output, else None."""
    return first_tensor(output, lambda t: t.dim() == 4)


def first_logits(output):
    """The first ``[B, K]`` tensor in a model output, else None."""
    return first_tensor(output, lambda t: t.dim() == 2)


def render(frame: torch.Tensor, output, stream: int = 0) -> np.ndarray:
    """An RGB uint8 image ``[H, W, 3]``: the frame with the output drawn on it."""
    img = (frame.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    h, w = img.shape[:2]
    seg = first_map(output)
    if seg is not None:
        m = seg[stream : stream + 1].float()
        m = F.interpolate(m, size=(h, w), mode="nearest")[0]
        if m.shape[0] > 1 and m.shape[0] != 2:
            colors = _PALETTE[m.argmax(0).numpy() % 256]
        else:  # one channel (a score) or two (background / object, e.g. PNet): a heat map of the last
            score = m[-1].numpy()
            score = (score - score.min()) / max(1e-6, float(score.max() - score.min()))
            colors = np.stack([score * 255, score * 80, (1 - score) * 60], -1).astype(np.uint8)
        return (0.55 * img + 0.45 * colors).astype(np.uint8)
    logits = first_logits(output)
    if logits is not None:
        from PIL import Image, ImageDraw

        p = torch.softmax(logits[stream].float(), 0)
        top = int(p.argmax())
        pil = Image.fromarray(img)
        draw = ImageDraw.Draw(pil)
        draw.rectangle([0, 0, min(w, 230), 18], fill=(0, 0, 0))
        draw.text((4, 3), f"class {top}  p={float(p[top]):.2f}", fill=(255, 255, 0))
        return np.asarray(pil)
    return img
