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
 * Weight layout (made by model/modules/cpu_kernels.py): tiles of 16 output rows, each a run of 64-byte
 * chunks of 16 inputs. Byte 4j + m of a chunk holds the codes t + 1 of output j and inputs 4k + m at bits
 * 2k (k = 0..3), so one shift and one mask give a vector whose 32-bit lane j holds output j's codes for four
 * consecutive inputs: one VNNI multiply-add of it with those four activations (broadcast) adds them into
 * lane j. A tile's 16 sums build up in the 16 lanes of one register, and no sum is ever reduced across
 * lanes. Padding has code 1 (t = 0) and q = 0.
 *
 * Each chunk is unpacked once and used for a group of up to GROUP activation rows, whose sums stay in
 * registers: decoding a batch costs little more weight traffic and unpacking than decoding one sequence.
 *
 * Built with OpenMP, a large product (a batch, a prompt) splits its rows' quantization, then its output tiles,
 * over the threads torch is set to use: the library loads torch's own libgomp, so torch.set_num_threads
 * applies here too. Each row and each output is still one thread's, in one order, so the result does not
 * depend on the thread count.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#define TILE_OUTPUTS 16 /* outputs whose sums share one vector: lane j sums output j of the tile */
#define CHUNK_INPUTS 16  /* inputs per 64-byte chunk of a tile: 16 outputs x 16 inputs x 2 bits */
#define CHUNK_BYTES 64

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define GROUP 16 /* activation rows sharing one unpacked chunk: 16 sums + 4 codes + mask in 32 registers */
#else
#define GROUP 8 /* 8 sums + 4 codes + 3 constants in AVX2's 16 registers */
#endif
/* Multiply-adds below which one thread does all: a fork and join costs a few microseconds, as much as a
 * decoding step's smaller matrices take whole. */
#define PARALLEL_MIN_MACS (1 << 20)

static inline int32_t load_int32(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
/* dots[r][j] = sum_i code(j, i) * q_r[i] for the n rows of a group and the 16 outputs j of one tile. */
static inline __attribute__((always_inline)) void tile_dot_rows(const uint8_t *w, const int8_t *q,
                                                                int64_t in_padded, int64_t chunks, int n,
                                                                int32_t dots[GROUP][TILE_OUTPUTS]) {
    const __m512i mask = _mm512_set1_epi8(3);
    __m512i acc[GROUP];
    for (int r = 0; r < n; r++) acc[r] = _mm512_setzero_si512();
    for (int64_t c = 0; c < chunks; c++) {
        const __m512i packed = _mm512_loadu_si512((const void *)(w + c * CHUNK_BYTES));
        __m512i codes[4];
        for (int k = 0; k < 4; k++) codes[k] = _mm512_and_si512(_mm512_srli_epi16(packed, 2 * k), mask);
        for (int r = 0; r < n; r++) {
            const int8_t *qc = q + r * in_padded + c * CHUNK_INPUTS;
            for (int k = 0; k < 4; k++)
                acc[r] = _mm512_dpbusd_epi32(acc[r], codes[k], _mm512_set1_epi32(load_int32(qc + 4 * k)));
        }
    }
    for (int r = 0; r < n; r++) _mm512_storeu_si512((void *)dots[r], acc[r]);
}

/* tile_dot_rows for one row, with a sum per code vector: four independent chains instead of one. */
static void tile_dot_one(const uint8_t *w, const int8_t *q, int64_t chunks, int32_t dots[GROUP][TILE_OUTPUTS]) {
    const __m512i mask = _mm512_set1_epi8(3);
    __m512i acc[4];
    for (int k = 0; k < 4; k++) acc[k] = _mm512_setzero_si512();
    for (int64_t c = 0; c < chunks; c++) {
        const __m512i packed = _mm512_loadu_si512((const void *)(w + c * CHUNK_BYTES));
        for (int k = 0; k < 4; k++) {
            const __m512i codes = _mm512_and_si512(_mm512_srli_epi16(packed, 2 * k), mask);
            acc[k] = _mm512_dpbusd_epi32(acc[k], codes, _mm512_set1_epi32(load_int32(q + c * CHUNK_INPUTS + 4 * k)));
        }
    }
    const __m512i sum = _mm512_add_epi32(_mm512_add_epi32(acc[0], acc[1]), _mm512_add_epi32(acc[2], acc[3]));
    _mm512_storeu_si512((void *)dots[0], sum);
}
#elif defined(__AVX2__)
/* dots[r][j] = sum_i code(j, i) * q_r[i] for the n rows of a group and the 16 outputs j of one tile: one
 * 256-bit half of each chunk (8 outputs) at a time. */
static inline __attribute__((always_inline)) void tile_dot_rows(const uint8_t *w, const int8_t *q,
                                                                int64_t in_padded, int64_t chunks, int n,
                                                                int32_t dots[GROUP][TILE_OUTPUTS]) {
    const __m256i mask = _mm256_set1_epi8(3);
    const __m256i ones = _mm256_set1_epi16(1);
    for (int h = 0; h < 2; h++) {
        __m256i acc[GROUP];
        for (int r = 0; r < n; r++) acc[r] = _mm256_setzero_si256();
        for (int64_t c = 0; c < chunks; c++) {
            const __m256i packed = _mm256_loadu_si256((const __m256i *)(w + c * CHUNK_BYTES + 32 * h));
            __m256i codes[4];
            for (int k = 0; k < 4; k++) codes[k] = _mm256_and_si256(_mm256_srli_epi16(packed, 2 * k), mask);
            for (int r = 0; r < n; r++) {
                const int8_t *qc = q + r * in_padded + c * CHUNK_INPUTS;
                /* u8 x s8 pairs into s16: |2 * 2 * 127| per pair, four of them far below 32767 */
                __m256i sum16 = _mm256_setzero_si256();
                for (int k = 0; k < 4; k++)
                    sum16 = _mm256_add_epi16(
                        sum16, _mm256_maddubs_epi16(codes[k], _mm256_set1_epi32(load_int32(qc + 4 * k))));
                acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(sum16, ones));
            }
        }
        for (int r = 0; r < n; r++) _mm256_storeu_si256((__m256i *)(dots[r] + 8 * h), acc[r]);
    }
}
#else
/* dots[r][j] = sum_i code(j, i) * q_r[i] for the n rows of a group and the 16 outputs j of one tile. */
static inline void tile_dot_rows(const uint8_t *w, const int8_t *q, int64_t in_padded, int64_t chunks, int n,
                                 int32_t dots[GROUP][TILE_OUTPUTS]) {
    for (int r = 0; r < n; r++)
        for (int j = 0; j < TILE_OUTPUTS; j++) {
            int32_t acc = 0;
            for (int64_t c = 0; c < chunks; c++)
                for (int m = 0; m < 4; m++) {
                    const uint8_t byte = w[c * CHUNK_BYTES + 4 * j + m];
                    for (int k = 0; k < 4; k++)
                        acc += (int32_t)((byte >> (2 * k)) & 3) * q[r * in_padded + c * CHUNK_INPUTS + 4 * k + m];
                }
            dots[r][j] = acc;
        }
}
#endif

/* tile_dot_rows with n a compile-time constant in the common cases (one sequence, a full group). */
static void tile_dot(const uint8_t *w, const int8_t *q, int64_t in_padded, int64_t chunks, int n,
                     int32_t dots[GROUP][TILE_OUTPUTS]) {
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
    if (n == 1) {
        tile_dot_one(w, q, chunks, dots);
        return;
    }
#endif
    if (n == 1)
        tile_dot_rows(w, q, in_padded, chunks, 1, dots);
    else if (n == GROUP)
        tile_dot_rows(w, q, in_padded, chunks, GROUP, dots);
    else
        tile_dot_rows(w, q, in_padded, chunks, n, dots);
}

/* max |x_i|, and q_i = round_half_even(x_i * a) into q (zeros up to in_padded) with the sums of q_i and q_i^2:
 * the activation quantizer's two passes over a row. */
#if defined(__AVX512F__) && defined(__AVX512BW__)
static float row_absmax(const float *x, int64_t in) {
    __m512 top = _mm512_setzero_ps();
    for (int64_t i = 0; i < in; i += 16) {
        const __mmask16 valid = in - i >= 16 ? 0xffff : (__mmask16)((1u << (in - i)) - 1);
        const __m512 v = _mm512_abs_ps(_mm512_maskz_loadu_ps(valid, x + i));
        top = _mm512_max_ps(v, top); /* a NaN in x is passed over, as the scalar v > top ? v : top does */
    }
    return _mm512_reduce_max_ps(top);
}

static int32_t quantize_codes(const float *x, int64_t in, int64_t in_padded, float a, int8_t *q,
                              int64_t *squares) {
    const __m512 scale = _mm512_set1_ps(a);
    __m512i sum = _mm512_setzero_si512(), square_sum = _mm512_setzero_si512();
    for (int64_t i = 0; i < in_padded; i += 16) { /* in_padded is a multiple of 16: zeros past in */
        const __mmask16 valid = in - i >= 16 ? 0xffff : in > i ? (__mmask16)((1u << (in - i)) - 1) : 0;
        const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(valid, x + i), scale));
        _mm_storeu_si128((__m128i *)(q + i), _mm512_cvtepi32_epi8(v)); /* |v| <= 127: no saturation */
        sum = _mm512_add_epi32(sum, v);
        square_sum = _mm512_add_epi32(square_sum, _mm512_mullo_epi32(v, v)); /* < 2^31 per lane */
    }
    const __m512i wide = _mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(square_sum)),
                                          _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(square_sum, 1)));
    *squares = _mm512_reduce_add_epi64(wide);
    return _mm512_reduce_add_epi32(sum);
}
#else
static float row_absmax(const float *x, int64_t in) {
    float top = 0.0f;
    for (int64_t i = 0; i < in; i++) {
        const float v = fabsf(x[i]);
        top = v > top ? v : top;
    }
    return top;
}

static int32_t quantize_codes(const float *x, int64_t in, int64_t in_padded, float a, int8_t *q,
                              int64_t *squares) {
    int32_t sum = 0;
    *squares = 0;
    for (int64_t i = 0; i < in; i++) {
        const int32_t v = (int32_t)nearbyintf(x[i] * a);
        q[i] = (int8_t)v;
        sum += v;
        *squares += (int64_t)v * v;
    }
    for (int64_t i = in; i < in_padded; i++) q[i] = 0;
    return sum;
}
#endif

/* Quantize one row of x to int8 codes (zeros up to in_padded); returns sum q, writes the factor f. The
 * vector path rounds with the default rounding mode, to nearest even, as nearbyintf does. */
static int32_t quantize_row(const float *x, int64_t in, int64_t in_padded, double eps, int normalize, float scale,
                            int8_t *q, float *factor) {
    float amax = row_absmax(x, in);
    const float eps_f = (float)eps;
    if (amax < eps_f) amax = eps_f;
    const float a = (1.0f / amax) * 127.0f;
    int64_t squares;
    const int32_t sum = quantize_codes(x, in, in_padded, a, q, &squares);
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
    const int64_t chunks = (in + CHUNK_INPUTS - 1) / CHUNK_INPUTS;
    const int64_t in_padded = chunks * CHUNK_INPUTS;
    const size_t q_bytes = ((size_t)(rows * in_padded) + 63) / 64 * 64;
    int8_t *q = aligned_alloc(64, q_bytes > 0 ? q_bytes : 64);
    int32_t *sums = malloc(sizeof(int32_t) * (size_t)(rows > 0 ? rows : 1));
    float *factors = malloc(sizeof(float) * (size_t)(rows > 0 ? rows : 1));
    if (!q || !sums || !factors) {
        free(q);
        free(sums);
        free(factors);
        return -1;
    }
    const int64_t tiles = (out + TILE_OUTPUTS - 1) / TILE_OUTPUTS;
#pragma omp parallel if (rows * in * out >= PARALLEL_MIN_MACS)
    {
#pragma omp for schedule(static) /* the rows' codes first (each row one thread's), then the tiles */
        for (int64_t r = 0; r < rows; r++)
            sums[r] =
                quantize_row(x + r * in, in, in_padded, eps, normalize, scale, q + r * in_padded, &factors[r]);
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tiles; t++) {
            const uint8_t *wt = w + t * chunks * CHUNK_BYTES;
            const int64_t o0 = t * TILE_OUTPUTS;
            const int64_t width = out - o0 < TILE_OUTPUTS ? out - o0 : TILE_OUTPUTS;
            for (int64_t r0 = 0; r0 < rows; r0 += GROUP) {
                const int n = rows - r0 < GROUP ? (int)(rows - r0) : GROUP;
                int32_t dots[GROUP][TILE_OUTPUTS];
                tile_dot(wt, q + r0 * in_padded, in_padded, chunks, n, dots);
                for (int r = 0; r < n; r++) {
                    const int32_t sum = sums[r0 + r];
                    const float factor = factors[r0 + r];
                    float *yr = y + (r0 + r) * out + o0;
                    for (int64_t j = 0; j < width; j++) yr[j] = (float)(dots[r][j] - sum) * factor;
                    if (bias)
                        for (int64_t j = 0; j < width; j++) yr[j] = yr[j] + bias[o0 + j];
                }
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
