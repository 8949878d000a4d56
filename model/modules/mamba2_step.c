/* One decoding step of the Mamba-2 mixer (model/modules/mamba2.py) for a batch of rows: from in_proj's output
 * to the gated norm's, the input of out_proj. The torch path takes some thirty small ops per layer for it.
 *
 * Per row, with H heads of P channels, G groups of N state values (head h reads group h / (H / G)):
 *     [z ; xBC ; dt] = the row of in_proj's output
 *     xBC' = conv(window, xBC) + bias             the depthwise causal conv at one position; the window
 *                                                  moves on by one input
 *     [x ; B ; C] = silu(xBC')
 *     dt_h = softplus(dt_h + dt_bias_h),  A_h = -exp(A_log_h)
 *     s_hp = s_hp * exp(dt_h A_h) + (dt_h x_hp) B      the state, updated in place
 *     y_hp = s_hp . C + x_hp D_h
 *     out  = rmsnorm(y * silu(z)) * norm_weight      over each group's channels
 * The state update rounds as the torch path's does (a product, then a sum of products; the file is compiled
 * with -ffp-contract=off); the exponentials are fast_exp.h's and the sums run in lane_sum.h's order, so the
 * outputs agree with torch's to float rounding, not bit for bit. Under AVX-512 the state update and readout
 * take 16 channels at a time: one vector of states per channel (N = 16) and one fold16 for the 16 readouts;
 * the scalar chain of each readout was most of a row's time. Rows are independent and split over the OpenMP
 * threads in batches, each row summed by one thread in one order: a row alone or in a batch gets the same
 * numbers.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "fast_exp.h"
#include "lane_sum.h"

#define MIN_PARALLEL_ROWS 4 /* a fork and join costs about what a row does */

static inline float silu(float v) {
    return v / (1.0f + fast_exp(-v));
}

/* torch's softplus (beta 1, threshold 20): the input itself past 20, where log(1 + e^x) rounds to x. */
static inline float softplus(float v) {
    return v > 20.0f ? v : log1pf(fast_exp(v));
}

/* One head's channel p: s = s * decay + (dt x_p) B, then y_p = s . C + x_p D, the dot product summed in
 * lane_sum.h's lanes and tree. */
static inline float channel_step(float *s, float x, float dt, float decay, const float *Bg, const float *Cg,
                                 float D, int64_t N) {
    const float input = dt * x;
    float lanes[LANES] = {0};
    for (int64_t n = 0; n < N; n++) {
        s[n] = s[n] * decay + input * Bg[n];
        lanes[n % LANES] += s[n] * Cg[n];
    }
    return add_lanes(lanes) + x * D;
}

/* One head: its P channels' states s (P, N), updated in place, and their outputs y (P). */
static void head_step(float *s, const float *x, float dt, float decay, const float *Bg, const float *Cg, float D,
                      int64_t P, int64_t N, float *y) {
    int64_t p = 0;
#if defined(__AVX512F__)
    if (N % LANES == 0) { /* 16 channels at a time: their lane sums added up together by fold16 */
        const __m512 decays = _mm512_set1_ps(decay), Ds = _mm512_set1_ps(D);
        for (; p + LANES <= P; p += LANES) {
            __m512 sums[LANES];
            for (int k = 0; k < LANES; k++) {
                float *state = s + (p + k) * N;
                const __m512 input = _mm512_set1_ps(dt * x[p + k]);
                for (int64_t n = 0; n < N; n += LANES) {
                    const __m512 updated = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(state + n), decays),
                                                         _mm512_mul_ps(input, _mm512_loadu_ps(Bg + n)));
                    _mm512_storeu_ps(state + n, updated);
                    const __m512 product = _mm512_mul_ps(updated, _mm512_loadu_ps(Cg + n));
                    sums[k] = n == 0 ? product : _mm512_add_ps(sums[k], product);
                }
            }
            const __m512 xs = _mm512_loadu_ps(x + p);
            _mm512_storeu_ps(y + p, _mm512_add_ps(fold16(sums), _mm512_mul_ps(xs, Ds)));
        }
    }
#endif
    for (; p < P; p++) y[p] = channel_step(s + p * N, x[p], dt, decay, Bg, Cg, D, N);
}

/* proj (B, d_inner + conv_channels + H): in_proj's output, conv_channels = d_inner + 2 G N.
 * window (B, conv_channels, W): the last W conv inputs, moved on in place; conv_weight (conv_channels, W + 1);
 * conv_bias (conv_channels) or NULL. ssm (B, H, P, N), updated in place. out (B, d_inner). */
void nanoprime_mamba2_step(const float *proj, int64_t B, int64_t H, int64_t P, int64_t G, int64_t N,
                           float *window, int64_t W, const float *conv_weight, const float *conv_bias,
                           const float *dt_bias, const float *A_log, const float *D, const float *norm_weight,
                           float eps, float *ssm, float *out) {
    const int64_t d_inner = H * P, channels = d_inner + 2 * G * N, width = d_inner + channels + H;
    const int64_t heads_per_group = H / G, group_size = d_inner / G;
#pragma omp parallel for schedule(static) if (B >= MIN_PARALLEL_ROWS)
    for (int64_t b = 0; b < B; b++) {
        const float *z = proj + b * width, *xbc_in = z + d_inner, *dt_in = xbc_in + channels;
        float *win = window + b * channels * W;
        float xbc[channels], y[d_inner];
        for (int64_t c = 0; c < channels; c++) { /* the conv at the new position */
            const float *w = conv_weight + c * (W + 1), *past = win + c * W;
            float sum = 0.0f;
            for (int64_t k = 0; k < W; k++) sum += past[k] * w[k];
            sum += xbc_in[c] * w[W];
            xbc[c] = conv_bias ? sum + conv_bias[c] : sum;
        }
        if (W > 0) { /* the window moves on: everything one place back, then each channel's newest input */
            memmove(win, win + 1, (size_t)(channels * W - 1) * sizeof *win);
            for (int64_t c = 0; c < channels; c++) win[c * W + W - 1] = xbc_in[c];
        }
        for (int64_t c = 0; c < channels; c++) xbc[c] = silu(xbc[c]);
        const float *x = xbc, *Bv = xbc + d_inner, *Cv = Bv + G * N;
        for (int64_t h = 0; h < H; h++) {
            const float dt = softplus(dt_in[h] + dt_bias[h]);
            const float decay = fast_exp(dt * -fast_exp(A_log[h]));
            const int64_t group = h / heads_per_group;
            head_step(ssm + (b * H + h) * P * N, x + h * P, dt, decay, Bv + group * N, Cv + group * N, D[h], P, N,
                      y + h * P);
        }
        for (int64_t g = 0; g < G; g++) { /* gated RMSNorm over each group's channels */
            float *v = y + g * group_size;
            const float *zg = z + g * group_size;
            for (int64_t i = 0; i < group_size; i++) v[i] = v[i] * silu(zg[i]);
            const float squares = sum_of_squares(v, group_size);
            const float scale = 1.0f / sqrtf(squares / (float)group_size + eps);
            for (int64_t i = 0; i < group_size; i++)
                out[b * d_inner + g * group_size + i] = v[i] * scale * norm_weight[g * group_size + i];
        }
    }
}
