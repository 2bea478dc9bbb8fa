/* Note [Native depthwise]: a depthwise conv recomputed at the changed positions of an output box, reading and
 * writing the activation caches in place (channels-last rows: [B * H * W, C] in, [B * Ho * Wo, C] out), with
 * the bias and the activation applied before the one store. Built and loaded by fxsparse/kernels/native.py. */
#include <stdint.h>

#include "common.h"

/* One call's conv: its geometry, weights and activation. */
typedef struct {
    const float *taps, *bias;  /* taps: [KH * KW, C] (tap-major); bias: [C] or NULL */
    int64_t C, H, W, KH, KW, sh, sw, pt, pl, dh, dw;
    int act;
    float lo, hi;
} conv_t;

/* Channels c0 .. c0 + N * L (N vectors V of L lanes) of P neighbouring positions (ox, ox + 1, ...; same output
 * row, the same taps inside the image): P * N accumulators stay in registers over all taps and each tap's weights are loaded once
 * for the P positions. Several accumulators are what makes it fast: one alone waits on each multiply-add's
 * latency (32 channels, one position at a time: 25 ns per position; four at a time: 11). */
#define BLOCK(P, N, V, L, ACTIVATE)                                                                         \
    for (; c0 + (N) * (L) <= g->C; c0 += (N) * (L)) {                                                       \
        V acc[P][N];                                                                                        \
        for (int p = 0; p < (P); ++p)                                                                       \
            for (int j = 0; j < (N); ++j) acc[p][j] = g->bias ? *(const V*)(g->bias + c0 + j * (L)) : (V){0}; \
        for (int64_t ky = ky0; ky < ky1; ++ky) {                                                            \
            const float* xrow = src + ((iy + ky * g->dh) * g->W + ix) * g->C + c0;                          \
            for (int64_t kx = kx0; kx < kx1; ++kx) {                                                        \
                const float* wk = g->taps + (ky * g->KW + kx) * g->C + c0;                                  \
                const float* xk = xrow + kx * g->dw * g->C;                                                 \
                for (int j = 0; j < (N); ++j) {                                                             \
                    const V w = *(const V*)(wk + j * (L));                                                  \
                    for (int p = 0; p < (P); ++p) acc[p][j] += w * *(const V*)(xk + p * step + j * (L));    \
                }                                                                                           \
            }                                                                                               \
        }                                                                                                   \
        for (int p = 0; p < (P); ++p)                                                                       \
            for (int j = 0; j < (N); ++j)                                                                   \
                *(V*)(o + p * g->C + c0 + j * (L)) = ACTIVATE(acc[p][j], g->act, g->lo, g->hi);             \
    }

/* P positions from (oy, ox) along the row, written to o (P consecutive output rows). P > 1 only where every
 * window lies inside the image horizontally (callers check: interior(), common.h). */
#define GROUP(NAME, P)                                                                                      \
    static void NAME(const conv_t* g, const float* src, float* o, int64_t oy, int64_t ox) {                 \
        const int64_t iy = oy * g->sh - g->pt, ix = ox * g->sw - g->pl, step = g->sw * g->C;                \
        int64_t ky0, ky1, kx0, kx1, c0 = 0;                                                                 \
        inside(iy, g->dh, g->KH, g->H, &ky0, &ky1);                                                         \
        inside(ix, g->dw, g->KW, g->W, &kx0, &kx1);                                                         \
        BLOCK(P, 2, vf, LANES, activate_vec)                                                                \
        BLOCK(P, 1, vf, LANES, activate_vec)                                                                \
        BLOCK(P, 1, vf8, 8, activate_vec8) /* 72 or 120 channels end in 8: one at a time they cost 3x */    \
        for (; c0 < g->C; ++c0) /* the last C % 8 channels, one at a time */                                \
            for (int p = 0; p < (P); ++p) {                                                                 \
                float acc = g->bias ? g->bias[c0] : 0.f;                                                    \
                for (int64_t ky = ky0; ky < ky1; ++ky)                                                      \
                    for (int64_t kx = kx0; kx < kx1; ++kx)                                                  \
                        acc += g->taps[(ky * g->KW + kx) * g->C + c0] *                                     \
                               src[((iy + ky * g->dh) * g->W + ix + kx * g->dw) * g->C + p * step + c0];    \
                o[p * g->C + c0] = activate(acc, g->act, g->lo, g->hi);                                     \
            }                                                                                               \
    }

GROUP(one, 1)
GROUP(four, 4)

/* threads only where the work outweighs waking them (~0.2 M multiply-adds, measured) */
#define WORTH_THREADS(positions) ((positions) * C * KH * KW > 200000)

#define CONV_T {taps, bias, C, H, W, KH, KW, sh, sw, pt, pl, dh, dw, act, lo, hi}

/* Output row oy of stream b: its changed positions in [ox0, ox1), runs of four changed neighbours through four(),
 * the rest through one(). */
static inline void masked_line(const conv_t* g, const float* in, float* out, const float* mask, int64_t b, int64_t Ho,
                               int64_t Wo, int64_t oy, int64_t ox0, int64_t ox1, int64_t in_lo, int64_t in_hi) {
    const float* src = in + b * g->H * g->W * g->C;
    const float* m = mask + (b * Ho + oy) * Wo;
    float* o = out + (b * Ho + oy) * Wo * g->C;
    for (int64_t ox = ox0; ox < ox1;) {
        if (!(m[ox] > 0.f)) {
            ++ox;
        } else if (ox >= in_lo && ox + 4 <= in_hi && ox + 4 <= ox1 && m[ox + 1] > 0.f && m[ox + 2] > 0.f &&
                   m[ox + 3] > 0.f) {
            four(g, src, o + ox * g->C, oy, ox);
            ox += 4;
        } else {
            one(g, src, o + ox * g->C, oy, ox);
            ++ox;
        }
    }
}

/* The changed positions (mask > 0; mask: [B, 1, Ho, Wo]) of output box [oy0, oy1) x [ox0, ox1) of every stream:
 * the box scanned row by row. No list of positions and nothing computed where nothing changed. Threads take
 * contiguous halves of the rows (neighbouring rows share input rows in each core's cache), or rows in turn where
 * the changes fill under a quarter of the box (scattered changes: halves of the rows hold unequal work; CDnet
 * highway at 16/255, mobilenet_v2: 0.91 of the time, where a tight change ran 1.03-1.06 in turn). */
static void depthwise_masked(const float* in, float* out, const float* taps, const float* bias, const float* mask,
                             int64_t B, int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t KH,
                             int64_t KW, int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t dh, int64_t dw,
                             int64_t oy0, int64_t oy1, int64_t ox0, int64_t ox1, int64_t changed, int act, float lo,
                             float hi) {
    const conv_t g = CONV_T;
    const int64_t rows = oy1 - oy0, lines = B * rows;
    int64_t in_lo, in_hi;
    interior(pl, sw, W, KW, dw, &in_lo, &in_hi);
    if (SCATTERED(changed, lines, ox1 - ox0)) {
        #pragma omp parallel for schedule(static, 1) if (WORTH_THREADS(changed))
        for (int64_t line = 0; line < lines; ++line)
            masked_line(&g, in, out, mask, line / rows, Ho, Wo, oy0 + line % rows, ox0, ox1, in_lo, in_hi);
    } else {
        #pragma omp parallel for schedule(static) if (WORTH_THREADS(changed))
        for (int64_t line = 0; line < lines; ++line)
            masked_line(&g, in, out, mask, line / rows, Ho, Wo, oy0 + line % rows, ox0, ox1, in_lo, in_hi);
    }
}

/* depthwise_masked's arguments in order, as Note [Native call arguments] packs them (f: the activation's lo, hi). */
void fxsparse_depthwise_masked(const int64_t* a, const float* f) {
    depthwise_masked(A(const float*, 0), A(float*, 1), A(const float*, 2), A(const float*, 3), A(const float*, 4),
                     a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15], a[16], a[17], a[18],
                     a[19], a[20], a[21], a[22], a[23], (int)a[24], f[0], f[1]);
}
