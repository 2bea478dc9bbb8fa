/* Note [Native pointwise]: a 1x1 conv (a GEMM per position) recomputed at the changed positions of a box,
 * found by scanning its change mask there, reading the input cache and writing the output cache in place
 * (channels-last rows: [B * H * W, K] in, [B * H * W, N] out), with the bias, a residual (rows like the
 * output's) and the activation applied before the one store. Built and loaded by fxsparse/kernels/native.py
 * with depthwise.c, whose vector type and activations it shares (vectors.h). */
#include <stdint.h>

#include "vectors.h"

/* One call's conv: weight [K, N] (input channel major), bias [N] or NULL, residual rows or NULL. */
typedef struct {
    const float *w, *bias, *res;
    int64_t K, N;
    int act;
    float lo, hi;
} pointwise_t;

/* Output channels n0 .. n0 + NB * lanes of P positions (their flat row indices q[0..P)): P * NB accumulators in
 * registers over the K input channels; each weight vector is loaded once for the P positions, each input
 * value broadcast once for the NB vectors. */
#define POINTWISE_BLOCK(NAME, P, NB, V, LANES_, ACTIVATE)                                               \
    static inline void NAME(const pointwise_t* g, const float* in, float* out, const int64_t* q, int64_t n0) { \
        V acc[P][NB];                                                                                   \
        const float* x[P];                                                                              \
        for (int p = 0; p < (P); ++p) {                                                                 \
            x[p] = in + q[p] * g->K;                                                                    \
            for (int j = 0; j < (NB); ++j)                                                              \
                acc[p][j] = g->bias ? *(const V*)(g->bias + n0 + j * (LANES_)) : (V){0};                \
        }                                                                                               \
        for (int64_t k = 0; k < g->K; ++k) {                                                            \
            const float* wk = g->w + k * g->N + n0;                                                     \
            V w[NB];                                                                                    \
            for (int j = 0; j < (NB); ++j) w[j] = *(const V*)(wk + j * (LANES_));                       \
            for (int p = 0; p < (P); ++p) {                                                             \
                const V xb = SPLAT(V, x[p][k]);                                                          \
                for (int j = 0; j < (NB); ++j) acc[p][j] += xb * w[j];                                  \
            }                                                                                           \
        }                                                                                               \
        for (int p = 0; p < (P); ++p)                                                                   \
            for (int j = 0; j < (NB); ++j) {                                                            \
                const int64_t at = q[p] * g->N + n0 + j * (LANES_);                                     \
                V v = acc[p][j];                                                                        \
                if (g->res) v += *(const V*)(g->res + at);                                              \
                *(V*)(out + at) = ACTIVATE(v, g->act, g->lo, g->hi);                                    \
            }                                                                                           \
    }

POINTWISE_BLOCK(four_64, 4, 4, vf, LANES, activate_vec)
POINTWISE_BLOCK(four_32, 4, 2, vf, LANES, activate_vec)
POINTWISE_BLOCK(eight_16, 8, 1, vf, LANES, activate_vec)
POINTWISE_BLOCK(eight_8, 8, 1, vf8, 8, activate_vec8)
POINTWISE_BLOCK(one_64, 1, 4, vf, LANES, activate_vec)
POINTWISE_BLOCK(one_32, 1, 2, vf, LANES, activate_vec)
POINTWISE_BLOCK(one_16, 1, 1, vf, LANES, activate_vec)
POINTWISE_BLOCK(one_8, 1, 1, vf8, 8, activate_vec8)

/* Every output channel of the n <= 8 positions q[0..n): channels in blocks of 64 and 32 for four positions at a
 * time, of 16 and 8 for eight (eight accumulators or more in flight), positions left over one by one, the last
 * N % 8 channels one by one. */
static void positions(const pointwise_t* g, const float* in, float* out, const int64_t* q, int n) {
    int64_t n0 = 0;
    for (; n0 + 64 <= g->N; n0 += 64) {
        int p = 0;
        for (; p + 4 <= n; p += 4) four_64(g, in, out, q + p, n0);
        for (; p < n; ++p) one_64(g, in, out, q + p, n0);
    }
    for (; n0 + 32 <= g->N; n0 += 32) {
        int p = 0;
        for (; p + 4 <= n; p += 4) four_32(g, in, out, q + p, n0);
        for (; p < n; ++p) one_32(g, in, out, q + p, n0);
    }
    for (; n0 + 16 <= g->N; n0 += 16) {
        int p = 0;
        for (; p + 8 <= n; p += 8) eight_16(g, in, out, q + p, n0);
        for (; p < n; ++p) one_16(g, in, out, q + p, n0);
    }
    for (; n0 + 8 <= g->N; n0 += 8) {
        int p = 0;
        for (; p + 8 <= n; p += 8) eight_8(g, in, out, q + p, n0);
        for (; p < n; ++p) one_8(g, in, out, q + p, n0);
    }
    for (; n0 < g->N; ++n0)
        for (int p = 0; p < n; ++p) {
            const float* x = in + q[p] * g->K;
            float acc = g->bias ? g->bias[n0] : 0.f;
            for (int64_t k = 0; k < g->K; ++k) acc += x[k] * g->w[k * g->N + n0];
            if (g->res) acc += g->res[q[p] * g->N + n0];
            out[q[p] * g->N + n0] = activate(acc, g->act, g->lo, g->hi);
        }
}

/* The changed positions (mask > 0) of box [y0, y1) x [x0, x1) of every stream; mask: [B, 1, H, W]. Work is
 * split by output rows; each task computes its positions eight at a time (any eight: they need not be
 * neighbours). */
void fxsparse_pointwise_masked(const float* in, float* out, const float* w, const float* bias, const float* res,
                               const float* mask, int64_t B, int64_t H, int64_t W, int64_t K, int64_t N,
                               int64_t y0, int64_t y1, int64_t x0, int64_t x1, int64_t changed, int act, float lo,
                               float hi) {
    const pointwise_t g = {w, bias, res, K, N, act, lo, hi};
    const int64_t rows = y1 - y0, lines = B * rows;
    #pragma omp parallel for schedule(static) if (changed * K * N > 200000)
    for (int64_t line = 0; line < lines; ++line) {
        const int64_t b = line / rows, y = y0 + line % rows, base = (b * H + y) * W;
        const float* m = mask + base;
        int64_t q[8];
        int n = 0;
        for (int64_t x = x0; x < x1; ++x) {
            if (m[x] > 0.f) {
                q[n++] = base + x;
                if (n == 8) {
                    positions(&g, in, out, q, 8);
                    n = 0;
                }
            }
        }
        positions(&g, in, out, q, n);
    }
}
