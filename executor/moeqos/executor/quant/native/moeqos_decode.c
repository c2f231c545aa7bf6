/* moeqos's decode step in C for one new token of one stream: every layer's attention half (norm,
 * projections, rotary, the KV cache's new column, attention, residual, the second norm, Mixtral's
 * router) and MoE half (the token's routed experts, mixed into the residual) in one call, which returns
 * to the caller only where a layer or a layer's experts are not in a form these kernels read.
 *
 * Why (issue 13): at one token a layer of the default model is ~130 aten ops in eager PyTorch, each
 * costing its dispatch (~3-5 us on a 2-core AVX2 EPYC) where its arithmetic takes less, and then a
 * layer's Python glue (~50 us) was a tenth of the step; here a step is one call, and the matmuls are
 * moeqos_kernels.c's. Arithmetic follows the PyTorch step
 * (moeqos.executor.fast_decode) op by op: every value PyTorch holds in bf16 is rounded to bf16 here at
 * the same point (bf16_round), norms and attention run in fp32 as there, so the two differ only by the
 * order of fp32 sums (and a routing decision a near tie may flip).
 *
 * Layouts (H hidden, n query heads, h KV heads, d head dim, C cache columns, W filled, E experts, K top-k,
 * I an expert's intermediate size); every vector bf16 unless said otherwise:
 *   x [H] the residual stream, updated in place; normed [L, H] each layer's MoE input (written);
 *   keys, values: a layer's cache of the stream, [h, C, d] with head stride head_stride elements,
 *   column W written here; cos, sin [d] the token position's rotary rows (sin's first half negated);
 *   mask: bytes [W + 1] (nonzero: attend), or NULL for every column;
 *   router fp32 [E, H]; ids int64 [L, K] and weights fp32 [L, K] written (softmax over the top-k logits).
 * Return codes: 0 done, 1 a shape or matrix kind the step does not take, 2 out of memory.
 */
#include "moeqos_kernels.h"
#include <math.h>
#include <omp.h>
#include <stdlib.h>

enum { MQ_BF16 = 1, MQ_INT8 = 2, MQ_INT4 = 3 };

/* One weight matrix [N, K] as a moeqos_kernels.c kernel reads it (moeqos.executor.quant.native.decode
 * builds these from a loaded kernel): bf16 weight; int8 codes + scales [N]; native int4 codes + scales
 * and zeros [N, K / group]. */
typedef struct {
    int64_t kind, n, k, group;
    const void *w;
    const uint16_t *scales, *zeros;
} MqMatrix;

/* Shape and constants of one model's layers, fixed at load. */
typedef struct {
    int64_t hidden, heads, kv_heads, head_dim, experts, top_k;
    float norm_eps, scale;
} MqShape;

/* sum_i a[i] b[i] in fp32 for bf16 a and b (b_f32: fp32 b instead): eight partial sums with AVX2 (a
 * dot product summed in order waits on each add: 576 values took ~0.6 us; the order is not SDPA's or
 * BLAS's anyway). */
static float dot(const uint16_t *a, const uint16_t *b, const float *b_f32, int64_t n) {
    int64_t i = 0;
    float sum = 0.0f;
#ifdef MOEQOS_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8)
        acc = _mm256_fmadd_ps(widen8(a + i), b_f32 ? _mm256_loadu_ps(b_f32 + i) : widen8(b + i), acc);
    sum = hsum(acc);
#endif
    for (; i < n; i++) sum += bf16_to_f32(a[i]) * (b_f32 ? b_f32[i] : bf16_to_f32(b[i]));
    return sum;
}

/* y [N] = W x for one row x [K]. */
static int mat_vec(const MqMatrix *m, const uint16_t *x, uint16_t *y, int threads) {
    switch (m->kind) {
    case MQ_BF16:
        return moeqos_bf16_mm(x, 1, m->k, m->k, (const uint16_t *)m->w, m->n, y, m->n, threads);
    case MQ_INT8:
        return moeqos_q8_mm(x, 1, m->k, m->k, (const int8_t *)m->w, m->scales, m->n, y, m->n, threads);
    case MQ_INT4:
        return moeqos_q4_mm(x, 1, m->k, m->k, (const uint8_t *)m->w, m->scales, m->zeros, m->n, m->group, y,
                            m->n, threads);
    }
    return 1;
}

/* transformers' MixtralRMSNorm on bf16: fp32 mean of squares, x * rsqrt(mean + eps) rounded to bf16,
 * times the weight (rounded again). */
static void rms_norm(const uint16_t *x, const uint16_t *weight, int64_t n, float eps, uint16_t *out) {
    const float inverse = 1.0f / sqrtf(dot(x, x, NULL, n) / (float)n + eps);
    for (int64_t i = 0; i < n; i++)
        out[i] = f32_to_bf16(bf16_to_f32(weight[i]) * bf16_round(bf16_to_f32(x[i]) * inverse));
}

/* v [d] rotated in place: v * cos + rotate_half(v) * sin with rotate_half(v) = (v2, v1) and the sign in
 * `sin`, each product and the sum rounded to bf16 as torch's bf16 ops round them. */
static void rotate(uint16_t *v, const uint16_t *cos, const uint16_t *sin, int64_t d) {
    float original[512];
    const int64_t half = d / 2;
    for (int64_t i = 0; i < d; i++) original[i] = bf16_to_f32(v[i]);
    for (int64_t i = 0; i < d; i++) {
        const float turned = original[i < half ? i + half : i - half];
        const float a = bf16_round(original[i] * bf16_to_f32(cos[i]));
        const float b = bf16_round(turned * bf16_to_f32(sin[i]));
        v[i] = f32_to_bf16(a + b);
    }
}

/* out [d] = softmax(q . keys[c] * scale over attended columns c) . values, in fp32 (as the PyTorch step
 * runs SDPA for bf16 on the CPU), rounded to bf16. */
static int attend(const uint16_t *q, const uint16_t *keys, const uint16_t *values, int64_t columns,
                  int64_t d, const uint8_t *mask, float scale, uint16_t *out) {
    float *scores = (float *)malloc((size_t)columns * sizeof(float));
    float acc[512] = {0};
    if (!scores) return 2;
    float top = -INFINITY;
    for (int64_t c = 0; c < columns; c++) {
        if (mask && !mask[c]) continue;
        scores[c] = dot(q, keys + c * d, NULL, d) * scale;
        top = scores[c] > top ? scores[c] : top;
    }
    float total = 0.0f;
    for (int64_t c = 0; c < columns; c++) {
        if (mask && !mask[c]) continue;
        const float p = expf(scores[c] - top);
        total += p;
        for (int64_t i = 0; i < d; i++) acc[i] += p * bf16_to_f32(values[c * d + i]);
    }
    for (int64_t i = 0; i < d; i++) out[i] = f32_to_bf16(acc[i] / total);
    free(scores);
    return 0;
}

/* Mixtral's router on the normed token: fp32 logits, the top-k (the lower index first on a tie), their
 * softmax (equal to renormalizing the full softmax's top-k). */
static void route(const uint16_t *normed, const float *router, const MqShape *s, int64_t *ids, float *weights) {
    float logits[1024];
    for (int64_t e = 0; e < s->experts; e++) {
        logits[e] = dot(normed, NULL, router + e * s->hidden, s->hidden);
    }
    for (int64_t j = 0; j < s->top_k; j++) {
        int64_t best = -1;
        for (int64_t e = 0; e < s->experts; e++) {
            int taken = 0;
            for (int64_t t = 0; t < j; t++) taken |= ids[t] == e;
            if (!taken && (best < 0 || logits[e] > logits[best])) best = e;
        }
        ids[j] = best;
    }
    float total = 0.0f;
    for (int64_t j = 0; j < s->top_k; j++) {
        weights[j] = expf(logits[ids[j]] - logits[ids[0]]);
        total += weights[j];
    }
    for (int64_t j = 0; j < s->top_k; j++) weights[j] /= total;
}

/* One layer's weights and cache as the step reads them. */
typedef struct {
    const uint16_t *input_norm, *post_norm; /* bf16 [H] */
    const MqMatrix *q, *k, *v, *o;          /* NULL q: the caller runs the whole layer */
    const float *router;                    /* fp32 [E, H] */
    uint16_t *keys, *values;                /* [h, C, d], head stride head_stride */
    int64_t head_stride, experts_on;        /* experts_on 0: the MoE block adds nothing (profiling) */
    const MqMatrix *const *w13, *const *w2; /* [E] each, NULL (or NULL entries): the caller's experts */
} MqLayer;

/* x += attention(norm(x)) of one layer; normed = its second norm of x; the router's ids and weights. */
static int attention_half(const MqShape *s, const MqLayer *layer, uint16_t *x, uint16_t *normed,
                          const uint16_t *cos, const uint16_t *sin, int64_t width, const uint8_t *mask,
                          int64_t *ids, float *weights, int threads) {
    const int64_t n = s->heads, h = s->kv_heads, d = s->head_dim, hidden = s->hidden;
    if (d > 512 || d % 2 || n % h || s->experts > 1024 || s->top_k > s->experts) return 1;
    if (layer->q->n != n * d || layer->k->n != h * d || layer->v->n != h * d || layer->o->k != n * d) return 1;
    uint16_t *buffer = (uint16_t *)malloc((size_t)(2 * hidden + (2 * n + 2 * h) * d) * sizeof(uint16_t));
    if (!buffer) return 2;
    uint16_t *in = buffer, *q = in + hidden, *k = q + n * d, *v = k + h * d, *out = v + h * d;
    uint16_t *projected = out + n * d;
    int code = 0;
    rms_norm(x, layer->input_norm, hidden, s->norm_eps, in);
    if ((code = mat_vec(layer->q, in, q, threads)) || (code = mat_vec(layer->k, in, k, threads)) ||
        (code = mat_vec(layer->v, in, v, threads)))
        goto done;
    for (int64_t head = 0; head < n; head++) rotate(q + head * d, cos, sin, d);
    for (int64_t g = 0; g < h; g++) {
        rotate(k + g * d, cos, sin, d);
        memcpy(layer->keys + g * layer->head_stride + width * d, k + g * d, (size_t)d * sizeof(uint16_t));
        memcpy(layer->values + g * layer->head_stride + width * d, v + g * d, (size_t)d * sizeof(uint16_t));
    }
    /* query head i reads KV head i / (n / h), as repeat_kv; heads in parallel once the cache is long
     * enough for their work (2 d products per head and column) to outweigh a parallel region's start
     * (~1 us): from 32 columns the default model's attention took 0.35 -> 0.25 ms a token */
#pragma omp parallel for schedule(static) num_threads(threads > 1 && width >= 32 ? threads : 1) reduction(| : code)
    for (int64_t head = 0; head < n; head++) {
        const int64_t g = head / (n / h);
        code |= attend(q + head * d, layer->keys + g * layer->head_stride, layer->values + g * layer->head_stride,
                       width + 1, d, mask, s->scale, out + head * d);
    }
    if (code) goto done;
    if ((code = mat_vec(layer->o, out, projected, threads))) goto done;
    for (int64_t i = 0; i < hidden; i++) x[i] = f32_to_bf16(bf16_to_f32(x[i]) + bf16_to_f32(projected[i]));
    rms_norm(x, layer->post_norm, hidden, s->norm_eps, normed);
    route(normed, layer->router, s, ids, weights);
done:
    free(buffer);
    return code;
}

#ifdef MOEQOS_AVX2
/* e^x for eight fp32 values, Cephes' expf (x = n ln2 + r, |r| <= ln2 / 2, a degree-5 polynomial for e^r,
 * times 2^n): within 2 ulps of libm's expf, far inside the bf16 rounding the result meets.
 * Past expf's overflow bound the result is infinity, as expf's (silu(-100) is then -0 and silu(-inf) NaN,
 * as torch's); below -87.3 the polynomial's input is clamped (e^x ~ 0 next to the 1 it is added to). */
static inline __m256 exp8(__m256 input) {
    const __m256 overflow = _mm256_cmp_ps(input, _mm256_set1_ps(88.72283935546875f), _CMP_GT_OQ);
    const __m256 x = _mm256_min_ps(_mm256_max_ps(input, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.72283935546875f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    /* 2^n in two halves: n reaches 128 below the overflow bound, past a float's largest exponent */
    const __m256i whole = _mm256_cvtps_epi32(n), half = _mm256_srai_epi32(whole, 1);
    const __m256i bias = _mm256_set1_epi32(127);
    const __m256 low = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, bias), 23));
    const __m256 high = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(whole, half), bias), 23));
    return _mm256_blendv_ps(_mm256_mul_ps(_mm256_mul_ps(p, low), high), _mm256_set1_ps(INFINITY), overflow);
}

/* bf16 rounding (to nearest even) of eight fp32 values, kept as fp32; NaN stays NaN (f32_to_bf16). */
static inline __m256 round8(__m256 v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd));
    const __m256i kept = _mm256_and_si256(rounded, _mm256_set1_epi32((int)0xffff0000u));
    const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    return _mm256_blendv_ps(_mm256_castsi256_ps(kept), v, nan);
}
#endif

/* act [I] = silu(gate) * up, each rounded as torch's bf16 ops round it (silu computed in fp32); exported
 * for its test. A loop of libm expf over the default model's 60 experts a token took 0.6-0.9 ms of one
 * thread. Returns 0. */
int moeqos_silu_mul(const uint16_t *gate, const uint16_t *up, int64_t inter, uint16_t *act) {
    int64_t i = 0;
#ifdef MOEQOS_AVX2
    for (; i + 8 <= inter; i += 8) {
        const __m256 g = widen8(gate + i);
        const __m256 silu = round8(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), g)))));
        float product[8];
        _mm256_storeu_ps(product, _mm256_mul_ps(silu, widen8(up + i)));
        for (int u = 0; u < 8; u++) act[i + u] = f32_to_bf16(product[u]);
    }
#endif
    for (; i < inter; i++) {
        const float g = bf16_to_f32(gate[i]);
        act[i] = f32_to_bf16(bf16_round(g / (1.0f + expf(-g))) * bf16_to_f32(up[i]));
    }
    return 0;
}

/* y [H] = expert(normed) = w2 (silu(gate) * up) with (gate, up) = w13 normed ([2I]: gate rows first). */
static int expert(const MqMatrix *w13, const MqMatrix *w2, const uint16_t *normed, uint16_t *y, int threads) {
    const int64_t inter = w2->k;
    uint16_t *gate_up = (uint16_t *)malloc((size_t)(3 * inter) * sizeof(uint16_t));
    if (!gate_up) return 2;
    uint16_t *act = gate_up + 2 * inter;
    int code = mat_vec(w13, normed, gate_up, threads);
    if (!code) {
        moeqos_silu_mul(gate_up, gate_up + inter, inter, act);
        code = mat_vec(w2, act, y, threads);
    }
    free(gate_up);
    return code;
}

/* True when the `count` experts are all int4 matrices of one shape and group: equal work of the kind
 * that gains from running whole on one thread each (see moeqos_moe_step). */
static int equal_int4_experts(const MqMatrix *const *w13, const MqMatrix *const *w2, int64_t count) {
    for (int64_t j = 0; j < count; j++)
        if (w13[j]->kind != MQ_INT4 || w2[j]->kind != MQ_INT4 || w13[j]->n != w13[0]->n ||
            w13[j]->group != w13[0]->group || w2[j]->group != w2[0]->group)
            return 0;
    return 1;
}

/* x += sum_j weights[j] * expert_j(normed) for the token's `count` experts: each expert's output times
 * its weight rounded to bf16, summed in fp32 in slot order, rounded, added to x (the PyTorch step's
 * `mix`). Equal int4 experts whose count the threads divide run one per thread, whole: no barrier
 * between an expert's two matmuls, its SiLU and activation rounding in parallel with the others'. On
 * the 2-core EPYC a token's 60 int4 experts of the default model took 3.9 -> 3.6 ms so (the step's
 * MoE halves 4.1-4.3 -> 3.8 ms), while int8 and bf16 experts, which read at the memory's pace either
 * way, ran 5-45% slower (int8 5.4-5.9 -> 7.9-8.5 ms, bf16 8.2-8.7 -> 10.2-13.3). Otherwise each matmul
 * is split across the threads, which also keeps unequal experts (int4 beside bf16) balanced. */
int moeqos_moe_step(int64_t hidden, uint16_t *x, const uint16_t *normed, int64_t count,
                    const MqMatrix *const *w13, const MqMatrix *const *w2, const float *weights, int threads) {
    for (int64_t j = 0; j < count; j++)
        if (w13[j]->n != 2 * w2[j]->k || w13[j]->k != hidden || w2[j]->n != hidden) return 1;
    uint16_t *ys = (uint16_t *)malloc((size_t)(count * hidden) * sizeof(uint16_t));
    if (!ys) return 2;
    int code = 0;
    if (threads > 1 && count % threads == 0 && equal_int4_experts(w13, w2, count)) {
#pragma omp parallel for schedule(static) num_threads(threads) reduction(| : code)
        for (int64_t j = 0; j < count; j++) code |= expert(w13[j], w2[j], normed, ys + j * hidden, 1);
    } else {
        for (int64_t j = 0; j < count && !code; j++) code = expert(w13[j], w2[j], normed, ys + j * hidden, threads);
    }
    if (!code)
        for (int64_t i = 0; i < hidden; i++) {
            float sum = 0.0f;
            for (int64_t j = 0; j < count; j++)
                sum += bf16_round(bf16_to_f32(ys[j * hidden + i]) * bf16_round(weights[j]));
            x[i] = f32_to_bf16(bf16_to_f32(x[i]) + bf16_round(sum));
        }
    free(ys);
    return code;
}

/* Layers first, first + 1, ... of one decode step for one token: attention half, then, when every routed
 * expert has a matrix here, the MoE half. Stops where the caller must act and says so in stop[2]:
 * {layer, 1} when that layer's attention half is done and its experts are the caller's (normed, ids and
 * weights of the layer written: rows `layer` of normed [L, H], ids [L, K], weights [L, K]); {layer, 0}
 * when the whole layer is the caller's (no q matrix), or layer == count when all are done. With
 * `seconds` (else NULL), the wall time of the attention halves is added to seconds[0] and of the MoE
 * halves to seconds[1] (the profile's breakdown of a step it cannot see into). */
int moeqos_decode_layers(const MqShape *s, const MqLayer *layers, int64_t count, int64_t first, uint16_t *x,
                         uint16_t *normed, int64_t *ids, float *weights, const uint16_t *cos,
                         const uint16_t *sin, int64_t width, const uint8_t *mask, int64_t *stop,
                         double *seconds, int threads) {
    const int64_t hidden = s->hidden, top_k = s->top_k;
    for (int64_t i = first; i < count; i++) {
        const MqLayer *layer = layers + i;
        uint16_t *normed_i = normed + i * hidden;
        int64_t *ids_i = ids + i * top_k;
        float *weights_i = weights + i * top_k;
        stop[0] = i, stop[1] = 0;
        if (!layer->q) return 0;
        const double start = seconds ? omp_get_wtime() : 0.0;
        int code = attention_half(s, layer, x, normed_i, cos, sin, width, mask, ids_i, weights_i, threads);
        if (seconds) seconds[0] += omp_get_wtime() - start;
        if (code) return code;
        if (!layer->experts_on) continue;
        const MqMatrix *w13[64], *w2[64];
        int readable = top_k <= 64 && layer->w13 && layer->w2;
        for (int64_t j = 0; readable && j < top_k; j++) {
            w13[j] = layer->w13[ids_i[j]], w2[j] = layer->w2[ids_i[j]];
            readable = w13[j] && w2[j];
        }
        if (!readable) {
            stop[1] = 1;
            return 0;
        }
        const double moe_start = seconds ? omp_get_wtime() : 0.0;
        code = moeqos_moe_step(hidden, x, normed_i, top_k, w13, w2, weights_i, threads);
        if (seconds) seconds[1] += omp_get_wtime() - moe_start;
        if (code) return code;
    }
    stop[0] = count, stop[1] = 0;
    return 0;
}
