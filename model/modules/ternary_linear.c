/* BitLinear's decode kernel: 2-bit ternary weights times 8-bit activations, integer sums, scales after.
 *
 * It computes exactly what the torch path of model/modules/bitnet.py computes for a few rows:
 *     a = (1 / max(max|x|, eps)) * 127      per row, reciprocal then multiply, as torch's 127 / m does
 *     q = round_half_even(x * a)            int8 (the [-128, 127] clamp never binds)
 *     f = s / a                             or, for a layer with an input norm, in fp64 step by step:
 *         f = s / a * (1 / sqrt(sum_i q_i^2 / n / (a * a) + eps))
 *     y = float(sum_i q_i t_i) * f (+ bias)
 * The integer sums are exact in fp32 for these sizes, so the result is the same bit for bit as torch's fp32
 * matmul of the same integers; every other step is one correctly rounded operation, in the same order as
 * torch's; the file is compiled with -ffp-contract=off so nothing is fused into an FMA.
 *
 * Weight layout (made by model/modules/cpu_kernels.py): blocks of 128 inputs in 32 bytes; byte j of a
 * block holds the codes t + 1 of inputs j, j + 32, j + 64 and j + 96 at bits 0, 2, 4 and 6, so one shift
 * and one mask give 32 consecutive codes. The blocks of output rows 2p and 2p + 1 alternate
 * ([p][block][2][32]), so one 64-byte load feeds both halves of a 512-bit register. Padding has code 1
 * (t = 0) and q = 0.
 *
 * Each 32-byte code vector is unpacked once and used for a group of up to eight activation rows, whose sums
 * stay in registers: decoding a batch costs little more weight traffic than decoding one sequence.
 *
 * Built with OpenMP, a large product (a batch, a prompt) splits its output pairs over the threads torch is set
 * to use: the library loads torch's own libgomp, so torch.set_num_threads applies here too. Each output is
 * still summed by one thread in one order, so the result does not depend on the thread count.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#define BLOCK_INPUTS 128
#define BLOCK_BYTES 32

#define GROUP 8 /* activation rows sharing one unpacked weight block */
/* Multiply-adds below which one thread does all: a fork and join costs a few microseconds, as much as a
 * decoding step's smaller matrices take whole. */
#define PARALLEL_MIN_MACS (1 << 20)

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
static inline int32_t sum256(__m256i v) {
    __m128i half = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    half = _mm_add_epi32(half, _mm_shuffle_epi32(half, _MM_SHUFFLE(1, 0, 3, 2)));
    half = _mm_add_epi32(half, _mm_shuffle_epi32(half, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(half);
}

/* sums[r][h] = sum_i code(2p + h, i) * q_r[i] for rows r < n of a group, output pair p. */
static inline __attribute__((always_inline)) void pair_dot_rows(const uint8_t *w, const int8_t *q,
                                                                int64_t in_padded, int64_t nb, int n,
                                                                int32_t sums[GROUP][2]) {
    const __m512i mask = _mm512_set1_epi8(3);
    __m512i acc[GROUP];
    for (int r = 0; r < GROUP; r++) acc[r] = _mm512_setzero_si512();
    for (int64_t b = 0; b < nb; b++) {
        const __m512i packed = _mm512_loadu_si512((const void *)(w + b * 2 * BLOCK_BYTES));
        __m512i codes[4];
        for (int k = 0; k < 4; k++) codes[k] = _mm512_and_si512(_mm512_srli_epi16(packed, 2 * k), mask);
        for (int r = 0; r < n; r++) {
            const int8_t *qb = q + r * in_padded + b * BLOCK_INPUTS;
            for (int k = 0; k < 4; k++) {
                const __m256i qk = _mm256_loadu_si256((const __m256i *)(qb + 32 * k));
                acc[r] = _mm512_dpbusd_epi32(acc[r], codes[k], _mm512_broadcast_i64x4(qk));
            }
        }
    }
    for (int r = 0; r < n; r++) {
        sums[r][0] = sum256(_mm512_castsi512_si256(acc[r]));
        sums[r][1] = sum256(_mm512_extracti64x4_epi64(acc[r], 1));
    }
}
#else
/* sums[r][h] = sum_i code(2p + h, i) * q_r[i] for rows r < n of a group, output pair p. */
static inline __attribute__((always_inline)) void pair_dot_rows(const uint8_t *w, const int8_t *q,
                                                                int64_t in_padded, int64_t nb, int n,
                                                                int32_t sums[GROUP][2]) {
    for (int h = 0; h < 2; h++) {
#if defined(__AVX2__)
        const __m256i mask = _mm256_set1_epi8(3);
        const __m256i ones = _mm256_set1_epi16(1);
        __m256i acc[GROUP];
        for (int r = 0; r < GROUP; r++) acc[r] = _mm256_setzero_si256();
        for (int64_t b = 0; b < nb; b++) {
            const __m256i packed =
                _mm256_loadu_si256((const __m256i *)(w + (b * 2 + h) * BLOCK_BYTES));
            __m256i codes[4];
            for (int k = 0; k < 4; k++) codes[k] = _mm256_and_si256(_mm256_srli_epi16(packed, 2 * k), mask);
            for (int r = 0; r < n; r++) {
                const int8_t *qb = q + r * in_padded + b * BLOCK_INPUTS;
                /* u8 x s8 pairs into s16: |2 * 2 * 127| per pair, four of them far below 32767 */
                __m256i sum16 = _mm256_setzero_si256();
                for (int k = 0; k < 4; k++) {
                    const __m256i qk = _mm256_loadu_si256((const __m256i *)(qb + 32 * k));
                    sum16 = _mm256_add_epi16(sum16, _mm256_maddubs_epi16(codes[k], qk));
                }
                acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(sum16, ones));
            }
        }
        for (int r = 0; r < n; r++) {
            __m128i half = _mm_add_epi32(_mm256_castsi256_si128(acc[r]), _mm256_extracti128_si256(acc[r], 1));
            half = _mm_add_epi32(half, _mm_shuffle_epi32(half, _MM_SHUFFLE(1, 0, 3, 2)));
            half = _mm_add_epi32(half, _mm_shuffle_epi32(half, _MM_SHUFFLE(2, 3, 0, 1)));
            sums[r][h] = _mm_cvtsi128_si32(half);
        }
#else
        for (int r = 0; r < n; r++) {
            const int8_t *qr = q + r * in_padded;
            int32_t acc = 0;
            for (int64_t b = 0; b < nb; b++)
                for (int j = 0; j < BLOCK_BYTES; j++) {
                    const uint8_t byte = w[(b * 2 + h) * BLOCK_BYTES + j];
                    for (int k = 0; k < 4; k++)
                        acc += (int32_t)((byte >> (2 * k)) & 3) * qr[b * BLOCK_INPUTS + 32 * k + j];
                }
            sums[r][h] = acc;
        }
#endif
    }
}
#endif

/* pair_dot_rows with n a compile-time constant in the common cases (one sequence, a full group). */
static void pair_dot(const uint8_t *w, const int8_t *q, int64_t in_padded, int64_t nb, int n,
                     int32_t sums[GROUP][2]) {
    if (n == 1)
        pair_dot_rows(w, q, in_padded, nb, 1, sums);
    else if (n == GROUP)
        pair_dot_rows(w, q, in_padded, nb, GROUP, sums);
    else
        pair_dot_rows(w, q, in_padded, nb, n, sums);
}

/* Quantize one row of x to int8 codes (padded with zeros to nb blocks); returns sum q, writes the factor f. */
static int32_t quantize_row(const float *x, int64_t in, int64_t nb, double eps, int normalize, float scale,
                            int8_t *q, float *factor) {
    float amax = 0.0f;
    for (int64_t i = 0; i < in; i++) {
        const float v = fabsf(x[i]);
        amax = v > amax ? v : amax;
    }
    const float eps_f = (float)eps;
    if (amax < eps_f) amax = eps_f;
    const float a = (1.0f / amax) * 127.0f;
    int32_t sum = 0;
    int64_t squares = 0;
    for (int64_t i = 0; i < in; i++) {
        const int32_t v = (int32_t)nearbyintf(x[i] * a);
        q[i] = (int8_t)v;
        sum += v;
        squares += (int64_t)v * v;
    }
    for (int64_t i = in; i < nb * BLOCK_INPUTS; i++) q[i] = 0;
    if (normalize) {
        const double a64 = (double)a;
        const double mean_square = (double)squares / (double)in / (a64 * a64);
        const double r = 1.0 / sqrt(mean_square + eps);
        *factor = (float)((double)scale / a64 * r);
    } else {
        *factor = scale / a;
    }
    return sum;
}

/* y (rows, out) = ternary linear of x (rows, in); bias may be NULL; normalize: the layer has an input norm.
 * Returns 0, or -1 when out of memory. */
int nanoprime_ternary_linear(const float *x, int64_t rows, int64_t in, const uint8_t *w, int64_t out,
                             float scale, const float *bias, double eps, int normalize, float *y) {
    const int64_t nb = (in + BLOCK_INPUTS - 1) / BLOCK_INPUTS;
    int8_t *q = aligned_alloc(64, (size_t)(rows * nb * BLOCK_INPUTS));
    int32_t *sums = malloc(sizeof(int32_t) * (size_t)rows);
    float *factors = malloc(sizeof(float) * (size_t)rows);
    if (!q || !sums || !factors) {
        free(q);
        free(sums);
        free(factors);
        return -1;
    }
    for (int64_t r = 0; r < rows; r++)
        sums[r] = quantize_row(x + r * in, in, nb, eps, normalize, scale, q + r * nb * BLOCK_INPUTS,
                               &factors[r]);
    const int64_t in_padded = nb * BLOCK_INPUTS;
    const int64_t pairs = (out + 1) / 2;
#pragma omp parallel for schedule(static) if (rows * in * out >= PARALLEL_MIN_MACS)
    for (int64_t p = 0; p < pairs; p++) {
        const uint8_t *wp = w + p * nb * 2 * BLOCK_BYTES;
        for (int64_t r0 = 0; r0 < rows; r0 += GROUP) {
            const int n = rows - r0 < GROUP ? (int)(rows - r0) : GROUP;
            int32_t dots[GROUP][2];
            pair_dot(wp, q + r0 * in_padded, in_padded, nb, n, dots);
            for (int r = 0; r < n; r++)
                for (int h = 0; h < 2 && 2 * p + h < out; h++) {
                    const int64_t o = 2 * p + h;
                    float value = (float)(dots[r][h] - sums[r0 + r]) * factors[r0 + r];
                    if (bias) value = value + bias[o];
                    y[(r0 + r) * out + o] = value;
                }
        }
    }
    free(q);
    free(sums);
    free(factors);
    return 0;
}

/* The threads a large product uses: torch's setting where the library has OpenMP, else 1. */
int nanoprime_kernel_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
