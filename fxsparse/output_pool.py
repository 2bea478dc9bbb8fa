"""Note [Recycled outputs]: the caller's copies of the outputs, made in memory the caller has let go of.

Every call returns tensors of the caller's own (``transform(copy_outputs=True)``, the default). A fresh
tensor of a segmentation map's size (21 x 576 x 768 floats, 37 MB) is served by ``mmap`` and pays a page
fault per 4 KiB page on first write: the copy cost 13 ms here against 3 ms into memory already mapped
(measured, one process). A video loop ``y = sm(x)`` drops the output of frame t-1 right after frame t
returns, so each output keeps a few of the copies it handed out and writes the next copy into one that
nobody else references any more: no Python reference but the pool's, no other tensor or array on its
storage (views and ``numpy()`` arrays hold the storage). A caller who keeps its outputs (a list of
frames, a view, an array) keeps them intact: a buffer still referenced is never written, and the pool
forgets its oldest buffer when all of them are held.
"""

from __future__ import annotations

import sys

import torch

POOL_DEPTH = 2  # `y = sm(x)` holds one output while the next is made: two buffers per output suffice


def _storage_use_count(t: torch.Tensor) -> int | None:
    use_count = getattr(torch._C, "_storage_Use_Count", None)  # private: without it, nothing is recycled
    return None if use_count is None else use_count(t.untyped_storage()._cdata)


def _reusable(buffers: list[torch.Tensor], i: int) -> bool:
    """May ``buffers[i]`` be overwritten: referenced by the pool's list alone (no Python name, view or
    array on it), still a plain contiguous tensor the caller has not turned into a leaf needing grad, and an
    inference tensor exactly when the caller is in inference mode now (outside it, an inference tensor cannot
    be written, and the caller expects an ordinary one)?"""
    if buffers[i].requires_grad or not buffers[i].is_contiguous() or buffers[i].storage_offset() != 0:
        return False
    if buffers[i].is_inference() != torch.is_inference_mode_enabled():
        return False  # made under the caller's inference_mode and now outside it (or the reverse): a fresh one
    # getrefcount: the list's slot + its own argument; storage: the tensor + the temporary storage object
    return sys.getrefcount(buffers[i]) == 2 and _storage_use_count(buffers[i]) == 2


class OutputPool:
    """Per output slot, the last ``depth`` copies handed to the caller (Note [Recycled outputs])."""

    def __init__(self, depth: int = POOL_DEPTH):
        self.depth = depth
        self._buffers: dict[int, list[torch.Tensor]] = {}

    def copy(self, slot: int, value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A contiguous copy of ``value`` in ``dtype`` for the caller, for output ``slot`` (its position
        in the output structure)."""
        buffers = self._buffers.setdefault(slot, [])
        for i in range(len(buffers)):  # indexed, never bound to a name: a name would count as a holder
            if buffers[i].shape == value.shape and buffers[i].dtype == dtype and _reusable(buffers, i):
                return buffers[i].copy_(value)
        del buffers[: max(len(buffers) - self.depth + 1, 0)]  # forget the oldest: the caller keeps them
        fresh = value.to(dtype=dtype, memory_format=torch.contiguous_format, copy=True)
        buffers.append(fresh)
        return fresh

    def clear(self) -> None:
        self._buffers.clear()
