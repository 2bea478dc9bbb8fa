/* What the native conv kernels (depthwise.c, conv.c) share: vector types, activations, window bounds.
 *
 * 16 floats (and 8, for channel counts like 24 or 40) as one vector with GCC / Clang vector extensions:
 * AVX-512 where there is one, else split by the compiler. may_alias and aligned(4) make a cache row's pointer
 * a valid unaligned vector load. Written out because gcc left a per-lane activation scalar, storing each lane
 * through the stack (a 32-channel 3x3 depthwise conv: 44 -> 11 ns per position, one thread, measured). */
#ifndef FXSPARSE_COMMON_H
#define FXSPARSE_COMMON_H
#include <stdint.h>

enum { ACT_NONE = 0, ACT_RELU = 1, ACT_CLAMP = 2, ACT_HARDSWISH = 3 };

static inline float activate(float v, int act, float lo, float hi) {
    if (act == ACT_RELU) return v > 0.f ? v : 0.f;
    if (act == ACT_CLAMP) return v < lo ? lo : (v > hi ? hi : v);
    if (act == ACT_HARDSWISH) {  /* PyTorch's: x * min(max(x + 3, 0), 6) / 6 */
        float r = v + 3.f;
        r = r < 0.f ? 0.f : (r > 6.f ? 6.f : r);
        return v * r / 6.f;
    }
    return v;
}

#define LANES 16
typedef float vf __attribute__((vector_size(64), aligned(4), may_alias));
typedef int32_t vi __attribute__((vector_size(64), aligned(4), may_alias));
typedef float vf8 __attribute__((vector_size(32), aligned(4), may_alias));
typedef int32_t vi8 __attribute__((vector_size(32), aligned(4), may_alias));

/* v in every lane: a scalar operand of a vector operation is broadcast; v - 0 is v exactly (also for -0, where
 * 0 + v is not), so the compiler emits the broadcast alone */
#define SPLAT(V, v) ((v) - (V){0})
static inline vf splat(float v) { return SPLAT(vf, v); }

/* activate() on a vector V (integer vector I of the same lanes): the same operations in the same order */
#define ACTIVATE_VECTOR(NAME, V, I)                                                                    \
    static inline V NAME(V v, int act, float lo, float hi) {                                           \
        const V zero = (V){0}, l = SPLAT(V, lo), h = SPLAT(V, hi), three = SPLAT(V, 3.f), six = SPLAT(V, 6.f);      \
        if (act == ACT_RELU) return (V)(((I)v & (v > zero)));                                          \
        if (act == ACT_CLAMP) {                                                                        \
            const I below = v < l, above = v > h;                                                      \
            const V upper = (V)(((I)h & above) | ((I)v & ~above));                                     \
            return (V)(((I)l & below) | ((I)upper & ~below));                                          \
        }                                                                                              \
        if (act == ACT_HARDSWISH) {                                                                    \
            V r = v + three;                                                                           \
            const I neg = r < zero, big = r > six;                                                     \
            r = (V)(((I)six & big) | ((I)r & ~big));                                                   \
            r = (V)((I)r & ~neg);                                                                      \
            return v * r / six;                                                                        \
        }                                                                                              \
        return v;                                                                                      \
    }

ACTIVATE_VECTOR(activate_vec, vf, vi)
ACTIVATE_VECTOR(activate_vec8, vf8, vi8)

/* The taps k of a window starting at `start` (stride-scaled output index minus padding) with dilation d
 * that land inside [0, n): k0 <= k < k1. */
static inline void inside(int64_t start, int64_t d, int64_t k, int64_t n, int64_t* k0, int64_t* k1) {
    int64_t a = 0, b = k;
    while (a < b && start + a * d < 0) ++a;
    while (b > a && start + (b - 1) * d >= n) --b;
    *k0 = a;
    *k1 = b;
}

/* Output columns [*lo, *hi) whose windows (kernel kw, stride sw, left padding pl, dilation dw) lie inside an
 * image w wide. */
static inline void interior(int64_t pl, int64_t sw, int64_t w, int64_t kw, int64_t dw, int64_t* lo, int64_t* hi) {
    *lo = (pl + sw - 1) / sw;
    const int64_t last = w - 1 - (kw - 1) * dw + pl; /* the largest ox * sw allowed */
    *hi = last < 0 ? 0 : last / sw + 1;
}

/* Do the changes fill under a quarter of the box (lines x width)? The kernels then hand its rows to the threads
 * in turn instead of in contiguous halves (depthwise.c). */
#define SCATTERED(changed, lines, width) ((changed) * 4 < (lines) * (width))

/* A mask's bounding box, found while a kernel passes over the mask anyway (input difference, clean-up, mask
 * box): a row, or a piece of one, with set entries gives its first and last one, searched only there
 * (SET_EXTENT); GROW_BOX widens the caller's y0, y1, x0, x1 (OpenMP min / max reductions) by row y's columns
 * [lo, hi]; PUT_BOX stores them (y0 = H when nothing is set). */
#define SET_EXTENT(r, n, IS_SET, lo, hi) \
    do {                                 \
        lo = 0;                          \
        hi = (n) - 1;                    \
        while (!IS_SET((r)[lo])) ++lo;   \
        while (!IS_SET((r)[hi])) --hi;   \
    } while (0)
#define GROW_BOX(y, lo, hi)                           \
    do {                                              \
        y0 = (y) < y0 ? (y) : y0;                     \
        y1 = (y) + 1 > y1 ? (y) + 1 : y1;             \
        x0 = (lo) < x0 ? (lo) : x0;                   \
        x1 = (hi) + 1 > x1 ? (hi) + 1 : x1;           \
    } while (0)
#define PUT_BOX(box) \
    do {             \
        box[0] = y0; \
        box[1] = y1; \
        box[2] = x0; \
        box[3] = x1; \
    } while (0)
#define IS_SET_F32(v) ((v) > 0.f)
#define IS_SET_U8(v) ((v) != 0)

/* Note [Native call arguments] (native.py): the per-call kernels take their arguments as one int64 array
 * (pointers as integers, 0 for NULL) and one float array; A(T, i) reads entry i as T. */
#define A(T, i) ((T)(intptr_t)a[i])

#endif
