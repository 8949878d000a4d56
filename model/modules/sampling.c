/* Sampling with temperature alone (model/generation.py): one token per row of logits, for one uniform draw.
 *
 * Per row, with logits l (V), temperature T > 0 and the row's draw u in [0, 1):
 *     x_i = l_i / T,  w_i = exp(x_i - max x)        (0 below e^-87: -inf logits are never taken)
 *     token = the first i with w_0 + ... + w_i > u * sum w
 * which is what the torch path computes with a softmax, a cumulative sum over the whole vocabulary and a
 * search: some ten ops and two passes over a (rows, V) copy. Here the weights are summed in blocks of
 * BLOCK tokens (lane_sum.h's lanes and tree), the blocks are added up in order, and only the block the draw
 * falls in is walked token by token. The sums run in another order than torch's and exp is fast_exp.h's, so
 * the token for a draw agrees with the torch path's except within float rounding of a boundary between two
 * tokens. Each row is one thread's, in one order: a row gets the same token alone or in a batch.
 */
#include <math.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "fast_exp.h"
#include "lane_sum.h"

#define BLOCK 256           /* tokens per block sum */
#define MIN_PARALLEL_ROWS 4 /* a fork and join costs about what a row does */

/* The unnormalized probability of a token whose scaled logit is d below the row's largest. */
static inline float weight(float d) {
    return d < -87.0f ? 0.0f : fast_exp(d);
}

/* sum of the weights of tokens [i0, i1), in lanes. */
static inline float block_weight(const float *logits, int64_t i0, int64_t i1, float temperature, float top) {
    float lanes[LANES] = {0};
    int64_t i = i0;
    for (; i + LANES <= i1; i += LANES)
        for (int l = 0; l < LANES; l++) lanes[l] += weight(logits[i + l] / temperature - top);
    for (int l = 0; i + l < i1; l++) lanes[l] += weight(logits[i + l] / temperature - top);
    return add_lanes(lanes);
}

/* The largest logit. (A NaN logit makes the weights' total NaN, and sample_row falls back.) */
static inline float largest_logit(const float *logits, int64_t V) {
    float largest = -INFINITY;
    int64_t i = 0;
#if defined(__AVX512F__)
    __m512 lanes = _mm512_set1_ps(-INFINITY);
    for (; i + LANES <= V; i += LANES) lanes = _mm512_max_ps(lanes, _mm512_loadu_ps(logits + i));
    largest = _mm512_reduce_max_ps(lanes);
#endif
    for (; i < V; i++) largest = logits[i] > largest ? logits[i] : largest;
    return largest;
}

/* The first token with the largest logit, or 0: where no weights can be formed (NaN logits, none finite). */
static int64_t first_largest(const float *logits, int64_t V) {
    int64_t best = 0;
    for (int64_t i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

static int64_t sample_row(const float *logits, int64_t V, float temperature, float draw) {
    const float top = largest_logit(logits, V) / temperature; /* division by T > 0 keeps the order */
    const int64_t blocks = (V + BLOCK - 1) / BLOCK;
    float sums[blocks];
    float total = 0.0f;
    for (int64_t k = 0; k < blocks; k++) {
        sums[k] = block_weight(logits, k * BLOCK, k * BLOCK + BLOCK < V ? k * BLOCK + BLOCK : V, temperature, top);
        total += sums[k];
    }
    if (!(total > 0.0f) || !isfinite(total)) return first_largest(logits, V);
    const float target = draw * total;
    float before = 0.0f; /* the blocks' running total, added in the order of `total` */
    int64_t k = 0;
    while (k + 1 < blocks && !(before + sums[k] > target)) before += sums[k++];
    /* The draw falls in block k: walk it. The walk adds in another order than the block's sum, so it can end
     * just short of the target; the block's last token with a weight then takes the draw. */
    const int64_t end = k * BLOCK + BLOCK < V ? k * BLOCK + BLOCK : V;
    int64_t last = -1;
    float running = before;
    for (int64_t i = k * BLOCK; i < end; i++) {
        const float w = weight(logits[i] / temperature - top);
        if (w == 0.0f) continue;
        running += w;
        if (running > target) return i;
        last = i;
    }
    return last >= 0 ? last : first_largest(logits, V);
}

/* logits (rows, V) fp32; temperatures and draws (rows); out (rows): the tokens. */
void nanoprime_sample(const float *logits, int64_t rows, int64_t V, const float *temperatures, const float *draws,
                      int64_t *out) {
#pragma omp parallel for schedule(static) if (rows >= MIN_PARALLEL_ROWS)
    for (int64_t r = 0; r < rows; r++) out[r] = sample_row(logits + r * V, V, temperatures[r], draws[r]);
}
