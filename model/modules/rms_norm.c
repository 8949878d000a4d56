/* RMSNorm with its learned scale (model/modules/norm.py) for rows of fp32, in one call:
 *     out = weight * (x * (1 / sqrt(sum(x^2) / n + eps)))
 * the ops of torch's composite F.rms_norm and the scale, each rounded once, in the same order; the sum of
 * squares runs in lane_sum.h's order, so the result agrees with torch's to float rounding. Torch takes some
 * ten ops for it, ~15 us at any size a decoding step has: a step normalises 21 times.
 * Rows are independent and split over the OpenMP threads when there are enough of them, each row one
 * thread's: a row alone or in a batch gets the same numbers.
 */
#include <math.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "lane_sum.h"

#define MIN_PARALLEL_VALUES (64 * 1024) /* below, a fork and join costs more than the rows */

/* x, out (rows, n); weight (n). */
void nanoprime_rms_norm(const float *x, int64_t rows, int64_t n, const float *weight, float eps, float *out) {
#pragma omp parallel for schedule(static) if (rows * n >= MIN_PARALLEL_VALUES)
    for (int64_t r = 0; r < rows; r++) {
        const float *row = x + r * n;
        const float scale = 1.0f / sqrtf(sum_of_squares(row, n) / (float)n + eps);
        for (int64_t i = 0; i < n; i++) out[r * n + i] = weight[i] * (row[i] * scale);
    }
}
