/* One decoding step of MLA's absorbed attention (model/modules/mla.py), for a batch of rows.
 *
 * Per row b at position p_b (its tokens so far), with H heads, latent size C, rope size R:
 *     k  = rope(k_new, p_b)                 written with the latent c_new to cache slot p_b
 *     qr = rope(q_rope[h], p_b)             per head
 *     ql = q_nope[h] @ W_uk[h]              the query moved into latent space (nope -> C)
 *     s_j = scale * (ql . c_j + qr . k_j)   for the p_b + 1 keys j <= p_b
 *     o  = (sum_j softmax(s)_j c_j) @ W_uv[h]^T
 * which the torch path computes with some forty ops per layer. Here the keys come from memory once, in runs
 * of READ_AHEAD_BYTES read back to back into L2 (read_ahead), and are then used in blocks of KEY_BLOCK,
 * transposed so the scores of a block are vector multiply-adds over keys; an online softmax keeps a running
 * maximum, sum and weighted latent per head, rescaled once per block.
 *
 * The cache holds bf16s (MLACache: half the bytes of fp32 to read per token). The rotation and the cache
 * write give exactly the torch path's numbers (the same three rounded operations, no FMA: the file is compiled
 * with -ffp-contract=off; then a round to nearest even into bf16, as torch's .to(bfloat16)), so a prefill and
 * a decode fill the cache alike. The attention itself agrees with torch's to float rounding, not bit for bit:
 * the sums run in another order, and exp is fast_exp.h's polynomial (within 1 ulp of e^x over [-87, 0]).
 * With AVX512-BF16 the products take bf16 operands (see BF16_PRODUCTS): the queries and the softmax weights
 * are rounded to bf16 too, and the outputs agree with the fp32 path's to ~2e-3 of their size.
 *
 * A long row splits its keys over the OpenMP threads, each part at least MIN_SPLIT_KEYS keys, and the parts'
 * results are merged at the end (flash decoding). The split depends on the row's length and the thread count only,
 * never on the other rows, so a sequence gets the same numbers alone or in a batch.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__)
#define BF16_PRODUCTS 1
#endif

#define KEY_BLOCK 64
#define MIN_SPLIT_KEYS 1024
#define READ_AHEAD_BYTES (256 * 1024)

#include "fast_exp.h"

/* bfloat16 <-> float: a bf16 is the top half of a float's bits. Rounding is to nearest, ties to even, in
 * integer steps that keep subnormals, as torch's .to(bfloat16) does; a NaN becomes torch's 0xffff. */
static inline uint16_t bf16_from_float(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    if ((bits & 0x7fffffff) > 0x7f800000) return 0xffff;
    bits += 0x7fff + ((bits >> 16) & 1); /* a carry moves into the exponent, as it should */
    return (uint16_t)(bits >> 16);
}

static inline float float_from_bf16(uint16_t value) {
    const uint32_t bits = (uint32_t)value << 16;
    float result;
    memcpy(&result, &bits, sizeof result);
    return result;
}

/* out = x rotated by one position's tables: x * cos + [x2, x1] * signed_sin, as rope.apply_rope. */
static void rotate(const float *x, const float *cos_row, const float *sin_row, int64_t dim, float *out) {
    const int64_t half = dim / 2;
    for (int64_t i = 0; i < dim; i++) {
        const float swapped = i < half ? x[i + half] : x[i - half];
        out[i] = x[i] * cos_row[i] + swapped * sin_row[i];
    }
}

/* The running softmax state of one head over the keys seen so far: the sum of exp(s - max) is kept in LANES
 * lanes (lane l sums the keys j with j % LANES == l) and added up once, at the end: adding a block's 64
 * weights into it takes four vector adds and no sum across lanes. */
#define LANES 16
typedef struct {
    float max;
    float sum[LANES];
} Running;

/* The largest of a block's scores. */
static inline float block_max(const float *x) {
#if defined(__AVX512F__) && KEY_BLOCK == 64
    const __m512 low = _mm512_max_ps(_mm512_loadu_ps(x), _mm512_loadu_ps(x + 16));
    const __m512 high = _mm512_max_ps(_mm512_loadu_ps(x + 32), _mm512_loadu_ps(x + 48));
    return _mm512_reduce_max_ps(_mm512_max_ps(low, high));
#else
    float lanes[LANES];
    for (int l = 0; l < LANES; l++) lanes[l] = x[l];
    for (int j = LANES; j < KEY_BLOCK; j += LANES)
        for (int l = 0; l < LANES; l++) lanes[l] = x[j + l] > lanes[l] ? x[j + l] : lanes[l];
    float top = lanes[0];
    for (int l = 1; l < LANES; l++) top = lanes[l] > top ? lanes[l] : top;
    return top;
#endif
}

/* The lanes' total, in a tree. */
static inline float lanes_total(const float lanes[LANES]) {
    float partial[LANES];
    for (int l = 0; l < LANES; l++) partial[l] = lanes[l];
    for (int width = LANES / 2; width >= 1; width /= 2)
        for (int l = 0; l < width; l++) partial[l] += partial[l + width];
    return partial[0];
}

/* A block's largest score `top` becomes the head's running maximum if it is larger; what was summed under the
 * old maximum is rescaled to the new one. */
static inline void rescale(Running *running, float *acc, int64_t C, float top) {
    if (top <= running->max) return;
    const float shrink = fast_exp(running->max - top);
    for (int l = 0; l < LANES; l++) running->sum[l] *= shrink;
    for (int64_t i = 0; i < C; i++) acc[i] *= shrink;
    running->max = top;
}

#if defined(__AVX512F__)
/* 16 bf16s as 16 floats: each moved into the top half of a 32-bit lane. */
static inline __m512 widen_bf16(__m256i values) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(values), 16));
}

static inline __m512 load_bf16(const uint16_t *p) {
    return widen_bf16(_mm256_loadu_si256((const __m256i *)p));
}

/* Transposes 8 rows of 16 bf16s in place, within 128-bit lanes: afterwards r[i] holds column i of the
 * rows in its low lane and column i + 8 in its high lane. Three rounds of interleaving: halves, pairs, quads. */
static inline void transpose8_halves(__m256i r[8]) {
    __m256i t[8], u[8];
    for (int i = 0; i < 4; i++) { /* t[2i]: columns 0-3 of rows 2i, 2i + 1 interleaved; t[2i + 1]: 4-7 */
        t[2 * i] = _mm256_unpacklo_epi16(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_epi16(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) { /* u[4i + m]: columns 2m, 2m + 1 of rows 4i .. 4i + 3 */
        u[4 * i] = _mm256_unpacklo_epi32(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm256_unpackhi_epi32(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm256_unpacklo_epi32(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm256_unpackhi_epi32(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int m = 0; m < 4; m++) { /* columns 2m and 2m + 1 of all 8 rows */
        r[2 * m] = _mm256_unpacklo_epi64(u[m], u[m + 4]);
        r[2 * m + 1] = _mm256_unpackhi_epi64(u[m], u[m + 4]);
    }
}

/* Columns of a 16 x 16 tile of bf16s (row r at source + r * stride, zero from row rows on) as floats:
 * columns[i] holds element i of the 16 rows. Transposed as bf16s: half the bytes that floats would be. */
static inline void load_columns(const uint16_t *source, int64_t stride, int64_t rows, __m512 columns[16]) {
    __m256i top[8], bottom[8];
    for (int r = 0; r < 8; r++) {
        top[r] = r < rows ? _mm256_loadu_si256((const __m256i *)(source + r * stride)) : _mm256_setzero_si256();
        bottom[r] = r + 8 < rows ? _mm256_loadu_si256((const __m256i *)(source + (r + 8) * stride))
                                 : _mm256_setzero_si256();
    }
    transpose8_halves(top);
    transpose8_halves(bottom);
    for (int i = 0; i < 8; i++) {
        columns[i] = widen_bf16(_mm256_permute2x128_si256(top[i], bottom[i], 0x20));
        columns[i + 8] = widen_bf16(_mm256_permute2x128_si256(top[i], bottom[i], 0x31));
    }
}
#endif

/* keys_t[i][j] = dimension i of key j of the block ([c ; k], bf16s), as floats, zero past its n keys. */
static void transpose_block(const uint16_t *c, const uint16_t *k, int64_t n, int64_t C, int64_t R,
                            float keys_t[][KEY_BLOCK]) {
#if defined(__AVX512F__)
    if (C % 16 == 0 && R % 16 == 0) {
        for (int64_t group = 0; group < KEY_BLOCK; group += 16) {
            for (int64_t dim = 0; dim < C + R; dim += 16) {
                const uint16_t *source = dim < C ? c + dim : k + (dim - C);
                const int64_t stride = dim < C ? C : R;
                __m512 columns[16];
                load_columns(source + group * stride, stride, n - group, columns);
                for (int64_t i = 0; i < 16; i++) _mm512_storeu_ps(&keys_t[dim + i][group], columns[i]);
            }
        }
        return;
    }
#endif
    for (int64_t j = 0; j < KEY_BLOCK; j++) {
        for (int64_t i = 0; i < C; i++) keys_t[i][j] = j < n ? float_from_bf16(c[j * C + i]) : 0.0f;
        for (int64_t i = 0; i < R; i++) keys_t[C + i][j] = j < n ? float_from_bf16(k[j * R + i]) : 0.0f;
    }
}

#if defined(__AVX512F__)
/* Up to HEAD_TILE heads at once, so that each 16-float load feeds that many multiply-adds: 6 heads x 4
 * vectors = 24 running sums, within the 32 vector registers. hn is a constant at every call (see the
 * switches below), so the compiler keeps the sums in registers. */
#define HEAD_TILE 6

/* scores[h0 + h][j] = queries[h0 + h] . key j for the block's 64 keys. */
static inline __attribute__((always_inline)) void scores_tile(const float *queries, float keys_t[][KEY_BLOCK],
                                                              int64_t D, int64_t h0, const int hn,
                                                              float scores[][KEY_BLOCK]) {
    __m512 sums[HEAD_TILE][4];
    for (int h = 0; h < hn; h++)
        for (int g = 0; g < 4; g++) sums[h][g] = _mm512_setzero_ps();
    for (int64_t i = 0; i < D; i++) {
        __m512 key[4];
        for (int g = 0; g < 4; g++) key[g] = _mm512_loadu_ps(&keys_t[i][16 * g]);
        for (int h = 0; h < hn; h++) {
            const __m512 q = _mm512_set1_ps(queries[(h0 + h) * D + i]);
            for (int g = 0; g < 4; g++) sums[h][g] = _mm512_fmadd_ps(q, key[g], sums[h][g]);
        }
    }
    for (int h = 0; h < hn; h++)
        for (int g = 0; g < 4; g++) _mm512_storeu_ps(&scores[h0 + h][16 * g], sums[h][g]);
}

/* acc[h0 + h][d0 .. d0 + 63] += sum_j weights[h0 + h][j] * c_j[d0 .. d0 + 63] over the block's n keys. */
static inline __attribute__((always_inline)) void accumulate_tile(const uint16_t *c, int64_t n, int64_t C,
                                                                  int64_t d0, int64_t h0, const int hn,
                                                                  float weights[][KEY_BLOCK], float *acc) {
    __m512 sums[HEAD_TILE][4];
    for (int h = 0; h < hn; h++)
        for (int t = 0; t < 4; t++) sums[h][t] = _mm512_loadu_ps(acc + (h0 + h) * C + d0 + 16 * t);
    for (int64_t j = 0; j < n; j++) {
        __m512 row[4];
        for (int t = 0; t < 4; t++) row[t] = load_bf16(c + j * C + d0 + 16 * t);
        for (int h = 0; h < hn; h++) {
            const __m512 p = _mm512_set1_ps(weights[h0 + h][j]);
            for (int t = 0; t < 4; t++) sums[h][t] = _mm512_fmadd_ps(p, row[t], sums[h][t]);
        }
    }
    for (int h = 0; h < hn; h++)
        for (int t = 0; t < 4; t++) _mm512_storeu_ps(acc + (h0 + h) * C + d0 + 16 * t, sums[h][t]);
}

/* Calls tile(..., hn, ...) with hn a compile-time constant for each group of up to HEAD_TILE heads. */
#define FOR_HEAD_TILES(H, h0, hn, call)                                                                        \
    for (int64_t h0 = 0; h0 < (H); h0 += HEAD_TILE) {                                                          \
        switch ((H) - h0 < HEAD_TILE ? (int)((H) - h0) : HEAD_TILE) {                                          \
        case 1: { const int hn = 1; call; break; }                                                             \
        case 2: { const int hn = 2; call; break; }                                                             \
        case 3: { const int hn = 3; call; break; }                                                             \
        case 4: { const int hn = 4; call; break; }                                                             \
        case 5: { const int hn = 5; call; break; }                                                             \
        default: { const int hn = 6; call; break; }                                                            \
        }                                                                                                      \
    }
#endif

/* acc[h] += sum_j weights[h][j] * c_j over the block's n keys. */
static void accumulate(const uint16_t *c, int64_t n, int64_t H, int64_t C, float weights[][KEY_BLOCK],
                       float *acc) {
#if defined(__AVX512F__)
    if (C % 64 == 0) {
        for (int64_t d0 = 0; d0 < C; d0 += 64) FOR_HEAD_TILES(H, h0, hn, accumulate_tile(c, n, C, d0, h0, hn, weights, acc))
        return;
    }
#endif
    for (int64_t j = 0; j < n; j++) {
        for (int64_t h = 0; h < H; h++) {
            const float p = weights[h][j];
            float *a = acc + h * C;
            for (int64_t i = 0; i < C; i++) a[i] = MULADD(p, float_from_bf16(c[j * C + i]), a[i]);
        }
    }
}

/* scores[h][j] = queries[h] . key j, from the transposed block. */
static void block_scores(const float *queries, float keys_t[][KEY_BLOCK], int64_t H, int64_t D,
                         float scores[][KEY_BLOCK]) {
#if defined(__AVX512F__) && KEY_BLOCK == 64
    FOR_HEAD_TILES(H, h0, hn, scores_tile(queries, keys_t, D, h0, hn, scores))
#else
    for (int64_t h = 0; h < H; h++) {
        float w[KEY_BLOCK]; /* a local the compiler can keep in registers over the dimensions */
        const float *q = queries + h * D;
        for (int64_t j = 0; j < KEY_BLOCK; j++) w[j] = 0.0f;
        for (int64_t i = 0; i < D; i++) {
            const float qi = q[i];
            for (int64_t j = 0; j < KEY_BLOCK; j++) w[j] = MULADD(qi, keys_t[i][j], w[j]);
        }
        for (int64_t j = 0; j < KEY_BLOCK; j++) scores[h][j] = w[j];
    }
#endif
}

#if defined(BF16_PRODUCTS)
/* With AVX512-BF16 one instruction multiplies 16 pairs of bf16s and adds both products to 16 floats: twice
 * the multiply-adds of an fp32 FMA. The keys are bf16s already; the scaled queries and the softmax weights
 * are rounded to bf16 for it (relative error 2^-9 on each), and the sums stay in fp32. */

/* Transposes 16 rows of 16 dwords in place: afterwards r[i] holds dword i of every row. */
static inline void transpose16_dwords(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) { /* u[4i + m], 128-bit lane l: dword 4l + m of rows 4i .. 4i + 3 */
        u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int m = 0; m < 4; m++) { /* gather lane l of u[m], u[4 + m], u[8 + m], u[12 + m] into r[4l + m] */
        const __m512i x0 = _mm512_shuffle_i32x4(u[m], u[4 + m], 0x44), x1 = _mm512_shuffle_i32x4(u[m], u[4 + m], 0xee);
        const __m512i y0 = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0x44);
        const __m512i y1 = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0xee);
        r[m] = _mm512_shuffle_i32x4(x0, y0, 0x88);
        r[4 + m] = _mm512_shuffle_i32x4(x0, y0, 0xdd);
        r[8 + m] = _mm512_shuffle_i32x4(x1, y1, 0x88);
        r[12 + m] = _mm512_shuffle_i32x4(x1, y1, 0xdd);
    }
}

/* pairs[i][j] = dword i of key j of the block: dimensions 2i and 2i + 1 of [c ; k] as two bf16s, zero past its
 * n keys. A key's row is C / 2 dwords of latent and R / 2 of rope, transposed 16 keys by 16 dwords at a time. */
static void pair_block(const uint16_t *c, const uint16_t *k, int64_t n, int64_t C, int64_t R,
                       uint32_t pairs[][KEY_BLOCK]) {
    for (int64_t group = 0; group < KEY_BLOCK; group += 16) {
        int64_t dword = 0, width;
        for (; dword < (C + R) / 2; dword += width) { /* the rope's words start a chunk of their own */
            const int64_t end = dword < C / 2 ? C / 2 : (C + R) / 2;
            width = end - dword < 16 ? end - dword : 16;
            const uint16_t *source = dword < C / 2 ? c + 2 * dword : k + 2 * (dword - C / 2);
            const int64_t stride = dword < C / 2 ? C : R;
            const __mmask16 mask = (__mmask16)((1u << width) - 1);
            __m512i rows[16];
            for (int64_t r = 0; r < 16; r++)
                rows[r] = group + r < n ? _mm512_maskz_loadu_epi32(mask, source + (group + r) * stride)
                                        : _mm512_setzero_si512();
            transpose16_dwords(rows);
            for (int64_t i = 0; i < width; i++) _mm512_storeu_si512(&pairs[dword + i][group], rows[i]);
        }
    }
}

/* scores[h0 + h][j] = queries[h0 + h] . key j for the block's 64 keys, queries as bf16 pairs. */
static inline __attribute__((always_inline)) void pair_scores_tile(const uint32_t *query_pairs,
                                                                   uint32_t pairs[][KEY_BLOCK], int64_t P,
                                                                   int64_t h0, const int hn,
                                                                   float scores[][KEY_BLOCK]) {
    __m512 sums[HEAD_TILE][4];
    for (int h = 0; h < hn; h++)
        for (int g = 0; g < 4; g++) sums[h][g] = _mm512_setzero_ps();
    for (int64_t i = 0; i < P; i++) {
        __m512bh key[4];
        for (int g = 0; g < 4; g++) key[g] = (__m512bh)_mm512_loadu_si512(&pairs[i][16 * g]);
        for (int h = 0; h < hn; h++) {
            const __m512bh q = (__m512bh)_mm512_set1_epi32((int)query_pairs[(h0 + h) * P + i]);
            for (int g = 0; g < 4; g++) sums[h][g] = _mm512_dpbf16_ps(sums[h][g], q, key[g]);
        }
    }
    for (int h = 0; h < hn; h++)
        for (int g = 0; g < 4; g++) _mm512_storeu_ps(&scores[h0 + h][16 * g], sums[h][g]);
}

/* Word 2i of an interleaving of two rows of 32 words a, b (permutex2var: b's words are 32 .. 63): a[i] in the
 * low interleaving, a[16 + i] in the high one; word 2i + 1: b's. */
static const uint16_t INTERLEAVE[2][32] = {
    {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39, 8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47},
    {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
     24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63},
};

/* acc[h0 + h][d0 .. d0 + 63] += sum_j weights[h0 + h][j] * c_j[d0 .. d0 + 63] over the block's n keys, two keys
 * per instruction: their latents interleaved into (c_j[d], c_j+1[d]) pairs, against the pair of weights. */
static inline __attribute__((always_inline)) void pair_accumulate_tile(const uint16_t *c, int64_t n, int64_t C,
                                                                       int64_t d0, int64_t h0, const int hn,
                                                                       uint32_t weight_pairs[][KEY_BLOCK / 2],
                                                                       float *acc) {
    const __m512i low = _mm512_loadu_si512(INTERLEAVE[0]), high = _mm512_loadu_si512(INTERLEAVE[1]);
    __m512 sums[HEAD_TILE][4];
    for (int h = 0; h < hn; h++)
        for (int t = 0; t < 4; t++) sums[h][t] = _mm512_loadu_ps(acc + (h0 + h) * C + d0 + 16 * t);
    for (int64_t j = 0; j < n; j += 2) {
        const uint16_t *first = c + j * C + d0, *second = first + C;
        const int pair = j + 1 < n;
        const __m512i a0 = _mm512_loadu_si512(first), a1 = _mm512_loadu_si512(first + 32);
        const __m512i b0 = pair ? _mm512_loadu_si512(second) : _mm512_setzero_si512();
        const __m512i b1 = pair ? _mm512_loadu_si512(second + 32) : _mm512_setzero_si512();
        const __m512bh rows[4] = {(__m512bh)_mm512_permutex2var_epi16(a0, low, b0),
                                  (__m512bh)_mm512_permutex2var_epi16(a0, high, b0),
                                  (__m512bh)_mm512_permutex2var_epi16(a1, low, b1),
                                  (__m512bh)_mm512_permutex2var_epi16(a1, high, b1)};
        for (int h = 0; h < hn; h++) {
            const __m512bh p = (__m512bh)_mm512_set1_epi32((int)weight_pairs[h0 + h][j / 2]);
            for (int t = 0; t < 4; t++) sums[h][t] = _mm512_dpbf16_ps(sums[h][t], rows[t], p);
        }
    }
    for (int h = 0; h < hn; h++)
        for (int t = 0; t < 4; t++) _mm512_storeu_ps(acc + (h0 + h) * C + d0 + 16 * t, sums[h][t]);
}

/* One head's scores of a block (its n keys) into softmax weights under the running maximum, rounded to bf16:
 * as pairs for pair_accumulate_tile, and added to the running sum as the products will see them. All in
 * registers: softmax_block's steps, fused. */
static inline void pair_softmax(const float scores[KEY_BLOCK], int64_t n, int64_t C, Running *running, float *acc,
                                uint32_t weight_pairs[KEY_BLOCK / 2]) {
    __mmask16 live[4];
    __m512 s[4];
    for (int g = 0; g < 4; g++) {
        const int64_t left = n - 16 * g;
        live[g] = left >= 16 ? (__mmask16)0xffff : left > 0 ? (__mmask16)((1u << left) - 1) : (__mmask16)0;
        s[g] = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), live[g], scores + 16 * g);
    }
    rescale(running, acc, C, _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(s[0], s[1]), _mm512_max_ps(s[2], s[3]))));
    const __m512 m = _mm512_set1_ps(running->max);
    __m512 w[4];
    for (int g = 0; g < 4; g++) w[g] = _mm512_maskz_mov_ps(live[g], fast_exp16(_mm512_sub_ps(s[g], m)));
    const __m512bh low = _mm512_cvtne2ps_pbh(w[1], w[0]), high = _mm512_cvtne2ps_pbh(w[3], w[2]);
    _mm512_storeu_si512(weight_pairs, (__m512i)low);
    _mm512_storeu_si512(weight_pairs + 16, (__m512i)high);
    __m512 sum = _mm512_loadu_ps(running->sum);
    sum = _mm512_add_ps(sum, widen_bf16(_mm512_castsi512_si256((__m512i)low)));
    sum = _mm512_add_ps(sum, widen_bf16(_mm512_extracti64x4_epi64((__m512i)low, 1)));
    sum = _mm512_add_ps(sum, widen_bf16(_mm512_castsi512_si256((__m512i)high)));
    sum = _mm512_add_ps(sum, widen_bf16(_mm512_extracti64x4_epi64((__m512i)high, 1)));
    _mm512_storeu_ps(running->sum, sum);
}
#endif

/* Reads count bf16s from p, one load per 64-byte line, so that they are in L2 when the blocks need them.
 * Between two decoding steps the rest of the step (the LM head's weights above all) evicts the cache from
 * L2 and L3. Read in the blocks' loop, between their arithmetic, each line then costs a wait on memory; read
 * here, back to back, they stream at the memory's full speed. (Software prefetches in the blocks' loop did
 * not help: measured.) */
static void read_ahead(const uint16_t *p, int64_t count) {
    const unsigned char *bytes = (const unsigned char *)p;
    unsigned char seen = 0;
    for (int64_t offset = 0; offset < count * (int64_t)sizeof *p; offset += 64) seen |= bytes[offset];
    __asm__ volatile("" : : "r"(seen)); /* the loads are the point: keep them */
}

/* One head's scores of a block (its n keys) into softmax weights under the running maximum, in place. */
static void softmax_block(float w[KEY_BLOCK], int64_t n, int64_t C, Running *running, float *acc) {
    for (int64_t j = n; j < KEY_BLOCK; j++) w[j] = -INFINITY;
    rescale(running, acc, C, block_max(w));
    const float m = running->max;
    for (int64_t j = 0; j < KEY_BLOCK; j++) w[j] = j < n ? fast_exp(w[j] - m) : 0.0f;
}

/* Scores, softmax weights and weighted latents for keys [k0, k1) of one row, into the running state (H)
 * and acc (H x C), which start at {-inf, 0} and zeros. queries: (H, C + R), [ql ; qr] * scale. */
static void attend_keys(const float *queries, const uint16_t *latent, const uint16_t *k_rope, int64_t k0, int64_t k1,
                        int64_t H, int64_t C, int64_t R, Running *running, float *acc) {
    const int64_t D = C + R;
#if defined(BF16_PRODUCTS)
    const int64_t P = C % 64 == 0 && R % 2 == 0 ? D / 2 : 0; /* bf16 pairs per key; 0: the fp32 path */
    uint32_t query_pairs[H * P + 1], pairs[P + 1][KEY_BLOCK], weight_pairs[H][KEY_BLOCK / 2];
    for (int64_t i = 0; i < H * P; i++)
        query_pairs[i] = bf16_from_float(queries[2 * i]) | (uint32_t)bf16_from_float(queries[2 * i + 1]) << 16;
#else
    const int64_t P = 0;
#endif
    float keys_t[P ? 1 : D][KEY_BLOCK]; /* the fp32 path's block of keys [c ; k], one row per dimension */
    float weights[H][KEY_BLOCK];        /* scores, then softmax weights */
    int64_t read_keys = READ_AHEAD_BYTES / (D * (int64_t)sizeof *latent) / KEY_BLOCK * KEY_BLOCK;
    read_keys = read_keys > KEY_BLOCK ? read_keys : KEY_BLOCK;
    for (int64_t start = k0; start < k1; start += KEY_BLOCK) {
        const int64_t n = k1 - start < KEY_BLOCK ? k1 - start : KEY_BLOCK;
        if ((start - k0) % read_keys == 0) { /* the next READ_AHEAD_BYTES of keys, into L2 */
            const int64_t count = k1 - start < read_keys ? k1 - start : read_keys;
            read_ahead(latent + start * C, count * C);
            read_ahead(k_rope + start * R, count * R);
        }
        const uint16_t *c = latent + start * C, *k = k_rope + start * R;
#if defined(BF16_PRODUCTS)
        if (P) {
            pair_block(c, k, n, C, R, pairs);
            FOR_HEAD_TILES(H, h0, hn, pair_scores_tile(query_pairs, pairs, P, h0, hn, weights))
            for (int64_t h = 0; h < H; h++) pair_softmax(weights[h], n, C, running + h, acc + h * C, weight_pairs[h]);
            for (int64_t d0 = 0; d0 < C; d0 += 64)
                FOR_HEAD_TILES(H, h0, hn, pair_accumulate_tile(c, n, C, d0, h0, hn, weight_pairs, acc))
            continue;
        }
#endif
        transpose_block(c, k, n, C, R, keys_t);
        block_scores(queries, keys_t, H, D, weights);
        for (int64_t h = 0; h < H; h++) {
            softmax_block(weights[h], n, C, running + h, acc + h * C);
            for (int64_t j = 0; j < KEY_BLOCK; j += LANES)
                for (int l = 0; l < LANES; l++) running[h].sum[l] += weights[h][j + l];
        }
        accumulate(c, n, H, C, weights, acc);
    }
}

/* out[i] = sum_d x[d] * w[d * width + i] for i < width, added in d's order with MULADD: the absorbed
 * projections (a query into latent space, a latent out to values). Under AVX-512 with FMA, 64 columns at a
 * time stay in registers (the same operations in the same order); the portable loop goes through memory. */
static void vector_matrix(const float *x, int64_t n, const float *w, int64_t width, float *out) {
    int64_t i0 = 0;
#if defined(__AVX512F__) && defined(__FMA__)
    for (; i0 + 64 <= width; i0 += 64) {
        __m512 sums[4];
        for (int t = 0; t < 4; t++) sums[t] = _mm512_setzero_ps();
        for (int64_t d = 0; d < n; d++) {
            const __m512 xd = _mm512_set1_ps(x[d]);
            for (int t = 0; t < 4; t++) sums[t] = _mm512_fmadd_ps(xd, _mm512_loadu_ps(w + d * width + i0 + 16 * t), sums[t]);
        }
        for (int t = 0; t < 4; t++) _mm512_storeu_ps(out + i0 + 16 * t, sums[t]);
    }
#endif
    for (int64_t i = i0; i < width; i++) out[i] = 0.0f;
    for (int64_t d = 0; d < n; d++)
        for (int64_t i = i0; i < width; i++) out[i] = MULADD(x[d], w[d * width + i], out[i]);
}

/* The number of parts a row of n_keys keys is split into: one per thread, each at least MIN_SPLIT_KEYS. */
static int64_t key_splits(int64_t n_keys, int threads) {
    int64_t splits = n_keys / MIN_SPLIT_KEYS;
    splits = splits < threads ? splits : threads;
    return splits > 1 ? splits : 1;
}

/* q (B, H, N + R): per head q_nope then q_rope; latent_new (B, C), k_rope_new (B, R): the step's projections
 * (latent already normalised, ropes not yet rotated). cos_table, sin_table (positions, R): rope.RotaryEmbedding's.
 * positions (B): each row's slot for this token. cache_latent (B, capacity, C), cache_k_rope
 * (B, capacity, R), bf16s: written at the row's slot, read up to it. w_uk (H, N + V, C): kv_b's weight per head
 * (its first N rows per head are W_uk); w_uv_t (H, C, V): W_uv transposed. out (B, H * V).
 * Returns 0, or -1 if a scratch buffer could not be allocated. */
int nanoprime_latent_attention(const float *q, const float *latent_new,
                               const float *k_rope_new, const float *cos_table, const float *sin_table,
                               const int64_t *positions, uint16_t *cache_latent, uint16_t *cache_k_rope,
                               int64_t capacity, const float *w_uk, const float *w_uv_t, int64_t B, int64_t H,
                               int64_t N, int64_t V, int64_t C, int64_t R, float scale, float *out) {
    const int64_t D = C + R;
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    /* Work items: (row, part of its keys). first[b] is row b's first item. */
    int64_t *first = malloc((size_t)(B + 1) * sizeof *first);
    if (first == NULL) return -1;
    first[0] = 0;
    for (int64_t b = 0; b < B; b++) first[b + 1] = first[b] + key_splits(positions[b] + 1, threads);
    const int64_t items = first[B];
    float *queries = malloc((size_t)(B * H * D) * sizeof *queries);
    Running *running = malloc((size_t)(items * H) * sizeof *running);
    float *acc = calloc((size_t)(items * H * C), sizeof *acc);
    if (queries == NULL || running == NULL || acc == NULL) {
        free(first), free(queries), free(running), free(acc);
        return -1;
    }

#pragma omp parallel for schedule(static) if (B > 1)
    for (int64_t b = 0; b < B; b++) { /* the new key into the cache, the queries into latent space */
        const int64_t p = positions[b];
        const float *cos_row = cos_table + p * R, *sin_row = sin_table + p * R;
        float rotated[R];
        rotate(k_rope_new + b * R, cos_row, sin_row, R, rotated);
        for (int64_t i = 0; i < C; i++) cache_latent[(b * capacity + p) * C + i] = bf16_from_float(latent_new[b * C + i]);
        for (int64_t i = 0; i < R; i++) cache_k_rope[(b * capacity + p) * R + i] = bf16_from_float(rotated[i]);
        for (int64_t h = 0; h < H; h++) {
            float *query = queries + (b * H + h) * D;
            const float *qn = q + (b * H + h) * (N + R), *w = w_uk + h * (N + V) * C;
            vector_matrix(qn, N, w, C, query);
            rotate(qn + N, cos_row, sin_row, R, query + C);
            for (int64_t i = 0; i < D; i++) query[i] *= scale;
        }
    }
    for (int64_t item = 0; item < items * H; item++) running[item] = (Running){.max = -INFINITY};

#pragma omp parallel for schedule(dynamic) if (items > 1)
    for (int64_t item = 0; item < items; item++) {
        int64_t b = 0;
        while (first[b + 1] <= item) b++;
        const int64_t n_keys = positions[b] + 1, splits = first[b + 1] - first[b], part = item - first[b];
        const int64_t k0 = n_keys * part / splits, k1 = n_keys * (part + 1) / splits;
        attend_keys(queries + b * H * D, cache_latent + b * capacity * C, cache_k_rope + b * capacity * R, k0, k1,
                    H, C, R, running + item * H, acc + item * H * C);
    }

#pragma omp parallel for schedule(static) if (B > 1)
    for (int64_t b = 0; b < B; b++) { /* merge the parts, normalise, and apply W_uv */
        for (int64_t h = 0; h < H; h++) {
            float top = -INFINITY;
            for (int64_t item = first[b]; item < first[b + 1]; item++)
                top = running[item * H + h].max > top ? running[item * H + h].max : top;
            float latent_out[C], total = 0.0f;
            for (int64_t i = 0; i < C; i++) latent_out[i] = 0.0f;
            for (int64_t item = first[b]; item < first[b + 1]; item++) {
                const float weight = fast_exp(running[item * H + h].max - top);
                total = MULADD(weight, lanes_total(running[item * H + h].sum), total);
                for (int64_t i = 0; i < C; i++)
                    latent_out[i] = MULADD(weight, acc[(item * H + h) * C + i], latent_out[i]);
            }
            for (int64_t i = 0; i < C; i++) latent_out[i] /= total;
            vector_matrix(latent_out, C, w_uv_t + h * C * V, V, out + (b * H + h) * V);
        }
    }
    free(first), free(queries), free(running), free(acc);
    return 0;
}
