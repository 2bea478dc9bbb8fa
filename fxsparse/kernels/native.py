"""Small C kernels that work on the caches and masks in place, compiled on first use with the system's C
compiler and loaded with ctypes (one library from ``depthwise.c``, ``conv.c``, ``masks.c``, ``frames.c``,
``cleanup.c`` and ``resample.c``; ``common.h`` holds what they share: vector types, activations, window bounds, mask boxes).

Note [Native depthwise]: a depthwise conv went through oneDNN on a crop of its changed box: a copy of the
input crop, the conv into a fresh tensor, a copy of the result back into the cache, and oneDNN's per-call
set-up, ~0.15-0.2 ms per call inside mobilenet_v2's walk for 15-75 us of kernel time. ``depthwise.c`` scans
the output mask inside the changed box and computes exactly the changed positions, reading the input cache
and writing the output cache in place, bias and activation included: 16-lane vectors, four neighbouring
positions at a time (several accumulators in flight; one alone waits on each multiply-add's latency: a
32-channel box ran at 44 ns per position, now 11), OpenMP threads only above ~0.2 M multiply-adds. In place it
beats oneDNN's dense op on the whole map even where everything changed (blob masks, same-process A/B: 10%
changed 0.15-0.22x of the dense op's time, 50% 0.20-0.61x, 100% 0.50-0.93x; the dense op writes a fresh
tensor), so a native depthwise conv never switches to dense. Earlier versions chose between the whole box
and a list of gathered rows; the mask scan needs neither.

Note [Native conv]: ``conv.c`` does the same for a conv of groups 1 with small weights (1x1 convs, a stem over
the frame's channels, narrow 3x3 convs): the changed positions of the box, six or four at a time against
blocks of 64 output channels (eight or four against 16 or 8) held in registers, gathered across the rows a thread
takes (each weight vector loaded once for the group, each input
value broadcast once), bias, residual and activation before the store, no im2col gather and no scatter. The
weight is laid out once in panels of 64 output channels (:func:`conv_panels`), so a block reads its weights as
one stream (big weights: [256, 1024] 0.73x, [2048, 512] 0.52x of the time with rows ``N`` apart). For 1x1
convs against gather + addmm + scatter (isolated, interleaved): 0.46-0.53x for mobilenet_v2's expansions
([16, 96], [24, 144], [32, 192]), 0.60-0.82x for its projections and [96, 576], [576, 96]; up to weights of
2^19 elements (2^20 for convs with taps, whose GEMM path gathers 9 x Cin values per position; window.py:
NATIVE_CONV_MAX_WEIGHTS; beyond, MKL's blocked GEMM wins).

Note [Native mask footprint]: ``masks.c`` writes a window op's change mask (max over each output's window,
zero outside the image) straight into the output box, instead of crop, pad, shifted-slice maxima and copy
(30-64 -> 10-27 us per layer, isolated); separably (each column's maximum over the window's rows as a vector
loop, then each output's over its columns) and on both cores for large boxes: 0.10-0.44x of the tap-by-tap
loop's time (a 720x1280 mask at 5%, 3x3 stride 2: 215 -> 77 us).

Note [Native input difference]: ``frames.c`` computes a float32 frame's change mask in one pass over the
frame and the reference (the largest channel difference per pixel against the threshold, written as the
0/1 mask, and the largest difference, NaN-propagating) instead of subtract, abs, channel max, max and
compare: 1.7 vs 2.5 ms at 576x768, 2.2 vs 3.3 ms at 720x1280 (isolated, frames not in cache); uint8 frames
(``max - min``, Note [Integer frames]) 0.17 vs 0.55 ms at 576x768. A frame
after an unchanged one is tested bit for bit first (reads only; ``memcmp`` in chunks on both cores, 0.31 ms
against 0.56 for ``torch.equal`` at 576x768 float32 with the reference out of cache): a static scene stays
cheap.

Note [Native call arguments]: the kernels called per layer (``fxsparse_conv_masked``, ``_depthwise_masked``,
``_window_max``) take one int64 array (pointers as integers, 0 for NULL) and one float array instead of 20-29
arguments: ctypes converts every argument of every call (see :func:`_packed_call`).

Why C through ``ctypes`` and not a PyTorch C++ extension: the extension's headers take ~27 s to compile
here, these files under a second. The library is built once per source, compiler and CPU
(``-march=native``) into ``$FXSPARSE_CACHE`` (default ``~/.cache/fxsparse``); it links the OpenMP runtime
PyTorch has loaded (``libgomp.so.1``, shared by soname, so one thread pool), or builds without threads when
PyTorch uses another runtime. Without a compiler, or with ``FXSPARSE_NATIVE=0``, every function here
returns False and the callers keep their PyTorch path; :func:`status` says which and why.
"""

from __future__ import annotations

import array
import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
_SOURCES = [os.path.join(_HERE, name) for name in ("depthwise.c", "conv.c", "masks.c", "frames.c", "cleanup.c",
                                                                 "resample.c")]
_HEADERS = [os.path.join(_HERE, "common.h")]  # part of the library's key: a changed header rebuilds it
_ACTIVATIONS = {None: (0, 0.0, 0.0), ("relu",): (1, 0.0, 0.0), ("hardswish",): (3, 0.0, 0.0)}
_lock = threading.Lock()
_scratch = threading.local()  # per thread: ctypes calls release the GIL, so threads may run kernels at once
_lib: ctypes.CDLL | None = None
_status = "not built yet"


def _openmp_flag() -> str | None:
    """``-fopenmp`` when PyTorch's own OpenMP runtime is GNU's (the library then shares its thread pool)."""
    try:
        with open("/proc/self/maps") as f:
            return "-fopenmp" if "libgomp" in f.read() else None
    except OSError:
        return None


def _cpu_key() -> str:
    """The CPU's feature flags: ``-march=native`` code must not be loaded on another CPU sharing the cache."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return sys.platform


def _build() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc / gcc) on PATH")
    flags = ["-O3", "-march=native", "-shared", "-fPIC"]
    openmp = _openmp_flag()
    if openmp:
        try:
            return _compiled(compiler, flags + [openmp])
        except RuntimeError:
            pass  # a compiler without OpenMP support: the kernels run on one thread
    return _compiled(compiler, flags)


def _compiled(compiler: str, flags: list[str]) -> ctypes.CDLL:
    """The library built with ``flags`` (from the cache when it was built before), loaded."""
    source = b""
    for path in _SOURCES + _HEADERS:
        with open(path, "rb") as f:
            source += f.read()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha1(source + " ".join(flags).encode() + version.encode() + _cpu_key().encode()).hexdigest()[:16]
    folder = os.environ.get("FXSPARSE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fxsparse")
    path = os.path.join(folder, f"native-{key}.so")
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
        os.close(fd)
        try:
            done = subprocess.run([compiler, *flags, *_SOURCES, "-o", tmp], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{compiler} failed: {done.stderr.strip()[:500]}")
            os.replace(tmp, path)  # atomic: a concurrent process sees the old state or the whole library
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    lib = ctypes.CDLL(path)
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.fxsparse_depthwise_masked.argtypes = [ptr, ptr]  # Note [Native call arguments]
    lib.fxsparse_conv_masked.argtypes = [ptr, ptr]
    lib.fxsparse_window_max.argtypes = [ptr, ptr]
    lib.fxsparse_upsample_bilinear.argtypes = [ptr, ptr]
    lib.fxsparse_mask_box.argtypes = [ptr, i64, i64, i64, ptr]
    lib.fxsparse_mask_box.restype = None
    lib.fxsparse_input_diff.argtypes = [ptr] * 3 + [i64] * 4 + [ctypes.c_float, ptr, ptr, ptr]
    lib.fxsparse_input_diff_u8.argtypes = lib.fxsparse_input_diff.argtypes
    for size in (1, 2, 4):
        getattr(lib, f"fxsparse_update_reference_{size}").argtypes = [ptr] * 4 + [i64] * 8
        getattr(lib, f"fxsparse_update_reference_{size}").restype = None
    lib.fxsparse_clean_mask.argtypes = [ptr] * 2 + [i64] * 6 + [ptr] * 4
    lib.fxsparse_clean_mask.restype = None
    lib.fxsparse_bytes_equal.argtypes = [ptr, ptr, i64]
    lib.fxsparse_bytes_equal.restype = ctypes.c_int
    for fn in (lib.fxsparse_depthwise_masked, lib.fxsparse_conv_masked, lib.fxsparse_upsample_bilinear,
               lib.fxsparse_window_max, lib.fxsparse_input_diff, lib.fxsparse_input_diff_u8):
        fn.restype = None
    return lib


def _library() -> ctypes.CDLL | None:
    global _lib, _status
    if _lib is not None or _status != "not built yet":
        return _lib
    with _lock:
        if _lib is None and _status == "not built yet":
            if os.environ.get("FXSPARSE_NATIVE", "1") == "0":
                _status = "off (FXSPARSE_NATIVE=0)"
            else:
                try:
                    _lib = _build()
                    _status = "loaded"
                except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as e:
                    _status = f"unavailable: {e}"
    return _lib


def status() -> str:
    """``"loaded"``, or why the native kernels are not used (they are built on the first call that needs them)."""
    _library()
    return _status


def activation_code(act) -> tuple[int, float, float] | None:
    """The kernel's code for activation spec ``act`` (None: not supported natively)."""
    if act is not None and act[0] == "hardtanh":
        return 2, float(act[1]), float(act[2])
    return _ACTIVATIONS.get(act)


def _runnable(inp, out, taps, bias, act) -> tuple | None:
    """(library, activation code) when the kernel can run this conv, else None."""
    code = activation_code(act)
    if code is None or any(t.dtype != torch.float32 or not t.is_contiguous() for t in (inp, out, taps)):
        return None
    if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()):
        return None
    lib = _library()
    return None if lib is None else (lib, code)


def _packed_call(fn, ints: tuple, floats: tuple) -> None:
    """Call ``fn`` with its arguments packed (Note [Native call arguments]): ctypes converts every argument of a
    call, and the conv kernels' 29 cost ~8 us of conversions a call (a 2000-call loop: 8.2 us for the bare call,
    14.2 with its checks), some 50 calls per mobilenet_v2 frame. An int64 array (pointers as integers) and a
    float array pass as two pointers; fresh arrays per call, so threads calling at once do not share them."""
    ints, floats = array.array("q", ints), array.array("f", floats)
    fn(ints.buffer_info()[0], floats.buffer_info()[0])


def available() -> bool:
    """Are the native kernels built and loaded (building them now if need be)?"""
    return _library() is not None


def depthwise_masked(inp: torch.Tensor, out: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor | None,
                     mask: torch.Tensor, in_hw, kernel, stride, pad_top_left, dilation, box, changed: int, act) -> bool:
    """Recompute a depthwise conv at the changed positions (output mask ``mask > 0``, ``[B, 1, Ho, Wo]`` float32)
    of output ``box`` (y0, y1, x0, x1) of every stream, in place in ``out`` (Note [Native depthwise]).
    ``inp`` / ``out``: channels-last rows ``[B * H * W, C]`` / ``[B * Ho * Wo, C]``; ``taps``: ``[kh * kw, C]``;
    ``changed``: about how many positions (it decides on threads). Returns False, touching nothing, where the
    kernel cannot run it."""
    run = _runnable(inp, out, taps, bias, act)
    if run is None or mask.dtype != torch.float32 or not mask.is_contiguous():
        return False
    (h, w), (b, _, ho, wo) = in_hw, mask.shape
    code, lo, hi = run[1]
    _packed_call(run[0].fxsparse_depthwise_masked, (
        inp.data_ptr(), out.data_ptr(), taps.data_ptr(), 0 if bias is None else bias.data_ptr(), mask.data_ptr(),
        b, inp.shape[1], h, w, ho, wo, *kernel, *stride, *pad_top_left, *dilation, *box, changed, code), (lo, hi))
    return True


def conv_panels(weight_t: torch.Tensor) -> torch.Tensor:
    """A conv's weight ``[K, N]`` (``kh * kw * Cin`` rows, tap-major) laid out for :func:`conv_masked`: the columns of
    every 64 output channels stored whole, one block after another, then the last ``N % 64`` channels' (Note
    [Native conv]). Made once per layer."""
    k, n = weight_t.shape
    full = n // 64 * 64
    blocks = weight_t[:, :full].reshape(k, full // 64, 64).permute(1, 0, 2).reshape(-1)
    return torch.cat([blocks, weight_t[:, full:].reshape(-1)]).contiguous()


def conv_masked(inp: torch.Tensor, out: torch.Tensor, panels: torch.Tensor, n_out: int, bias: torch.Tensor | None,
                residual: torch.Tensor | None, mask: torch.Tensor, in_hw, kernel, stride, pad_top_left, dilation, box,
                changed: int, act) -> bool:
    """Recompute a conv (groups 1) at the changed positions (output mask ``mask > 0``, ``[B, 1, Ho, Wo]`` float32)
    of output ``box`` (y0, y1, x0, x1) of every stream, in place in ``out`` (Note [Native conv]):
    ``act(conv(inp) + bias + residual)``. ``inp`` / ``out`` / ``residual``: channels-last rows
    ``[B * H * W, Cin]`` / ``[B * Ho * Wo, n_out]``; ``panels``: :func:`conv_panels` of the weight
    ``[kh * kw * Cin, n_out]`` (tap-major, then input channel); ``changed``: about how many positions (it
    decides on threads). Returns False, touching nothing, where the kernel cannot run it."""
    run = _runnable(inp, out, panels, bias, act)
    if panels.numel() != kernel[0] * kernel[1] * inp.shape[1] * n_out or out.shape[1] != n_out:
        return False
    if run is None or mask.dtype != torch.float32 or not mask.is_contiguous():
        return False
    if residual is not None and (residual.dtype != torch.float32 or not residual.is_contiguous()
                                 or residual.shape != out.shape):
        return False
    (h, w), (b, _, ho, wo) = in_hw, mask.shape
    code, lo, hi = run[1]
    _packed_call(run[0].fxsparse_conv_masked, (
        inp.data_ptr(), out.data_ptr(), panels.data_ptr(), 0 if bias is None else bias.data_ptr(),
        0 if residual is None else residual.data_ptr(), mask.data_ptr(), b, inp.shape[1], n_out, h, w,
        ho, wo, *kernel, *stride, *pad_top_left, *dilation, *box, changed, code), (lo, hi))
    return True


def window_max(mask: torch.Tensor, out: torch.Tensor, kernel, stride, pad_top_left, dilation, box,
               counts: torch.Tensor | None = None) -> bool:
    """``out[box] = max over each output's window of mask`` (zero outside the image), for 0/1 masks
    ``[B, 1, H, W]`` (Note [Native mask footprint], ``masks.c``); ``counts`` (int64 ``[B]``), when given,
    receives each stream's changed outputs inside the box. False, touching nothing, where it cannot."""
    if mask.dtype != torch.float32 or out.dtype != torch.float32 or not (mask.is_contiguous() and out.is_contiguous()):
        return False
    lib = _library()
    if lib is None:
        return False
    b, _, h, w = mask.shape
    _packed_call(lib.fxsparse_window_max, (
        mask.data_ptr(), out.data_ptr(), b, h, w, out.shape[2], out.shape[3], *kernel, *stride, *pad_top_left,
        *dilation, *box, 0 if counts is None else counts.data_ptr()), ())
    return True


def upsample_bilinear(x: torch.Tensor, out: torch.Tensor, align_corners: bool, scales) -> bool:
    """``out[:] = F.interpolate(x, size=out.shape[2:], scale_factor=..., mode="bilinear")`` for float32 ``x``
    ``[B, C, Hi, Wi]`` in any strides (channels-last caches read in place) and an NCHW-contiguous ``out``
    (Note [Native bilinear upsample], ``resample.c``). ``scales``: (scale_h, scale_w) as PyTorch's kernel takes
    them, None where it derives the scale from the sizes. False, touching nothing, where it cannot."""
    if x.dtype != torch.float32 or out.dtype != torch.float32 or x.dim() != 4 or out.dim() != 4:
        return False
    b, c, hi, wi = x.shape
    if not out.is_contiguous() or out.shape[:2] != (b, c) or min(x.shape) < 1 or max(out.shape[2:]) > 16384:
        return False
    if (wi - 1) * x.stride(3) + 1 >= 2**31:  # the kernel's x offsets are int32
        return False
    lib = _library()
    if lib is None:
        return False
    given = [s is not None and s > 0 for s in scales]
    inverse = [1.0 / s if g else 0.0 for s, g in zip(scales, given)]  # rounded to float32 by the array, as in aten
    _packed_call(lib.fxsparse_upsample_bilinear, (
        x.data_ptr(), out.data_ptr(), b, c, hi, wi, *out.shape[2:], *x.stride(), int(bool(align_corners)),
        *map(int, given)), tuple(inverse))
    return True


def mask_box(mask: torch.Tensor) -> tuple[int, int, int, int] | None | bool:
    """The bounding box (y0, y1, x0, x1) of a 0/1 float32 mask ``[B, 1, H, W]``'s set entries over every stream,
    None when nothing is set (Note [Native mask box]); False where the kernel cannot tell."""
    if mask.dtype != torch.float32 or mask.dim() != 4 or not mask.is_contiguous():
        return False
    lib = _library()
    if lib is None:
        return False
    b, c, h, w = mask.shape
    box = array.array("q", (0, 0, 0, 0))
    lib.fxsparse_mask_box(mask.data_ptr(), b * c, h, w, box.buffer_info()[0])
    return None if box[0] >= box[1] else tuple(box)


def frames_equal(x: torch.Tensor, ref: torch.Tensor) -> bool | None:
    """Are ``x`` and ``ref`` (same dtype and shape, contiguous) the same bit for bit (Note [Native input
    difference])? None where the kernel cannot tell."""
    if x.dtype != ref.dtype or x.shape != ref.shape or not (x.is_contiguous() and ref.is_contiguous()):
        return None
    lib = _library()
    if lib is None:
        return None
    return bool(lib.fxsparse_bytes_equal(x.data_ptr(), ref.data_ptr(), x.numel() * x.element_size()))


def update_reference(x: torch.Tensor, ref: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor, box) -> bool:
    """Copy ``x``'s pixels where ``mask`` (``[B, 1, H, W]`` float32) is set inside ``box`` (y0, y1, x0, x1) into
    ``ref`` (NCHW, like ``x``) and ``rows`` (channels-last ``[B * H * W, C]``), in place (Note [Native input
    difference]). False, touching nothing, where it cannot."""
    if not (x.dtype == ref.dtype == rows.dtype and x.shape == ref.shape and x.element_size() in (1, 2, 4)):
        return False
    if not all(t.is_contiguous() for t in (x, ref, rows, mask)) or mask.dtype != torch.float32:
        return False
    b, c, h, w = x.shape
    if rows.shape != (b * h * w, c) or mask.shape != (b, 1, h, w):
        return False
    lib = _library()
    if lib is None:
        return False
    getattr(lib, f"fxsparse_update_reference_{x.element_size()}")(
        x.data_ptr(), ref.data_ptr(), rows.data_ptr(), mask.data_ptr(), b, c, h, w, *box)
    return True


def input_difference(x: torch.Tensor, ref: torch.Tensor,
                     threshold: float) -> tuple[torch.Tensor, float, list[int], tuple | None] | None:
    """(mask ``[B, 1, H, W]`` of ``max_c |x - ref| > threshold`` as float 0/1, the largest difference: NaN
    when one is NaN, the changed pixels per stream, the changes' bounding box over every stream (y0, y1, x0,
    x1), None when none) for float32 or uint8 NCHW frames (Note [Native input difference]; uint8: ``max -
    min``, Note [Integer frames]); None where it cannot."""
    if x.dtype not in (torch.float32, torch.uint8) or ref.dtype != x.dtype or x.dim() != 4 or x.shape != ref.shape:
        return None
    if not (x.is_contiguous() and ref.is_contiguous()):
        return None
    lib = _library()
    if lib is None:
        return None
    b, c, h, w = x.shape
    mask = torch.empty(b, 1, h, w)
    counts, largest, box = torch.empty(b, dtype=torch.int64), torch.empty(1), array.array("q", (0, 0, 0, 0))
    fn = lib.fxsparse_input_diff if x.dtype == torch.float32 else lib.fxsparse_input_diff_u8
    fn(x.data_ptr(), ref.data_ptr(), mask.data_ptr(), b, c, h, w, threshold, counts.data_ptr(), largest.data_ptr(),
       box.buffer_info()[0])
    return mask, float(largest), counts.tolist(), None if box[0] >= box[1] else tuple(box)


def _scratch_bytes(name: str, n: int) -> torch.Tensor:
    """A byte buffer of at least ``n`` bytes kept for this thread (no fresh, page-faulting memory per frame)."""
    buf = getattr(_scratch, name, None)
    if buf is None or buf.numel() < n:
        buf = torch.empty(n, dtype=torch.uint8)
        setattr(_scratch, name, buf)
    return buf


def clean_mask(mask: torch.Tensor, open_radius: int, min_area: int,
               dilate: int) -> tuple[torch.Tensor, list[int], tuple | None] | None:
    """(the cleaned mask, its set pixels per stream, their bounding box over every stream or None): the input
    policy's opening, minimum blob area (8-connected) and dilation on a 0/1 float32 mask ``[B, 1, H, W]`` in one
    call (Note [Native mask clean-up]); None where it cannot."""
    if mask.dtype != torch.float32 or mask.dim() != 4 or mask.shape[1] != 1 or not mask.is_contiguous():
        return None
    lib = _library()
    if lib is None:
        return None
    b, _, h, w = mask.shape
    out = torch.empty_like(mask)
    counts = torch.empty(b, dtype=torch.int64)
    planes = _scratch_bytes("planes", 2 * h * w + 2 * h)
    max_runs = h * ((w + 1) // 2)  # cleanup.c: int32 start, end, parent, then int64 area, row starts (aligned)
    runs = _scratch_bytes("runs", (12 * max_runs + 7) // 8 * 8 + 8 * max_runs + 8 * (h + 1)) if min_area > 1 else planes
    box = array.array("q", (0, 0, 0, 0))
    lib.fxsparse_clean_mask(mask.data_ptr(), out.data_ptr(), b, h, w, open_radius, min_area, dilate,
                            planes.data_ptr(), runs.data_ptr(), counts.data_ptr(), box.buffer_info()[0])
    return out, counts.tolist(), None if box[0] >= box[1] else tuple(box)
