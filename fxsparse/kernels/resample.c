/* Note [Native bilinear upsample]: a segmenter's last op upsamples its class scores to the frame (LR-ASPP and
 * DeepLabV3 at 576x768: 21 x 72 x 96 -> 21 x 576 x 768, x8), and it changes everywhere whenever anything
 * changed (their pooled branches, Note [Direct outputs]). PyTorch's CPU kernel computes each output from four
 * strided loads with per-element index and weight lookups: 27 ms for that map (2 threads), a quarter of an LR-ASPP
 * frame, against 2-3 ms to copy it. Bilinear interpolation is separable: each input row is interpolated along x
 * once into an output-wide row (a gather from one short row), and each output row is then the blend of two of
 * those (a vector multiply-add). Ho / Hi output rows share each pair, so the gathers are 1/8 of the work at x8.
 * The arithmetic is PyTorch's, in its order: source index, lambdas, clamps (area_pixel_compute_source_index,
 * guard_index_and_lambda), then (a00 w0 + a01 w1) h0 + (a10 w0 + a11 w1) h1; tests compare with F.interpolate.
 *
 * ints: input, output (pointers), B, C, Hi, Wi, Ho, Wo, the input's strides (B, C, H, W, in elements),
 * align_corners, scale_h given, scale_w given; floats: 1/scale_h, 1/scale_w (rounded to float as PyTorch does).
 * The output is NCHW-contiguous. */
#include <math.h>
#include <stdint.h>

#include "common.h"

/* PyTorch's area_pixel_compute_scale (float opmath) */
static float ratio(int64_t in, int64_t out, int align, int given, float inverse_scale) {
    if (align) return out > 1 ? (float)(in - 1) / (float)(out - 1) : 0.f;
    return given ? inverse_scale : (float)in / (float)out;
}

/* Each output index's two source indices (times `stride`) and lambdas (compute_source_index_and_lambda). */
static void taps(int64_t in, int64_t out, float r, int align, int64_t stride, int32_t* i0, int32_t* i1, float* l0,
                 float* l1) {
    for (int64_t o = 0; o < out; ++o) {
        int64_t a = o, b = o;
        float w1 = 0.f;
        if (in != out) {
            float real = align ? r * (float)o : r * ((float)o + 0.5f) - 0.5f;
            if (!align && real < 0.f) real = 0.f;
            a = (int64_t)floorf(real);
            if (a > in - 1) a = in - 1;
            w1 = real - (float)a;
            w1 = w1 < 0.f ? 0.f : (w1 > 1.f ? 1.f : w1);
            b = a + (a < in - 1 ? 1 : 0);
        }
        i0[o] = (int32_t)(a * stride);
        i1[o] = (int32_t)(b * stride);
        l1[o] = w1;
        l0[o] = 1.f - w1;
    }
}

/* row[x] = src[i0[x]] l0[x] + src[i1[x]] l1[x] */
static void along_x(const float* src, const int32_t* i0, const int32_t* i1, const float* l0, const float* l1,
                    float* row, int64_t n) {
    for (int64_t x = 0; x < n; ++x) row[x] = src[i0[x]] * l0[x] + src[i1[x]] * l1[x];
}

void fxsparse_upsample_bilinear(const int64_t* a, const float* f) {
    const float* in = (const float*)(intptr_t)a[0];
    float* out = (float*)(intptr_t)a[1];
    const int64_t B = a[2], C = a[3], Hi = a[4], Wi = a[5], Ho = a[6], Wo = a[7];
    const int64_t sb = a[8], sc = a[9], sh = a[10], sw = a[11];
    const int align = (int)a[12];
    /* on the stack: the caller keeps Ho, Wo <= 16384 (native.py) */
    int32_t yi0[Ho], yi1[Ho], xi0[Wo], xi1[Wo];
    float yl0[Ho], yl1[Ho], xl0[Wo], xl1[Wo];
    taps(Hi, Ho, ratio(Hi, Ho, align, (int)a[13], f[0]), align, 1, yi0, yi1, yl0, yl1);
    taps(Wi, Wo, ratio(Wi, Wo, align, (int)a[14], f[1]), align, sw, xi0, xi1, xl0, xl1);
    /* blocks of output rows of one plane: enough of them to share both cores evenly; each block interpolates
     * along x only the input rows it blends (two at its start, then one per new source row) */
    const int64_t rows_per_block = 32, blocks = (Ho + rows_per_block - 1) / rows_per_block;
    #pragma omp parallel if (B * C * Ho * Wo > 200000)
    {
        float rows[2 * Wo];
        #pragma omp for schedule(static)
        for (int64_t item = 0; item < B * C * blocks; ++item) {
            const int64_t plane = item / blocks, y0 = item % blocks * rows_per_block;
            const int64_t y1 = y0 + rows_per_block < Ho ? y0 + rows_per_block : Ho;
            const float* src = in + plane / C * sb + plane % C * sc;
            float* dst = out + plane * Ho * Wo;
            float *top = rows, *bottom = rows + Wo;
            int64_t have_top = -1, have_bottom = -1;  /* the source rows held in top / bottom */
            for (int64_t y = y0; y < y1; ++y) {
                const int64_t r0 = yi0[y], r1 = yi1[y];
                if (have_top != r0) {
                    if (have_bottom == r0) {  /* moving down: the old bottom row is the new top */
                        float* t = top;
                        top = bottom;
                        bottom = t;
                        have_top = r0;
                        have_bottom = -1;
                    } else {
                        along_x(src + r0 * sh, xi0, xi1, xl0, xl1, top, Wo);
                        have_top = r0;
                    }
                }
                if (have_bottom != r1) {
                    along_x(src + r1 * sh, xi0, xi1, xl0, xl1, bottom, Wo);
                    have_bottom = r1;
                }
                const float h0 = yl0[y], h1 = yl1[y];
                float* o = dst + y * Wo;
                for (int64_t x = 0; x < Wo; ++x) o[x] = top[x] * h0 + bottom[x] * h1;
            }
        }
    }
}
