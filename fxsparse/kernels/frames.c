/* Note [Native input difference]: the input change mask of NCHW frames in one pass: per pixel the largest
 * channel difference to the reference, compared with the threshold, written as a 0/1 float mask; per stream
 * the number of changed pixels, and the largest difference overall (float32: NaN if any difference is NaN,
 * so that bad frames are caught; uint8: max - min, as x - ref would wrap around). Built and loaded by
 * fxsparse/kernels/native.py. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common.h"

static inline float diff_f32(float a, float b) { return fabsf(a - b); }
static inline uint8_t diff_u8(uint8_t a, uint8_t b) { return a > b ? a - b : b - a; }
/* A float's bits as an unsigned integer: for |differences| (no sign bit) the same order as the floats, so the
 * largest is an integer max, which gcc vectorizes (a float max reduction it leaves scalar without -ffast-math:
 * 0.74-1.10 ms for a 576x768 frame before). NaN bits sort above infinity; NaNs are flagged apart anyway. */
static inline uint32_t float_bits(float v) {
    union { float f; uint32_t u; } c = {v};
    return c.u;
}
static inline float bits_float(uint32_t v) {
    union { uint32_t u; float f; } c = {v};
    return c.f;
}
static inline int as_int(int v) { return v; }

/* One function per frame type T: DIFF(a, b) is |a - b| in T, IS_NAN(v) flags a bad difference; the
 * largest difference is kept in TOP, as ORDER(v) (int for uint8: the reduction vectorizes better than in
 * uint8), and turned back by UNORDER. Row by row (in pieces of at most 4096 pixels), so that a piece with
 * changes gives the changed columns' range from its first and last change: box[0..3] = y0, y1, x0, x1 of the
 * changes of every stream (y0 = H when none), which the engine would otherwise find in a second pass over the
 * mask. */
#define INPUT_DIFF(NAME, T, TOP, DIFF, IS_NAN, ORDER, UNORDER)                                                   \
    void NAME(const T* x, const T* ref, float* mask, int64_t B, int64_t C, int64_t H, int64_t W,             \
              float threshold, int64_t* counts, float* largest, int64_t* box) {                             \
        const int64_t HW = H * W;                                                                           \
        TOP top = 0;                                                                                        \
        int bad = 0;                                                                                        \
        int64_t y0 = H, y1 = 0, x0 = W, x1 = 0;                                                             \
        for (int64_t b = 0; b < B; ++b) {                                                                   \
            const T* xb = x + b * C * HW;                                                                   \
            const T* rb = ref + b * C * HW;                                                                 \
            float* mb = mask + b * HW;                                                                      \
            int64_t count = 0;                                                                              \
            _Pragma("omp parallel for schedule(static) reduction(+ : count) reduction(max : top, y1, x1) reduction(min : y0, x0) reduction(| : bad)") \
            for (int64_t y = 0; y < H; ++y) {                                                               \
                for (int64_t c0 = 0; c0 < W; c0 += 4096) {                                                  \
                    const int64_t n = W - c0 < 4096 ? W - c0 : 4096, p0 = y * W + c0;                       \
                    T d[4096];                                                                              \
                    for (int64_t i = 0; i < n; ++i) d[i] = DIFF(xb[p0 + i], rb[p0 + i]);                    \
                    for (int64_t c = 1; c < C; ++c) {                                                       \
                        const T* xc = xb + c * HW + p0;                                                     \
                        const T* rc = rb + c * HW + p0;                                                     \
                        for (int64_t i = 0; i < n; ++i) {                                                   \
                            const T v = DIFF(xc[i], rc[i]);                                                 \
                            d[i] = v > d[i] ? v : d[i];                                                     \
                            bad |= IS_NAN(v);                                                               \
                        }                                                                                   \
                    }                                                                                       \
                    int64_t piece = 0;                                                                      \
                    for (int64_t i = 0; i < n; ++i) {                                                       \
                        const T v = d[i];                                                                   \
                        bad |= IS_NAN(v);                                                                   \
                        const int changed = (float)v > threshold;                                           \
                        mb[p0 + i] = (float)changed;                                                        \
                        piece += changed;                                                                   \
                        const TOP o = ORDER(v);                                                             \
                        top = o > top ? o : top;                                                            \
                    }                                                                                       \
                    if (piece) {                                                                            \
                        int64_t lo, hi;                                                                     \
                        SET_EXTENT(mb + p0, n, IS_SET_F32, lo, hi);                                         \
                        count += piece;                                                                     \
                        GROW_BOX(y, c0 + lo, c0 + hi);                                                      \
                    }                                                                                       \
                }                                                                                           \
            }                                                                                               \
            counts[b] = count;                                                                              \
        }                                                                                                   \
        *largest = bad ? NAN : (float)UNORDER(top);                                                         \
        PUT_BOX(box);                                                                                       \
    }

#define FLOAT_IS_NAN(v) ((v) != (v))
#define NEVER_NAN(v) 0

INPUT_DIFF(fxsparse_input_diff, float, uint32_t, diff_f32, FLOAT_IS_NAN, float_bits, bits_float)
INPUT_DIFF(fxsparse_input_diff_u8, uint8_t, int, diff_u8, NEVER_NAN, as_int, as_int)

/* Are the n bytes at a and b the same? The unchanged-frame test of exact mode (after an unchanged frame), in
 * 64 KiB chunks shared among the threads: both frames are read once, at the memory bandwidth of both cores
 * (576x768 float32 frames, reference out of cache: 0.31 ms against 0.56 for torch.equal, one thread). */
int fxsparse_bytes_equal(const uint8_t* a, const uint8_t* b, int64_t n) {
    const int64_t chunk = 1 << 16, chunks = (n + chunk - 1) / chunk;
    int differ = 0;
    #pragma omp parallel for schedule(static) reduction(| : differ)
    for (int64_t k = 0; k < chunks; ++k) {
        const int64_t s = k * chunk, e = s + chunk < n ? s + chunk : n;
        differ |= memcmp(a + s, b + s, (size_t)(e - s)) != 0;
    }
    return !differ;
}

/* The reference frame brought up to date: inside box [y0, y1) x [x0, x1) of every stream, each pixel whose
 * mask is set takes the frame's values, in both copies of the reference: NCHW (ref, as the caller's frames)
 * and channels-last rows (rows, what the first layers read). One function per element size, so float32,
 * bfloat16 and uint8 frames share it. Only the changed pixels are touched: a box per batch spans every
 * stream's changes, and torch.where plus the two copies over it cost 5.4 ms per 4-stream mobilenet_v2 frame
 * (now 0.9 ms). */
#define UPDATE_REFERENCE(NAME, T)                                                                        \
    void NAME(const T* x, T* ref, T* rows, const float* mask, int64_t B, int64_t C, int64_t H, int64_t W,  \
              int64_t y0, int64_t y1, int64_t x0, int64_t x1) {                                         \
        const int64_t lines = B * (y1 - y0);                                                            \
        _Pragma("omp parallel for schedule(static) if (lines * (x1 - x0) > 100000)")                    \
        for (int64_t line = 0; line < lines; ++line) {                                                  \
            const int64_t b = line / (y1 - y0), y = y0 + line % (y1 - y0);                              \
            const float* m = mask + (b * H + y) * W;                                                    \
            for (int64_t px = x0; px < x1; ++px) {                                                      \
                if (!(m[px] > 0.f)) continue;                                                           \
                const int64_t p = y * W + px;                                                           \
                T* r = rows + (b * H * W + p) * C;                                                      \
                for (int64_t c = 0; c < C; ++c) {                                                       \
                    const int64_t at = (b * C + c) * H * W + p;                                         \
                    ref[at] = x[at];                                                                    \
                    r[c] = x[at];                                                                       \
                }                                                                                       \
            }                                                                                           \
        }                                                                                               \
    }

UPDATE_REFERENCE(fxsparse_update_reference_1, uint8_t)
UPDATE_REFERENCE(fxsparse_update_reference_2, uint16_t)
UPDATE_REFERENCE(fxsparse_update_reference_4, uint32_t)
