/* Note [Native input difference]: the input change mask of NCHW frames in one pass: per pixel the largest
 * channel difference to the reference, compared with the threshold, written as a 0/1 float mask; per stream
 * the number of changed pixels, and the largest difference overall (float32: NaN if any difference is NaN,
 * so that bad frames are caught; uint8: max - min, as x - ref would wrap around). Built and loaded by
 * fxsparse/kernels/native.py. */
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float diff_f32(float a, float b) { return fabsf(a - b); }
static inline uint8_t diff_u8(uint8_t a, uint8_t b) { return a > b ? a - b : b - a; }

/* One function per frame type T: DIFF(a, b) is |a - b| in T, IS_NAN(v) flags a bad difference; the
 * largest difference is kept in TOP (int for uint8: the reduction vectorizes better than in uint8). */
#define INPUT_DIFF(NAME, T, TOP, DIFF, IS_NAN)                                                                   \
    void NAME(const T* x, const T* ref, float* mask, int64_t B, int64_t C, int64_t HW, float threshold,       \
              int64_t* counts, float* largest) {                                                            \
        TOP top = 0;                                                                                        \
        int bad = 0;                                                                                        \
        for (int64_t b = 0; b < B; ++b) {                                                                   \
            const T* xb = x + b * C * HW;                                                                   \
            const T* rb = ref + b * C * HW;                                                                 \
            float* mb = mask + b * HW;                                                                      \
            int64_t count = 0;                                                                              \
            _Pragma("omp parallel for schedule(static) reduction(+ : count) reduction(max : top) reduction(| : bad)") \
            for (int64_t p0 = 0; p0 < HW; p0 += 4096) {                                                     \
                const int64_t p1 = p0 + 4096 < HW ? p0 + 4096 : HW;                                         \
                T d[4096];                                                                                  \
                for (int64_t p = p0; p < p1; ++p) d[p - p0] = DIFF(xb[p], rb[p]);                           \
                for (int64_t c = 1; c < C; ++c) {                                                           \
                    const T* xc = xb + c * HW;                                                              \
                    const T* rc = rb + c * HW;                                                              \
                    for (int64_t p = p0; p < p1; ++p) {                                                     \
                        const T v = DIFF(xc[p], rc[p]);                                                     \
                        d[p - p0] = v > d[p - p0] ? v : d[p - p0];                                          \
                        bad |= IS_NAN(v);                                                                   \
                    }                                                                                       \
                }                                                                                           \
                for (int64_t p = p0; p < p1; ++p) {                                                         \
                    const TOP v = d[p - p0];                                                                \
                    bad |= IS_NAN(v);                                                                       \
                    const int changed = (float)v > threshold;                                               \
                    mb[p] = (float)changed;                                                                 \
                    count += changed;                                                                       \
                    top = v > top ? v : top;                                                                \
                }                                                                                           \
            }                                                                                               \
            counts[b] = count;                                                                              \
        }                                                                                                   \
        *largest = bad ? NAN : (float)top;                                                                  \
    }

#define FLOAT_IS_NAN(v) ((v) != (v))
#define NEVER_NAN(v) 0

INPUT_DIFF(fxsparse_input_diff, float, float, diff_f32, FLOAT_IS_NAN)
INPUT_DIFF(fxsparse_input_diff_u8, uint8_t, int, diff_u8, NEVER_NAN)

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
