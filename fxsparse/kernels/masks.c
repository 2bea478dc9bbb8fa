/* Note [Native mask footprint]: the footprint of a window op on a 0/1 change mask ([B, 1, H, W], float32)
 * inside the output box it can reach: out = max over the window's taps, zero outside the image; counts[b]
 * (when not NULL): the changed outputs of stream b, so the engine needs no sum over the new mask. Built and
 * loaded by fxsparse/kernels/native.py with depthwise.c. */
#include <stdint.h>

#include "common.h"

static void window_max(const float* mask, float* out, int64_t B, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                       int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t dh,
                       int64_t dw, int64_t oy0, int64_t oy1, int64_t ox0, int64_t ox1, int64_t* counts) {
    /* the input columns the box reads */
    const int64_t ix0 = ox0 * sw - pl < 0 ? 0 : ox0 * sw - pl;
    const int64_t ix1 = (ox1 - 1) * sw - pl + (KW - 1) * dw + 1 > W ? W : (ox1 - 1) * sw - pl + (KW - 1) * dw + 1;
    const int64_t span = ix1 - ix0;
    for (int64_t b = 0; b < B; ++b) {
        if (span <= 0) {  /* every window reads padding only */
            for (int64_t oy = oy0; oy < oy1; ++oy)
                for (int64_t ox = ox0; ox < ox1; ++ox) out[(b * Ho + oy) * Wo + ox] = 0.f;
            if (counts) counts[b] = 0;
            continue;
        }
        const float* m = mask + b * H * W;
        float* o = out + b * Ho * Wo;
        int64_t count = 0;
        #pragma omp parallel for schedule(static) reduction(+ : count) \
            if ((oy1 - oy0) * (span * KH + (ox1 - ox0) * KW) > 400000)
        for (int64_t oy = oy0; oy < oy1; ++oy) {
            /* separably: each column's maximum over the window's rows (a vector loop), then each output's over
             * its columns. A row without a change in the columns read writes zeros at once: one box spans every
             * stream's changes, so most of another stream's rows are empty (mobilenet_v2, 4 streams: 6.3 -> 2.7
             * ms per frame) */
            float column[span];
            for (int64_t i = 0; i < span; ++i) column[i] = 0.f;
            for (int64_t ky = 0; ky < KH; ++ky) {
                const int64_t iy = oy * sh - pt + ky * dh;
                if (iy < 0 || iy >= H) continue;
                const float* r = m + iy * W + ix0;
                for (int64_t i = 0; i < span; ++i) column[i] = r[i] > column[i] ? r[i] : column[i];
            }
            int any = 0;
            for (int64_t i = 0; i < span; ++i) any |= column[i] > 0.f;
            float* row = o + oy * Wo;
            if (!any) {
                for (int64_t ox = ox0; ox < ox1; ++ox) row[ox] = 0.f;
                continue;
            }
            for (int64_t ox = ox0; ox < ox1; ++ox) {
                float v = 0.f;
                for (int64_t kx = 0; kx < KW; ++kx) {
                    const int64_t ix = ox * sw - pl + kx * dw;  /* in the image: within [ix0, ix1) */
                    if (ix >= 0 && ix < W && column[ix - ix0] > v) v = column[ix - ix0];
                }
                row[ox] = v;
                count += v > 0.f;
            }
        }
        if (counts) counts[b] = count;
    }
}

/* window_max's arguments in order, as Note [Native call arguments] packs them. */
void fxsparse_window_max(const int64_t* a, const float* f) {
    (void)f;
    window_max(A(const float*, 0), A(float*, 1), a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11],
               a[12], a[13], a[14], a[15], a[16], a[17], a[18], A(int64_t*, 19));
}

/* Note [Native mask box]: the bounding box of a 0/1 mask's set entries over every stream ([B, 1, H, W]
 * float32), written to box[0..3] = y0, y1, x0, x1 (y0 = H when nothing is set): a count per row that
 * vectorizes, and the row's first and last set entry searched only in rows with any. Two reductions, the
 * nonzero calls and their conversions in PyTorch cost 0.13 ms for a 576x768 mask here (0.37 ms in a frame,
 * out of cache), 30 us even for a 1x1 mask. */
void fxsparse_mask_box(const float* mask, int64_t B, int64_t H, int64_t W, int64_t* box) {
    int64_t y0 = H, y1 = 0, x0 = W, x1 = 0;
    #pragma omp parallel for schedule(static) reduction(min : y0, x0) reduction(max : y1, x1) if (B * H * W > 200000)
    for (int64_t line = 0; line < B * H; ++line) {
        const float* m = mask + line * W;
        int64_t count = 0;
        for (int64_t x = 0; x < W; ++x) count += m[x] > 0.f;
        if (!count) continue;
        const int64_t y = line % H;
        int64_t first, last;
        SET_EXTENT(m, W, IS_SET_F32, first, last);
        GROW_BOX(y, first, last);
    }
    PUT_BOX(box);
}
