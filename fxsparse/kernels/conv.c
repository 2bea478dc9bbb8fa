/* Note [Native conv]: a conv (groups 1: a 1x1 conv, a stem over the frame's channels, a small 3x3 conv)
 * recomputed at the changed positions of an output box, found by scanning its change mask there, reading the
 * input cache and writing the output cache in place (channels-last rows: [B * H * W, Cin] in,
 * [B * Ho * Wo, N] out), with the bias, a residual (rows like the output's) and the activation applied before
 * the one store. Built and loaded by fxsparse/kernels/native.py. */
#include <stdint.h>

#include "common.h"

#define GROUP 12

/* One call's conv. w: the weight [KH * KW * Cin, N] (rows in tap-major, then input channel order) in panels
 * (panel()); bias: [N] or NULL; res: rows [B * Ho * Wo, N] or NULL. */
typedef struct {
    const float *in, *w, *bias, *res;
    float* out;
    int64_t Cin, N, H, W, Ho, Wo, KH, KW, sh, sw, pt, pl, dh, dw;
    int act;
    float lo, hi;
} conv_t;

/* The weight in panels: every 64 output channels' columns [K, 64] stored whole, one after another, then the
 * last N % 64 channels' [K, N % 64]: a block of output channels reads its weights as one contiguous stream
 * (with rows N apart a [960, 320] conv read 20 cache lines per input channel). Returns the column n0 of its
 * panel's first row and, in *stride, the panel's row length. */
static inline const float* panel(const conv_t* g, int64_t n0, int64_t* stride) {
    const int64_t K = g->KH * g->KW * g->Cin, full = g->N / 64 * 64;
    *stride = n0 < full ? 64 : g->N - full;
    return n0 < full ? g->w + n0 / 64 * 64 * K + n0 % 64 : g->w + full * K + (n0 - full);
}

/* Output channels n0 .. n0 + NB * lanes of P positions sharing their in-image taps (rows ky0..ky1, columns
 * kx0..kx1): the output rows q[p] and the input index of each window's origin x[p] (may lie outside the
 * image; only in-image taps are read). P * NB accumulators stay in registers over all taps and input
 * channels; each weight vector is loaded once for the P positions, each input value broadcast once for the NB
 * vectors. */
#define CONV_BLOCK(NAME, P, NB, V, LANES_, ACTIVATE)                                                    \
    static inline void NAME(const conv_t* g, const int64_t* q, const int64_t* x, int64_t n0, int64_t ky0,  \
                            int64_t ky1, int64_t kx0, int64_t kx1) {                                    \
        V acc[P][NB];                                                                                   \
        int64_t stride;                                                                                 \
        const float* w0 = panel(g, n0, &stride);                                                        \
        for (int p = 0; p < (P); ++p)                                                                   \
            for (int j = 0; j < (NB); ++j)                                                              \
                acc[p][j] = g->bias ? *(const V*)(g->bias + n0 + j * (LANES_)) : (V){0};                \
        for (int64_t ky = ky0; ky < ky1; ++ky)                                                          \
            for (int64_t kx = kx0; kx < kx1; ++kx) {                                                    \
                const int64_t off = (ky * g->dh * g->W + kx * g->dw) * g->Cin;                          \
                const float* wt = w0 + (ky * g->KW + kx) * g->Cin * stride;                             \
                for (int64_t c = 0; c < g->Cin; ++c) {                                                  \
                    V w[NB];                                                                            \
                    for (int j = 0; j < (NB); ++j) w[j] = *(const V*)(wt + c * stride + j * (LANES_));   \
                    for (int p = 0; p < (P); ++p) {                                                     \
                        const V xb = SPLAT(V, g->in[x[p] + off + c]);                                   \
                        for (int j = 0; j < (NB); ++j) acc[p][j] += xb * w[j];                          \
                    }                                                                                   \
                }                                                                                       \
            }                                                                                           \
        for (int p = 0; p < (P); ++p)                                                                   \
            for (int j = 0; j < (NB); ++j) {                                                            \
                const int64_t at = q[p] * g->N + n0 + j * (LANES_);                                     \
                V v = acc[p][j];                                                                        \
                if (g->res) v += *(const V*)(g->res + at);                                              \
                *(V*)(g->out + at) = ACTIVATE(v, g->act, g->lo, g->hi);                                 \
            }                                                                                           \
    }

CONV_BLOCK(six_64, 6, 4, vf, LANES, activate_vec)
CONV_BLOCK(four_64, 4, 4, vf, LANES, activate_vec)
CONV_BLOCK(four_32, 4, 2, vf, LANES, activate_vec)
CONV_BLOCK(eight_16, 8, 1, vf, LANES, activate_vec)
CONV_BLOCK(four_16, 4, 1, vf, LANES, activate_vec)
CONV_BLOCK(eight_8, 8, 1, vf8, 8, activate_vec8)
CONV_BLOCK(four_8, 4, 1, vf8, 8, activate_vec8)
CONV_BLOCK(one_64, 1, 4, vf, LANES, activate_vec)
CONV_BLOCK(one_32, 1, 2, vf, LANES, activate_vec)
CONV_BLOCK(one_16, 1, 1, vf, LANES, activate_vec)
CONV_BLOCK(one_8, 1, 1, vf8, 8, activate_vec8)

/* Every output channel of the n <= GROUP positions (q, x) sharing the taps ky0..ky1 x kx0..kx1: channels in
 * blocks of 64 for six positions at a time (24 accumulators: each weight vector serves six positions; four
 * served only four, and large weights stream from L2), then four; blocks of 32 for four, of 16 and 8 for eight
 * then four (eight accumulators or more in flight); positions left over one by one, the last N % 8 channels
 * one by one. */
static void positions(const conv_t* g, const int64_t* q, const int64_t* x, int n, int64_t ky0, int64_t ky1,
                      int64_t kx0, int64_t kx1) {
    int64_t n0 = 0;
#define BLOCKS(WIDTH, GROUP1, MANY, GROUP2, FEW, ONE)                                                   \
    for (; n0 + (WIDTH) <= g->N; n0 += (WIDTH)) {                                                       \
        int p = 0;                                                                                      \
        for (; p + (GROUP1) <= n; p += (GROUP1)) MANY(g, q + p, x + p, n0, ky0, ky1, kx0, kx1);         \
        for (; p + (GROUP2) <= n; p += (GROUP2)) FEW(g, q + p, x + p, n0, ky0, ky1, kx0, kx1);          \
        for (; p < n; ++p) ONE(g, q + p, x + p, n0, ky0, ky1, kx0, kx1);                                \
    }
    BLOCKS(64, 6, six_64, 4, four_64, one_64)
    BLOCKS(32, 4, four_32, 4, four_32, one_32)
    BLOCKS(16, 8, eight_16, 4, four_16, one_16)
    BLOCKS(8, 8, eight_8, 4, four_8, one_8)
#undef BLOCKS
    for (; n0 < g->N; ++n0)
        for (int p = 0; p < n; ++p) {
            int64_t stride;
            const float* w0 = panel(g, n0, &stride);
            float acc = g->bias ? g->bias[n0] : 0.f;
            for (int64_t ky = ky0; ky < ky1; ++ky)
                for (int64_t kx = kx0; kx < kx1; ++kx) {
                    const int64_t off = x[p] + (ky * g->dh * g->W + kx * g->dw) * g->Cin;
                    const float* wt = w0 + (ky * g->KW + kx) * g->Cin * stride;
                    for (int64_t c = 0; c < g->Cin; ++c) acc += g->in[off + c] * wt[c * stride];
                }
            if (g->res) acc += g->res[q[p] * g->N + n0];
            g->out[q[p] * g->N + n0] = activate(acc, g->act, g->lo, g->hi);
        }
}

/* Positions gathered for one call of positions(): up to GROUP with the same vertical taps ky0..ky1 and every
 * horizontal tap inside the image, from one output row or several (a thread keeps one group across its rows:
 * fewer positions are left over one by one at a row's end). */
typedef struct {
    int64_t q[GROUP], x[GROUP], ky0, ky1;
    int n;
} group_t;

static inline void flush(const conv_t* g, group_t* grp) {
    if (grp->n) positions(g, grp->q, grp->x, grp->n, grp->ky0, grp->ky1, 0, g->KW);
    grp->n = 0;
}

/* Output row oy of stream b: its changed positions in [x0, x1); those whose windows lie inside the image
 * horizontally go into the group (any of the row share their taps), the others one by one. */
static inline void masked_line(const conv_t* g, const float* mask, int64_t b, int64_t oy, int64_t x0, int64_t x1,
                               int64_t in_lo, int64_t in_hi, group_t* grp) {
    const int64_t iy = oy * g->sh - g->pt;
    const float* m = mask + (b * g->Ho + oy) * g->Wo;
    int64_t ky0, ky1;
    inside(iy, g->dh, g->KH, g->H, &ky0, &ky1);
    if (grp->n && (ky0 != grp->ky0 || ky1 != grp->ky1)) flush(g, grp);
    grp->ky0 = ky0;
    grp->ky1 = ky1;
    for (int64_t ox = x0; ox < x1; ++ox) {
        if (!(m[ox] > 0.f)) continue;
        const int64_t at = (b * g->Ho + oy) * g->Wo + ox, ix = ox * g->sw - g->pl;
        const int64_t origin = ((b * g->H + iy) * g->W + ix) * g->Cin;
        if (ox >= in_lo && ox < in_hi) {
            grp->q[grp->n] = at;
            grp->x[grp->n++] = origin;
            if (grp->n == GROUP) flush(g, grp);
        } else {
            int64_t kx0, kx1;
            inside(ix, g->dw, g->KW, g->W, &kx0, &kx1);
            positions(g, &at, &origin, 1, ky0, ky1, kx0, kx1);
        }
    }
}

/* The changed positions (mask > 0; mask: [B, 1, Ho, Wo]) of output box [y0, y1) x [x0, x1) of every stream, row
 * by row; threads take contiguous halves of the rows, or rows in turn where the changes are scattered
 * (SCATTERED, common.h). */
static void conv_masked(const float* in, float* out, const float* w, const float* bias, const float* res,
                        const float* mask, int64_t B, int64_t Cin, int64_t N, int64_t H, int64_t W, int64_t Ho,
                        int64_t Wo, int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t pt, int64_t pl,
                        int64_t dh, int64_t dw, int64_t y0, int64_t y1, int64_t x0, int64_t x1, int64_t changed,
                        int act, float lo, float hi) {
    const conv_t g = {in, w, bias, res, out, Cin, N, H, W, Ho, Wo, KH, KW, sh, sw, pt, pl, dh, dw, act, lo, hi};
    const int64_t rows = y1 - y0, lines = B * rows;
    const int threads = changed * KH * KW * Cin * N > 200000;  /* worth waking them */
    const int scattered = SCATTERED(changed, lines, x1 - x0);
    int64_t in_lo, in_hi;
    interior(pl, sw, W, KW, dw, &in_lo, &in_hi);
    #pragma omp parallel if (threads)
    {
        group_t grp = {.n = 0};
        if (scattered) {
            #pragma omp for schedule(static, 1)
            for (int64_t line = 0; line < lines; ++line)
                masked_line(&g, mask, line / rows, y0 + line % rows, x0, x1, in_lo, in_hi, &grp);
        } else {
            #pragma omp for schedule(static)
            for (int64_t line = 0; line < lines; ++line)
                masked_line(&g, mask, line / rows, y0 + line % rows, x0, x1, in_lo, in_hi, &grp);
        }
        flush(&g, &grp);
    }
}

/* conv_masked's arguments in order, as Note [Native call arguments] packs them (f: the activation's lo, hi). */
void fxsparse_conv_masked(const int64_t* a, const float* f) {
    conv_masked(A(const float*, 0), A(float*, 1), A(const float*, 2), A(const float*, 3), A(const float*, 4),
                A(const float*, 5), a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15], a[16], a[17],
                a[18], a[19], a[20], a[21], a[22], a[23], a[24], a[25], (int)a[26], f[0], f[1]);
}
