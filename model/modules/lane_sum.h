/* Sums kept in 16 lanes and added up in one fixed tree, for the C kernels (cpu_kernels.py).
 *
 * A kernel that sums n values with lane l taking the values i with i % 16 == l, in order, and then adds the
 * lanes with add_lanes, gets the same total in its portable loop as in its AVX-512 one, where fold16 adds up
 * 16 such lane vectors at once in the same tree. So a result does not depend on the build or the batch.
 */
#ifndef NANOPRIME_LANE_SUM_H
#define NANOPRIME_LANE_SUM_H

#include <stdint.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define LANES 16

/* The lanes' total, added in fold16's tree: within each group of 4 lanes 2 apart, then the pair, then the
 * groups' sums in pairs. */
static inline float add_lanes(const float a[LANES]) {
    float group[4];
    for (int g = 0; g < 4; g++) group[g] = (a[4 * g] + a[4 * g + 2]) + (a[4 * g + 1] + a[4 * g + 3]);
    return (group[0] + group[1]) + (group[2] + group[3]);
}

/* v . v in the lanes and tree above (the lanes written out, so that the loop vectorizes). */
static inline float sum_of_squares(const float *v, int64_t n) {
    float lanes[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) lanes[l] += v[i + l] * v[i + l];
    for (int l = 0; i + l < n; l++) lanes[l] += v[i + l] * v[i + l];
    return add_lanes(lanes);
}

#if defined(__AVX512F__)
/* The lane sums of v[0..15], in order, as one vector, in add_lanes' tree: each round adds the two halves of
 * pairs of vectors (within 128-bit lanes, then across them), 15 adds and 30 shuffles for 16 sums. */
static inline __m512 fold16(const __m512 v[16]) {
    __m512 t[8], u[4];
    for (int i = 0; i < 8; i++) { /* per 128-bit lane of a pair a, b: [a0 + a2, b0 + b2, a1 + a3, b1 + b3] */
        const __m512 a = v[2 * i], b = v[2 * i + 1];
        t[i] = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    }
    for (int i = 0; i < 4; i++) { /* per 128-bit lane: that lane's sum of each of 4 vectors */
        const __m512d a = _mm512_castps_pd(t[2 * i]), b = _mm512_castps_pd(t[2 * i + 1]);
        u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    const __m512 low = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88), _mm512_shuffle_f32x4(u[0], u[1], 0xdd));
    const __m512 high = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88), _mm512_shuffle_f32x4(u[2], u[3], 0xdd));
    return _mm512_add_ps(_mm512_shuffle_f32x4(low, high, 0x88), _mm512_shuffle_f32x4(low, high, 0xdd));
}
#endif

#endif
