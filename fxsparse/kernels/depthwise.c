/* Note [Native depthwise box]: a depthwise conv recomputed on an output box, reading and writing the
 * activation caches in place (channels-last rows: [B * H * W, C] in, [B * Ho * Wo, C] out), with the bias and
 * the activation applied before the one store. Built and loaded by fxsparse/kernels/native.py. */
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

/* Channels in blocks of B: the block's accumulators stay in vector registers over all taps. Only the taps
 * inside the image are read (rows ky0..ky1, columns kx0..kx1, found once per position). */
#define CHANNEL_BLOCK(B)                                                                   \
    for (; c0 + (B) <= C; c0 += (B)) {                                                     \
        float acc[B];                                                                      \
        for (int c = 0; c < (B); ++c) acc[c] = bias ? bias[c0 + c] : 0.f;                  \
        for (int64_t ky = ky0; ky < ky1; ++ky) {                                           \
            const int64_t row = (oy * sh - pt + ky * dh) * W;                              \
            for (int64_t kx = kx0; kx < kx1; ++kx) {                                       \
                const float* xk = src + (row + ox * sw - pl + kx * dw) * C + c0;           \
                const float* wk = taps + (ky * KW + kx) * C + c0;                          \
                for (int c = 0; c < (B); ++c) acc[c] += wk[c] * xk[c];                     \
            }                                                                              \
        }                                                                                  \
        for (int c = 0; c < (B); ++c) o[c0 + c] = activate(acc[c], act, lo, hi);           \
    }

/* The taps k of a window starting at `start` (stride-scaled output index minus padding) with dilation d
 * that land inside [0, n): k0 <= k < k1. */
static inline void inside(int64_t start, int64_t d, int64_t k, int64_t n, int64_t* k0, int64_t* k1) {
    int64_t a = 0, b = k;
    while (a < b && start + a * d < 0) ++a;
    while (b > a && start + (b - 1) * d >= n) --b;
    *k0 = a;
    *k1 = b;
}

/* One output position (b, oy, ox): every channel, written to o. */
static inline void position(const float* src, float* o, const float* taps, const float* bias, int64_t C, int64_t H,
                            int64_t W, int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t pt, int64_t pl,
                            int64_t dh, int64_t dw, int64_t oy, int64_t ox, int act, float lo, float hi) {
    int64_t ky0, ky1, kx0, kx1, c0 = 0;
    inside(oy * sh - pt, dh, KH, H, &ky0, &ky1);
    inside(ox * sw - pl, dw, KW, W, &kx0, &kx1);
    CHANNEL_BLOCK(64)
    CHANNEL_BLOCK(16)
    CHANNEL_BLOCK(1)
}

/* threads only where the work outweighs waking them (~0.2 M multiply-adds, measured) */
#define WORTH_THREADS(positions) ((positions) * C * KH * KW > 200000)

/* Every position of output box [oy0, oy1) x [ox0, ox1) of every stream. taps: [KH * KW, C] (tap-major);
 * bias: [C] or NULL; padding outside the image is zero. */
void fxsparse_depthwise_box(const float* in, float* out, const float* taps, const float* bias, int64_t B, int64_t C,
                            int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t KH, int64_t KW, int64_t sh,
                            int64_t sw, int64_t pt, int64_t pl, int64_t dh, int64_t dw, int64_t oy0, int64_t oy1,
                            int64_t ox0, int64_t ox1, int act, float lo, float hi) {
    const int64_t rows = oy1 - oy0, lines = B * rows, positions = lines * (ox1 - ox0);
    /* by output row: the divisions that locate a row are paid once per row, not per position */
    #pragma omp parallel for schedule(static) if (WORTH_THREADS(positions))
    for (int64_t line = 0; line < lines; ++line) {
        const int64_t b = line / rows, oy = oy0 + line % rows;
        const float* src = in + b * H * W * C;
        float* o = out + ((b * Ho + oy) * Wo + ox0) * C;
        for (int64_t ox = ox0; ox < ox1; ++ox, o += C)
            position(src, o, taps, bias, C, H, W, KH, KW, sh, sw, pt, pl, dh, dw, oy, ox, act, lo, hi);
    }
}

/* The output rows listed in rows[0..n) (flat indices b * Ho * Wo + oy * Wo + ox), same arguments otherwise. */
void fxsparse_depthwise_rows(const float* in, float* out, const float* taps, const float* bias, const int64_t* rows,
                             int64_t n, int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t KH,
                             int64_t KW, int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t dh, int64_t dw,
                             int act, float lo, float hi) {
    #pragma omp parallel for schedule(static) if (WORTH_THREADS(n))
    for (int64_t i = 0; i < n; ++i) {
        const int64_t r = rows[i], b = r / (Ho * Wo), q = r % (Ho * Wo);
        position(in + b * H * W * C, out + r * C, taps, bias, C, H, W, KH, KW, sh, sw, pt, pl, dh, dw, q / Wo,
                 q % Wo, act, lo, hi);
    }
}
