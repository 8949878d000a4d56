/* The LM head for a few rows (nanoprime.py): logits = x @ W^T, x (rows, D) against the fp32 matrix W (V, D).
 *
 * With a few rows the product is the read of W: pocket's tied embedding is 8192 x 384 floats, 12.6 MB, the
 * largest read of a decoding step. With more than one row, torch's matmul copies (packs) the whole matrix at
 * every call before it multiplies, which doubles that traffic, and its one-row product runs on one thread.
 * Here each tile of VOCAB_TILE rows of W is read once, from where it is, and multiplied with every x row while
 * it is in L1; the tiles are shared out over the OpenMP threads.
 *
 * A logit is summed in 16 lanes (lane l takes the inputs i with i % 16 == l, in order), then the lanes are
 * added in a fixed tree. So a row gets the same numbers alone or with others, on any number of threads; they
 * differ from torch's, which sums in another order, by float rounding.
 */
#include <stdint.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "lane_sum.h"

#define VOCAB_TILE 16
#define PREFETCH_TILES 2 /* how far ahead a thread asks for its next tiles of W */

/* out[v] = x . w[v] for one row x, vocabulary rows [v0, v1): the portable loop (and AVX-512's tail). */
static void logits_portable(const float *x, const float *w, int64_t D, int64_t v0, int64_t v1, float *out) {
    for (int64_t v = v0; v < v1; v++) {
        const float *row = w + v * D;
        float lanes[LANES] = {0};
        int64_t i = 0;
        for (; i + LANES <= D; i += LANES)
            for (int l = 0; l < LANES; l++) lanes[l] += x[i + l] * row[i + l];
        for (int l = 0; i + l < D; l++) lanes[l] += x[i + l] * row[i + l];
        out[v] = add_lanes(lanes);
    }
}

#if defined(__AVX512F__)
/* out[b][v0 + k] for 4 rows b0.. of x and 4 vocabulary rows v0..: 16 sums, each vector load feeding 4
 * multiply-adds. */
static inline void tile_4_rows(const float *x, int64_t b0, const float *w, int64_t v0, int64_t D, int64_t V,
                               float *out) {
    __m512 sums[16]; /* sums[4 * k + r]: vocabulary row v0 + k, x row b0 + r */
    for (int k = 0; k < 4; k++) /* the first 16 inputs: products, so that no zeros are added */
        for (int r = 0; r < 4; r++)
            sums[4 * k + r] = _mm512_mul_ps(_mm512_loadu_ps(w + (v0 + k) * D), _mm512_loadu_ps(x + (b0 + r) * D));
    for (int64_t i = 16; i < D; i += 16) {
        __m512 xs[4]; /* each load in a register for 4 multiply-adds (the empty asm: GCC would load 4 times) */
        for (int r = 0; r < 4; r++) {
            xs[r] = _mm512_loadu_ps(x + (b0 + r) * D + i);
            __asm__("" : "+v"(xs[r]));
        }
        for (int k = 0; k < 4; k++) {
            __m512 row = _mm512_loadu_ps(w + (v0 + k) * D + i);
            __asm__("" : "+v"(row));
            for (int r = 0; r < 4; r++) sums[4 * k + r] = _mm512_fmadd_ps(row, xs[r], sums[4 * k + r]);
        }
    }
    float logits[16];
    _mm512_storeu_ps(logits, fold16(sums));
    for (int k = 0; k < 4; k++)
        for (int r = 0; r < 4; r++) out[(b0 + r) * V + v0 + k] = logits[4 * k + r];
}

/* out[b][v0 .. v0 + 15] for one row b of x. */
static inline void tile_1_row(const float *x, int64_t b, const float *w, int64_t v0, int64_t D, int64_t V,
                              float *out) {
    __m512 sums[16];
    const __m512 first = _mm512_loadu_ps(x + b * D);
    for (int k = 0; k < 16; k++) sums[k] = _mm512_mul_ps(_mm512_loadu_ps(w + (v0 + k) * D), first);
    for (int64_t i = 16; i < D; i += 16) {
        const __m512 xs = _mm512_loadu_ps(x + b * D + i);
        for (int k = 0; k < 16; k++) sums[k] = _mm512_fmadd_ps(_mm512_loadu_ps(w + (v0 + k) * D + i), xs, sums[k]);
    }
    _mm512_storeu_ps(out + b * V + v0, fold16(sums));
}
#endif

/* Asks for W's rows [v0, v0 + VOCAB_TILE) as non-temporal: W is read once per call, and so passes through
 * L1 without pushing out of L2 and L3 what the rest of a decoding step reads again (measured: a decoding step
 * ~0.2 ms faster, at 1 and at 16 rows). */
static inline void prefetch_tile(const float *w, int64_t D, int64_t V, int64_t v0) {
    if (v0 >= V) return;
    const char *start = (const char *)(w + v0 * D);
    const int64_t bytes = (V - v0 < VOCAB_TILE ? V - v0 : VOCAB_TILE) * D * (int64_t)sizeof *w;
    for (int64_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(start + offset, 0, 0);
}

/* x (rows, D), w (V, D), out (rows, V): fp32, contiguous. */
void nanoprime_lm_head(const float *x, int64_t rows, int64_t D, const float *w, int64_t V, float *out) {
    const int64_t tiles = (V + VOCAB_TILE - 1) / VOCAB_TILE;
#pragma omp parallel for schedule(static)
    for (int64_t tile = 0; tile < tiles; tile++) {
        const int64_t v0 = tile * VOCAB_TILE, v1 = v0 + VOCAB_TILE < V ? v0 + VOCAB_TILE : V;
        prefetch_tile(w, D, V, v0 + PREFETCH_TILES * VOCAB_TILE);
#if defined(__AVX512F__)
        if (D >= 16 && D % 16 == 0 && v1 - v0 == VOCAB_TILE) {
            const int64_t grouped = rows / 4 * 4;
            for (int64_t k = 0; k < VOCAB_TILE; k += 4) /* 4 rows of W stay in L1 over the groups of x rows */
                for (int64_t b = 0; b < grouped; b += 4) tile_4_rows(x, b, w, v0 + k, D, V, out);
            for (int64_t b = grouped; b < rows; b++) tile_1_row(x, b, w, v0, D, V, out);
            continue;
        }
#endif
        for (int64_t b = 0; b < rows; b++) logits_portable(x + b * D, w, D, v0, v1, out + b * V);
    }
}
