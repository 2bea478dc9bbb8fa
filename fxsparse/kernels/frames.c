/* Note [Native input difference]: the input change mask of float32 NCHW frames in one pass: per pixel the
 * largest |x - ref| over channels, compared with the threshold, written as a 0/1 float mask; per stream the
 * number of changed pixels, and the largest difference overall (NaN if any difference is NaN, so that bad
 * frames are caught). Built and loaded by fxsparse/kernels/native.py. */
#include <stdint.h>
#include <math.h>

void fxsparse_input_diff(const float* x, const float* ref, float* mask, int64_t B, int64_t C, int64_t HW,
                         float threshold, int64_t* counts, float* largest) {
    float top = 0.f;
    int bad = 0;
    for (int64_t b = 0; b < B; ++b) {
        const float* xb = x + b * C * HW;
        const float* rb = ref + b * C * HW;
        float* mb = mask + b * HW;
        int64_t count = 0;
        #pragma omp parallel for schedule(static) reduction(+ : count) reduction(max : top) reduction(| : bad)
        for (int64_t p0 = 0; p0 < HW; p0 += 4096) {
            const int64_t p1 = p0 + 4096 < HW ? p0 + 4096 : HW;
            float d[4096];
            for (int64_t p = p0; p < p1; ++p) d[p - p0] = fabsf(xb[p] - rb[p]);
            for (int64_t c = 1; c < C; ++c) {
                const float* xc = xb + c * HW;
                const float* rc = rb + c * HW;
                for (int64_t p = p0; p < p1; ++p) {
                    const float v = fabsf(xc[p] - rc[p]);
                    d[p - p0] = v > d[p - p0] ? v : d[p - p0];
                    bad |= v != v;
                }
            }
            for (int64_t p = p0; p < p1; ++p) {
                const float v = d[p - p0];
                bad |= v != v;
                const int changed = v > threshold;
                mb[p] = (float)changed;
                count += changed;
                top = v > top ? v : top;
            }
        }
        counts[b] = count;
    }
    *largest = bad ? NAN : top;
}

/* The same for uint8 frames: the difference is max - min (x - ref would wrap around), in pixel units. */
void fxsparse_input_diff_u8(const uint8_t* x, const uint8_t* ref, float* mask, int64_t B, int64_t C, int64_t HW,
                            float threshold, int64_t* counts, float* largest) {
    int top = 0;
    for (int64_t b = 0; b < B; ++b) {
        const uint8_t* xb = x + b * C * HW;
        const uint8_t* rb = ref + b * C * HW;
        float* mb = mask + b * HW;
        int64_t count = 0;
        #pragma omp parallel for schedule(static) reduction(+ : count) reduction(max : top)
        for (int64_t p0 = 0; p0 < HW; p0 += 4096) {
            const int64_t p1 = p0 + 4096 < HW ? p0 + 4096 : HW;
            uint8_t d[4096];
            for (int64_t p = p0; p < p1; ++p) d[p - p0] = xb[p] > rb[p] ? xb[p] - rb[p] : rb[p] - xb[p];
            for (int64_t c = 1; c < C; ++c) {
                const uint8_t* xc = xb + c * HW;
                const uint8_t* rc = rb + c * HW;
                for (int64_t p = p0; p < p1; ++p) {
                    const uint8_t v = xc[p] > rc[p] ? xc[p] - rc[p] : rc[p] - xc[p];
                    d[p - p0] = v > d[p - p0] ? v : d[p - p0];
                }
            }
            for (int64_t p = p0; p < p1; ++p) {
                const int v = d[p - p0];
                const int changed = (float)v > threshold;
                mb[p] = (float)changed;
                count += changed;
                top = v > top ? v : top;
            }
        }
        counts[b] = count;
    }
    *largest = (float)top;
}
