/* SwiGLU's gate (model/modules/ffn.py) for rows of fp32, in one call: out = silu(gate) * up, where each row
 * of gate_up holds the gate's `hidden` values, then up's. silu(v) = v / (1 + e^-v) with fast_exp.h's
 * exponential, so the result agrees with torch's F.silu(gate) * up to float rounding. Torch takes two ops on
 * strided halves for it, ~11 us for a decoding step's 16 rows of pocket's 1024; this loop vectorizes.
 */
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "fast_exp.h"

#define MIN_PARALLEL_VALUES (64 * 1024) /* below, a fork and join costs more than the rows */

/* gate_up (rows, 2 * hidden), out (rows, hidden). */
void nanoprime_swiglu(const float *gate_up, int64_t rows, int64_t hidden, float *out) {
#pragma omp parallel for schedule(static) if (rows * hidden >= MIN_PARALLEL_VALUES)
    for (int64_t r = 0; r < rows; r++) {
        const float *gate = gate_up + r * 2 * hidden, *up = gate + hidden;
        float *o = out + r * hidden;
        for (int64_t i = 0; i < hidden; i++) o[i] = gate[i] / (1.0f + fast_exp(-gate[i])) * up[i];
    }
}
