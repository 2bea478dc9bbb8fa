"""Clean-up of the input change mask: morphological opening, minimum blob area, dilation.

The reference frame is updated only where the *final* mask says, so the output still equals the dense
model on the reference frame (testable exactly). Opening removes isolated changed specks (sensor noise,
compression); the minimum area drops small blobs; dilation grows the remaining regions so that the
whole of a moving object, not a speckled subset of it, refreshes the reference. Measured on CDnet
highway in docs/thresholds.md. The clean-up runs natively where the C kernels are built (Note [Native mask
clean-up], kernels/cleanup.c: 0.4-0.5 ms for a CDnet highway frame at 576x768, 4.5-12 ms below); the
PyTorch and scipy path here is the fallback, and the tests' oracle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .kernels import native
from .kernels.morphology import max_filter
from .rules.masks import box_of

# The clean-up `fxsparse run` and `fxsparse analyze` apply with --clean-up, as transform options: measured on
# CDnet highway (docs/thresholds.md; mobilenet_v2 at 16/255: 4.11x over dense torch with it, 1.06-1.12x
# without, docs/performance.md)
CLEAN_UP = {"input_open": 1, "input_min_area": 30, "input_dilate": 2}


@dataclass(frozen=True)
class InputPolicy:
    """Clean-up steps, applied in order: opening (radius px), minimum blob area (px), dilation (radius px)."""

    open: int = 0
    min_area: int = 0
    dilate: int = 0

    def __post_init__(self):
        if self.open < 0 or self.min_area < 0 or self.dilate < 0:
            raise ValueError("input_open, input_min_area and input_dilate must be >= 0")
        if self.min_area and not native.available():  # the native clean-up needs no scipy
            try:
                import scipy.ndimage  # noqa: F401
            except ImportError as e:
                raise ImportError("input_min_area needs scipy (connected components). "
                                  "Hint: pip install 'fxsparse[policy]'.") from e

    @property
    def active(self) -> bool:
        return bool(self.open or self.min_area or self.dilate)

    def apply(self, mask: torch.Tensor) -> torch.Tensor:
        """Clean a 0/1 ``[B, 1, H, W]`` mask (float) and return the new mask."""
        return self.clean(mask)[0]

    def clean(self, mask: torch.Tensor) -> tuple[torch.Tensor, list[int] | None, tuple | None | bool]:
        """(the cleaned mask, its changed pixels per stream, their bounding box over every stream (None: nothing
        changed)); the last two None and False where they were not found on the way."""
        found = native.clean_mask(mask, self.open, self.min_area, self.dilate)
        return found if found is not None else (self.apply_torch(mask), None, False)

    def apply_torch(self, mask: torch.Tensor) -> torch.Tensor:
        """:meth:`apply` in PyTorch and scipy (without the native kernels)."""
        if self.open:
            mask = max_filter(-max_filter(-mask, self.open), self.open)  # erode, then dilate
        if self.min_area:
            mask = self._drop_small(mask)
        if self.dilate and bool(mask.any()):  # noise only: nothing left to grow (the common static frame)
            mask = max_filter(mask, self.dilate)
        return mask

    def _drop_small(self, mask: torch.Tensor) -> torch.Tensor:
        """Zero the 8-connected blobs smaller than ``min_area``, labelling only the box of each stream's
        changes (after the opening that is usually a small part of the frame: 4.3 ms for a whole 576x768
        frame on this project's machine, most of the clean-up's cost)."""
        from scipy import ndimage

        out = mask.clone()
        structure = np.ones((3, 3), dtype=bool)  # 8-connectivity
        for b in range(mask.shape[0]):
            box = box_of(mask[b : b + 1])
            if box is None:
                continue
            y0, y1, x0, x1 = box
            m = (mask[b, 0, y0:y1, x0:x1] > 0).numpy()  # compared in torch: numpy has no bfloat16
            labels, n = ndimage.label(m, structure=structure)
            # blob sizes from the changed pixels only, the kept blobs looked up with np.take: on a noisy
            # 576x768 highway mask 0.1 + 0.5 ms, against 1.6 + 1.2 ms over every pixel with fancy indexing
            keep = np.bincount(labels[m], minlength=n + 1) >= self.min_area
            keep[0] = False  # the background
            if not keep.any():  # only small blobs (noise on a static scene): clear the box
                out[b, 0, y0:y1, x0:x1] = 0.0
            elif not keep[1:].all():
                out[b, 0, y0:y1, x0:x1].copy_(torch.from_numpy(np.take(keep, labels)))
        return out
