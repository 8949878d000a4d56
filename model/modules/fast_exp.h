/* e^x as a branch-free polynomial that loops over it can vectorize, for the C kernels (cpu_kernels.py).
 *
 * x is clamped to [-87, 88]: below, e^-87 (about 1.6e-38) is a weight no sum of ones can tell from zero;
 * above, e^88 (about 1.7e38) is as good as infinity for the 1 + e^x of a sigmoid. Range reduction by ln 2 in
 * two parts, then a degree-7 Taylor polynomial on |r| <= ln(2) / 2 (truncation below 1e-8): within 1 ulp of
 * e^x over [-87, 0] and within 2 ulp up to 88. MULADD, which the kernels use too, is an FMA where there is one.
 */
#ifndef NANOPRIME_FAST_EXP_H
#define NANOPRIME_FAST_EXP_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __FMA__
#define MULADD(a, b, c) fmaf((a), (b), (c))
#else
#define MULADD(a, b, c) ((a) * (b) + (c))
#endif

static inline float fast_exp(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float n = x * 1.44269504f;
    n = (n + 12582912.0f) - 12582912.0f; /* round to nearest: 1.5 * 2^23 pushes the fraction out */
    float r = x - n * 0.693145751953125f; /* ln 2 = 0.693145751953125 + 1.428606765330187e-6 */
    r = r - n * 1.428606765330187e-6f;
    float poly = 1.0f / 5040.0f;
    poly = MULADD(poly, r, 1.0f / 720.0f);
    poly = MULADD(poly, r, 1.0f / 120.0f);
    poly = MULADD(poly, r, 1.0f / 24.0f);
    poly = MULADD(poly, r, 1.0f / 6.0f);
    poly = MULADD(poly, r, 0.5f);
    poly = MULADD(poly, r, 1.0f);
    poly = MULADD(poly, r, 1.0f);
    int32_t bits = ((int32_t)n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return poly * two_n;
}

#if defined(__AVX512F__)
#include <immintrin.h>

/* fast_exp on 16 lanes: the same operations in the same order. */
static inline __m512 fast_exp16(__m512 x) {
#ifdef __FMA__
#define MULADD16(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#else
#define MULADD16(a, b, c) _mm512_add_ps(_mm512_mul_ps((a), (b)), (c))
#endif
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    const __m512 shift = _mm512_set1_ps(12582912.0f);
    const __m512 n = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), shift), shift);
    __m512 r = _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(0.693145751953125f)));
    r = _mm512_sub_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(1.428606765330187e-6f)));
    __m512 poly = _mm512_set1_ps(1.0f / 5040.0f);
    poly = MULADD16(poly, r, _mm512_set1_ps(1.0f / 720.0f));
    poly = MULADD16(poly, r, _mm512_set1_ps(1.0f / 120.0f));
    poly = MULADD16(poly, r, _mm512_set1_ps(1.0f / 24.0f));
    poly = MULADD16(poly, r, _mm512_set1_ps(1.0f / 6.0f));
    poly = MULADD16(poly, r, _mm512_set1_ps(0.5f));
    poly = MULADD16(poly, r, _mm512_set1_ps(1.0f));
    poly = MULADD16(poly, r, _mm512_set1_ps(1.0f));
#undef MULADD16
    const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(poly, _mm512_castsi512_ps(bits));
}
#endif

#endif
