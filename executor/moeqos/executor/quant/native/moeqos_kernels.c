/* moeqos's native CPU matmuls: y = x @ W.T for a few rows of bf16 activations against one weight matrix
 * in int4 (grouped, asymmetric), int8 (per output row) or bf16, accumulated in fp32, rounded to bf16.
 *
 * Why: at one decode row torch's CPU weight-only ops are compute-bound where the CPU lacks AVX512
 * (measured on a 2-core AVX2 AMD EPYC, 3072x576, one thread: `_weight_int4pack_mm_for_cpu` 252 us,
 * `_weight_int8pack_mm` 145 us, bf16 `mm` 364 us, where the weight's bytes take 70-150 us to read).
 * - int4: activations rounded to int8 per 32 values (llama.cpp's Q8_0), codes times them summed exactly
 *   in int32 by `maddubs`, four output features at a time sharing the loads of x;
 * - int8: the same with activations rounded to int16 (`madd`; see quantize_rows16 for why not 8 bits);
 * - bf16: the weight widened to fp32 in registers (exact), TILE rows of x per pass over it;
 * - for many rows, int4 and int8 weights dequantized to fp32 (the caller then runs one fp32 GEMM);
 * - bit-packed int3/int2 codes unpacked into the byte stream torch's int4 op reads (packed_kernels.py).
 * Built at first use by moeqos.executor.quant.native with -march=native; without AVX2 and FMA the plain
 * C loops below them are compiled instead (the Python side times the native kernels against torch's
 * ops and keeps whichever is faster, so a slow build is never used).
 *
 * Layouts (N output features, K input features, G = K / group groups):
 *   x, y:   bf16 [M, K] and [M, N], rows contiguous (row strides x_stride, y_stride in elements)
 *   int4:   codes [N, K/2] bytes, K a multiple of 64; the 32 bytes of 64-weight block b of a row hold
 *           code 64b+i in the low nibble of byte i and code 64b+32+i in its high nibble; scales, zeros
 *           bf16 [N, G], the group a multiple of 32; w = (code - 8) * scale + zero
 *   int8:   codes int8 [N, K], K a multiple of 32; scales bf16 [N]; w = code * scale
 *   bf16:   [N, K], K a multiple of 8
 * Parallel over output features with OpenMP: loaded after torch, the library shares torch's libgomp
 * (same soname), so its threads are torch's pool, sized by the caller (torch.get_num_threads()).
 * Return codes: 0 done, 1 a shape the kernel does not take, 2 out of memory.
 */
#include "moeqos_kernels.h"
#include <stdlib.h>
#include <math.h>
#include <omp.h>

#define TILE 4     /* rows of x multiplied per pass over a bf16 weight */
#define FEATURES 4 /* output features computed together by the integer kernels */
#define MIN_PARALLEL (1 << 16) /* weights below which one thread does the whole product */
/* Bytes ahead of the weight being read that the kernels ask the cache for (_mm_prefetch): a decode
 * row's weights are read once, in rows this short (288 bytes of int4 codes at K = 576) that the hardware
 * prefetcher stops at each row's end. Measured on the 2-core AVX2 EPYC, a token's 60 default-model
 * experts from memory, 2 threads: int4 5.1-5.4 -> 3.9-4.2 ms, int8 11.0-12.4 -> 7.7-8.1 ms, bf16
 * 13.2-13.6 -> 9.6-11.0 ms (bf16 rows, 1152 bytes, read one at a time, need less lead). */
#define PREFETCH 2048
#define PREFETCH_BF16 1024

/* x bf16 [M, K] (row stride x_stride) -> fp32 [M, K], contiguous; NULL when out of memory. */
static float *widen_rows(const uint16_t *x, int64_t m, int64_t k, int64_t x_stride) {
    float *xf = (float *)malloc((size_t)(m * k) * sizeof(float));
    if (!xf) return NULL;
    for (int64_t r = 0; r < m; r++)
        for (int64_t i = 0; i < k; i++) xf[r * k + i] = bf16_to_f32(x[r * x_stride + i]);
    return xf;
}

static int threads_for(int64_t n, int64_t k, int threads) {
    return (n * k < MIN_PARALLEL || threads < 1) ? 1 : threads;
}

/* ---------------------------------------------------------------- activations as int8 ---------- */

#ifdef MOEQOS_AVX2
/* block_amax with AVX2: the block's 32 values widened into v[4] (8 each) and their largest magnitude. */
static inline float block_max8(const uint16_t *x, __m256 v[4]) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 amax = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
    for (int u = 0; u < 4; u++) {
        v[u] = widen8(x + 8 * u);
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[u]));
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(v[u], v[u], _CMP_UNORD_Q));
    }
    if (_mm256_movemask_ps(nan)) return NAN;
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

/* v[4] * inv rounded to the nearest integer, ties to even (as lrintf in the default rounding mode). */
static inline void block_round8(const __m256 v[4], float inv, __m256i q[4]) {
    const __m256 scale = _mm256_set1_ps(inv);
    for (int u = 0; u < 4; u++) q[u] = _mm256_cvtps_epi32(_mm256_mul_ps(v[u], scale));
}
#endif

/* One block's codes: x[32] * inv rounded to integers, saturated into int8 (xq8) or int16 (xq16). */
static void block_codes(const uint16_t *x, float inv, int8_t *xq8, int16_t *xq16) {
#ifdef MOEQOS_AVX2
    __m256 v[4];
    __m256i q[4];
    block_max8(x, v);
    block_round8(v, inv, q);
    if (xq8) { /* packs interleave 128-bit lanes; the permutation puts the 32 codes back in order */
        const __m256i words = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        _mm256_storeu_si256((__m256i *)xq8, _mm256_permutevar8x32_epi32(words, order));
    } else {
        _mm256_storeu_si256((__m256i *)xq16, _mm256_permute4x64_epi64(_mm256_packs_epi32(q[0], q[1]), 0xD8));
        _mm256_storeu_si256((__m256i *)(xq16 + 16), _mm256_permute4x64_epi64(_mm256_packs_epi32(q[2], q[3]), 0xD8));
    }
#else
    for (int i = 0; i < 32; i++) {
        const long c = lrintf(bf16_to_f32(x[i]) * inv);
        if (xq8) xq8[i] = (int8_t)c;
        else xq16[i] = (int16_t)c;
    }
#endif
}

/* The largest magnitude of a block of 32 values: NaN if any is NaN, infinity if any is infinite. Such
 * a block's scale (amax / levels) is then NaN or infinite and its codes 0, so the product comes out NaN,
 * as torch's would, rather than a finite wrong number. */
static float block_amax(const uint16_t *x) {
#ifdef MOEQOS_AVX2
    __m256 v[4];
    return block_max8(x, v);
#else
    float amax = 0.0f;
    int nan = 0;
    for (int i = 0; i < 32; i++) {
        const float a = fabsf(bf16_to_f32(x[i]));
        nan |= a != a;
        amax = a > amax ? a : amax;
    }
    return nan ? NAN : amax;
#endif
}

/* Rows of x as int8 blocks of 32 with one fp32 scale each (llama.cpp's Q8_0): xq [M, K], dx [M, K/32],
 * and the fp32 sum of each weight group's x, xsum [M, K/group] (the zero points' term needs no
 * rounding). Integer products of codes and xq are exact; only x's rounding to 8 bits (at most half a
 * step of its block's largest value / 127) separates the result from the fp32 product: the default
 * model's all-int4 perplexity on 2,048 ptb:test tokens 98.24 -> 98.59, where int4 itself costs +24%. */
typedef struct {
    int8_t *xq;
    float *dx, *xsum;
} QuantRows;

static void free_rows(QuantRows *q) {
    free(q->xq);
    free(q->dx);
    free(q->xsum);
}

/* The fp32 sum of n bf16 values, n a multiple of 8 (eight partial sums, then theirs). */
static float group_sum(const uint16_t *x, int64_t n) {
#ifdef MOEQOS_AVX2
    __m256 sum = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 8) sum = _mm256_add_ps(sum, widen8(x + i));
    return hsum(sum);
#else
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += bf16_to_f32(x[i]);
    return sum;
#endif
}

static int quantize_rows(const uint16_t *x, int64_t m, int64_t k, int64_t x_stride, int64_t group,
                         QuantRows *q) {
    const int64_t blocks = k / 32, groups = k / group;
    q->xq = (int8_t *)aligned_alloc(32, (size_t)(m * k));
    q->dx = (float *)malloc((size_t)(m * blocks) * sizeof(float));
    q->xsum = (float *)malloc((size_t)(m * groups) * sizeof(float));
    if (!q->xq || !q->dx || !q->xsum) {
        free_rows(q);
        return 0;
    }
    for (int64_t r = 0; r < m; r++) {
        for (int64_t b = 0; b < blocks; b++) {
            const float amax = block_amax(x + r * x_stride + b * 32);
            const float inv = amax > 0 && !isinf(amax) ? 127.0f / amax : 0.0f;
            q->dx[r * blocks + b] = amax / 127.0f;
            block_codes(x + r * x_stride + b * 32, inv, q->xq + r * k + b * 32, NULL);
        }
        for (int64_t g = 0; g < groups; g++) q->xsum[r * groups + g] = group_sum(x + r * x_stride + g * group, group);
    }
    return 1;
}

/* ---------------------------------------------------------------- int4, grouped, asymmetric ----- */

#define CHUNK 32 /* output features whose block scales are computed together (a multiple of FEATURES) */

/* Block scales of `features` consecutive features: out[f, b] = scale[f, g(b)] dx[b] for the 32-blocks b
 * of a row (g(b) = b / per_group), in one pass over the features' scales [features, G] as one flat
 * array (per_group 1: scale i times dx_tile[i]; per_group 2: each scale twice), where dx_tile repeats
 * dx once per feature. Per feature the table took longer than the feature's codes: nine groups per
 * row of a 576-input weight leave a vector loop of one pass and a scalar tail (~150 cycles per four
 * features against ~160 for their products). */
static void block_scales(const uint16_t *scales, const float *dx_tile, int64_t features, int64_t groups,
                         int64_t per_group, float *out) {
    const int64_t total = features * groups;
    int64_t i = 0;
#ifdef MOEQOS_AVX2
    if (per_group == 1)
        for (; i + 8 <= total; i += 8) _mm256_storeu_ps(out + i, _mm256_mul_ps(widen8(scales + i), _mm256_loadu_ps(dx_tile + i)));
    else if (per_group == 2)
        for (; i + 8 <= total; i += 8) {
            const __m256 s = widen8(scales + i), low = _mm256_unpacklo_ps(s, s), high = _mm256_unpackhi_ps(s, s);
            _mm256_storeu_ps(out + 2 * i, _mm256_mul_ps(_mm256_permute2f128_ps(low, high, 0x20), _mm256_loadu_ps(dx_tile + 2 * i)));
            _mm256_storeu_ps(out + 2 * i + 8, _mm256_mul_ps(_mm256_permute2f128_ps(low, high, 0x31), _mm256_loadu_ps(dx_tile + 2 * i + 8)));
        }
#endif
    for (; i < total; i++) {
        const float s = bf16_to_f32(scales[i]);
        for (int64_t b = i * per_group; b < (i + 1) * per_group; b++) out[b] = s * dx_tile[b];
    }
}

/* Four output features (FEATURES rows of the weight) for one row of x: out[j] = sum_k x[k] w_j[k], with
 * w = (code - 8) * scale + zero per group: sum_b (dx_b scale_g(b)) (codes . xq)_b + sum_g (zero_g -
 * 8 scale_g) xsum_g, the codes . xq of each 32-block summed exactly in int32, block_scale [FEATURES,
 * blocks] from block_scales. Four features at once share the loads of x and give the FMAs independent
 * chains (one feature at a time waited on its one accumulator: 12 cycles per 64 weights measured,
 * against ~4 here). Codes come as 64-weight blocks of 32 bytes: byte i holds code i (low nibble) and
 * code 32 + i (high nibble). */
static void q4_features(const int8_t *xq, const float *xsum, int64_t k, int64_t group,
                        const uint8_t *codes[FEATURES], const uint16_t *scales[FEATURES],
                        const uint16_t *zeros[FEATURES], const float *block_scale, float out[FEATURES]) {
    const int64_t blocks = k / 32, groups = k / group;
#ifdef MOEQOS_AVX2
    const __m256i low = _mm256_set1_epi8(0x0f);
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256 eight = _mm256_set1_ps(8.0f);
    __m256 even[FEATURES], odd[FEATURES];
    for (int j = 0; j < FEATURES; j++) { /* the zero points' term, eight groups at a time, starts `even` */
        int64_t g = 0;
        even[j] = odd[j] = _mm256_setzero_ps();
        for (; g + 8 <= groups; g += 8) {
            const __m256 s = widen8(scales[j] + g), z = widen8(zeros[j] + g);
            even[j] = _mm256_fmadd_ps(_mm256_fnmadd_ps(eight, s, z), _mm256_loadu_ps(xsum + g), even[j]);
        }
        out[j] = 0.0f;
        for (; g < groups; g++) out[j] += (bf16_to_f32(zeros[j][g]) - 8.0f * bf16_to_f32(scales[j][g])) * xsum[g];
    }
    for (int64_t b = 0; b < blocks; b += 2) { /* blocks b and b + 1: one 64-weight code block */
        const __m256i x0 = _mm256_load_si256((const __m256i *)(xq + b * 32));
        const __m256i x1 = _mm256_load_si256((const __m256i *)(xq + b * 32 + 32));
        for (int j = 0; j < FEATURES; j++) {
            _mm_prefetch((const char *)(codes[j] + b * 16 + PREFETCH), _MM_HINT_T0);
            const __m256i v = _mm256_loadu_si256((const __m256i *)(codes[j] + b * 16));
            const __m256i c0 = _mm256_and_si256(v, low);
            const __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
            const __m256i d0 = _mm256_madd_epi16(_mm256_maddubs_epi16(c0, x0), ones);
            const __m256i d1 = _mm256_madd_epi16(_mm256_maddubs_epi16(c1, x1), ones);
            const __m256 s0 = _mm256_broadcast_ss(block_scale + j * blocks + b);
            const __m256 s1 = _mm256_broadcast_ss(block_scale + j * blocks + b + 1);
            even[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d0), s0, even[j]);
            odd[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d1), s1, odd[j]);
        }
    }
    for (int j = 0; j < FEATURES; j++) out[j] += hsum(_mm256_add_ps(even[j], odd[j]));
#else
    for (int j = 0; j < FEATURES; j++) {
        out[j] = 0.0f;
        for (int64_t g = 0; g < groups; g++)
            out[j] += (bf16_to_f32(zeros[j][g]) - 8.0f * bf16_to_f32(scales[j][g])) * xsum[g];
        for (int64_t b = 0; b < blocks; b++) {
            const uint8_t *block = codes[j] + (b / 2) * 32;
            int32_t dot = 0;
            for (int i = 0; i < 32; i++) dot += ((b % 2) ? block[i] >> 4 : block[i] & 0x0f) * xq[b * 32 + i];
            out[j] += (float)dot * block_scale[j * blocks + b];
        }
    }
#endif
}

int moeqos_q4_mm(const uint16_t *x, int64_t m, int64_t k, int64_t x_stride, const uint8_t *codes,
                 const uint16_t *scales, const uint16_t *zeros, int64_t n, int64_t group, uint16_t *y,
                 int64_t y_stride, int threads) {
    if (k % 64 || group % 32 || k % group) return 1;
    QuantRows q;
    if (!quantize_rows(x, m, k, x_stride, group, &q)) return 2;
    const int64_t groups = k / group, blocks = k / 32, chunks = (n + CHUNK - 1) / CHUNK;
    const int team = threads_for(n, k, threads);
    /* m rows' dx, each repeated CHUNK times, then one block-scale table per thread */
    float *tables = (float *)malloc((size_t)((m + team) * CHUNK * blocks) * sizeof(float));
    if (!tables) {
        free_rows(&q);
        return 2;
    }
    for (int64_t r = 0; r < m; r++)
        for (int64_t f = 0; f < CHUNK; f++) memcpy(tables + (r * CHUNK + f) * blocks, q.dx + r * blocks, (size_t)blocks * sizeof(float));
#pragma omp parallel for schedule(static) num_threads(team)
    for (int64_t chunk = 0; chunk < chunks; chunk++) {
        float *block_scale = tables + (m + omp_get_thread_num()) * CHUNK * blocks;
        const int64_t first = chunk * CHUNK, count = n - first < CHUNK ? n - first : CHUNK;
        for (int64_t r = 0; r < m; r++) {
            block_scales(scales + first * groups, tables + r * CHUNK * blocks, count, groups, blocks / groups, block_scale);
            for (int64_t f = count; f % FEATURES; f++) /* a last quad's missing features repeat the last one */
                memcpy(block_scale + f * blocks, block_scale + (count - 1) * blocks, (size_t)blocks * sizeof(float));
            for (int64_t quad = 0; quad < count; quad += FEATURES) {
                const uint8_t *c[FEATURES];
                const uint16_t *s[FEATURES], *z[FEATURES];
                for (int j = 0; j < FEATURES; j++) { /* past the last feature: the last again, not stored */
                    const int64_t f = quad + j < count ? first + quad + j : first + count - 1;
                    c[j] = codes + f * (k / 2), s[j] = scales + f * groups, z[j] = zeros + f * groups;
                }
                float out[FEATURES];
                q4_features(q.xq + r * k, q.xsum + r * groups, k, group, c, s, z, block_scale + quad * blocks, out);
                for (int j = 0; j < FEATURES && quad + j < count; j++) y[r * y_stride + first + quad + j] = f32_to_bf16(out[j]);
            }
        }
    }
    free(tables);
    free_rows(&q);
    return 0;
}

/* ---------------------------------------------------------------- int8, per output row ---------- */

/* Rows of x as int16 blocks of 32 with one fp32 scale each: xq [M, K], dx [M, K/32]. 16 bits, not 8, for
 * int8 weights: rounded to 8 bits the activations erred more than the int8 weights do (the default model's
 * perplexity on 2,048 ptb:test tokens 79.49 -> 79.59), and an int8 weight's bytes take longer to read
 * from memory than the 16-bit products take. */
typedef struct {
    int16_t *xq;
    float *dx;
} Quant16Rows;

static int quantize_rows16(const uint16_t *x, int64_t m, int64_t k, int64_t x_stride, Quant16Rows *q) {
    const int64_t blocks = k / 32;
    q->xq = (int16_t *)aligned_alloc(32, (size_t)(m * k) * sizeof(int16_t));
    q->dx = (float *)malloc((size_t)(m * blocks) * sizeof(float));
    if (!q->xq || !q->dx) {
        free(q->xq);
        free(q->dx);
        return 0;
    }
    for (int64_t r = 0; r < m; r++)
        for (int64_t b = 0; b < blocks; b++) {
            const float amax = block_amax(x + r * x_stride + b * 32);
            const float inv = amax > 0 && !isinf(amax) ? 32767.0f / amax : 0.0f;
            q->dx[r * blocks + b] = amax / 32767.0f;
            block_codes(x + r * x_stride + b * 32, inv, NULL, q->xq + r * k + b * 32);
        }
    return 1;
}

/* Four output features for one row of x: out[j] = sum_k x[k] code_j[k] (the row's scale applied by the
 * caller): per 32-block an exact int32 dot of the codes widened to int16 and xq (madd), times dx. Four
 * at once for the reason q4_features gives. */
static void q8_features(const int16_t *xq, const float *dx, int64_t k, const int8_t *codes[FEATURES],
                        float out[FEATURES]) {
    const int64_t blocks = k / 32;
#ifdef MOEQOS_AVX2
    __m256 acc[FEATURES];
    for (int j = 0; j < FEATURES; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        const __m256i x0 = _mm256_load_si256((const __m256i *)(xq + b * 32));
        const __m256i x1 = _mm256_load_si256((const __m256i *)(xq + b * 32 + 16));
        const __m256 d = _mm256_broadcast_ss(dx + b);
        for (int j = 0; j < FEATURES; j++) {
            _mm_prefetch((const char *)(codes[j] + b * 32 + PREFETCH), _MM_HINT_T0);
            const __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(codes[j] + b * 32)));
            const __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(codes[j] + b * 32 + 16)));
            const __m256i p = _mm256_add_epi32(_mm256_madd_epi16(w0, x0), _mm256_madd_epi16(w1, x1));
            acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), d, acc[j]);
        }
    }
    for (int j = 0; j < FEATURES; j++) out[j] = hsum(acc[j]);
#else
    for (int j = 0; j < FEATURES; j++) {
        out[j] = 0.0f;
        for (int64_t b = 0; b < blocks; b++) {
            int32_t dot = 0;
            for (int i = 0; i < 32; i++) dot += codes[j][b * 32 + i] * xq[b * 32 + i];
            out[j] += (float)dot * dx[b];
        }
    }
#endif
}

int moeqos_q8_mm(const uint16_t *x, int64_t m, int64_t k, int64_t x_stride, const int8_t *codes,
                 const uint16_t *scales, int64_t n, uint16_t *y, int64_t y_stride, int threads) {
    if (k % 32) return 1;
    Quant16Rows q;
    if (!quantize_rows16(x, m, k, x_stride, &q)) return 2;
    const int64_t quads = (n + FEATURES - 1) / FEATURES;
#pragma omp parallel for schedule(static) num_threads(threads_for(n, k, threads))
    for (int64_t quad = 0; quad < quads; quad++) {
        const int8_t *c[FEATURES];
        for (int j = 0; j < FEATURES; j++)
            c[j] = codes + (quad * FEATURES + j < n ? quad * FEATURES + j : n - 1) * k;
        for (int64_t r = 0; r < m; r++) {
            float out[FEATURES];
            q8_features(q.xq + r * k, q.dx + r * (k / 32), k, c, out);
            for (int j = 0; j < FEATURES && quad * FEATURES + j < n; j++) {
                const int64_t f = quad * FEATURES + j;
                y[r * y_stride + f] = f32_to_bf16(out[j] * bf16_to_f32(scales[f]));
            }
        }
    }
    free(q.xq);
    free(q.dx);
    return 0;
}

/* ---------------------------------------------------------------- bf16 ------------------------- */

/* out[t] = sum_k x[t, k] w[k] in fp32 (a bf16 weight widens exactly: its bits shifted up by 16); four
 * accumulators, so consecutive FMAs do not wait for each other. */
static void bf16_feature(const float *xf, int64_t k, const uint16_t *w, int rows, float *out) {
    for (int t = 0; t < rows; t++) {
        const float *xr = xf + t * k;
#ifdef MOEQOS_AVX2
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        int64_t i = 0;
        for (; i + 32 <= k; i += 32)
            for (int u = 0; u < 4; u++) {
                if (u % 2 == 0) /* once per 32 bytes: lines of 64 are not aligned to the rows */
                    _mm_prefetch((const char *)(w + i + 8 * u) + PREFETCH_BF16, _MM_HINT_T0);
                acc[u] = _mm256_fmadd_ps(widen8(w + i + 8 * u), _mm256_loadu_ps(xr + i + 8 * u), acc[u]);
            }
        for (; i < k; i += 8) acc[0] = _mm256_fmadd_ps(widen8(w + i), _mm256_loadu_ps(xr + i), acc[0]);
        out[t] = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
#else
        float acc = 0.0f;
        for (int64_t i = 0; i < k; i++) acc += bf16_to_f32(w[i]) * xr[i];
        out[t] = acc;
#endif
    }
}

int moeqos_bf16_mm(const uint16_t *x, int64_t m, int64_t k, int64_t x_stride, const uint16_t *w, int64_t n,
                   uint16_t *y, int64_t y_stride, int threads) {
    if (k % 8) return 1;
    float *xf = widen_rows(x, m, k, x_stride);
    if (!xf) return 2;
    for (int64_t r0 = 0; r0 < m; r0 += TILE) {
        const int rows = (int)(m - r0 < TILE ? m - r0 : TILE);
#pragma omp parallel for schedule(static) num_threads(threads_for(n, k, threads))
        for (int64_t f = 0; f < n; f++) {
            float out[TILE];
            bf16_feature(xf + r0 * k, k, w + f * k, rows, out);
            for (int t = 0; t < rows; t++) y[(r0 + t) * y_stride + f] = f32_to_bf16(out[t]);
        }
    }
    free(xf);
    return 0;
}

/* ---------------------------------------------------------------- dequantized, for many rows --- */

/* The fp32 weight [N, K] of native int4 codes: w = (code - 8) * scale + zero, rounded as torch rounds
 * it (no FMA contraction: -ffp-contract=off). For many rows of x (a prefill, a perplexity window) one
 * fp32 GEMM on this beats any per-row kernel: 128 rows of a 3072x576 weight took 6.2 ms by the int4
 * kernels, 3.2 ms by fp32 `mm`, and this 0.2 ms (a division per weight made it 3.3 ms: the loop goes by
 * 64-weight blocks, so the compiler vectorizes it). */
int moeqos_q4_dequant(const uint8_t *codes, const uint16_t *scales, const uint16_t *zeros, int64_t n,
                      int64_t k, int64_t group, float *w, int threads) {
    if (k % 64 || group % 32 || k % group) return 1;
    const int64_t groups = k / group;
#pragma omp parallel for schedule(static) num_threads(threads_for(n, k, threads))
    for (int64_t f = 0; f < n; f++) {
        for (int64_t b = 0; b < k / 64; b++) { /* a 64-weight block: its halves' groups, then 32 bytes */
            const uint8_t *bytes = codes + f * (k / 2) + b * 32;
            float *out = w + f * k + b * 64;
            const int64_t g0 = f * groups + (b * 64) / group, g1 = f * groups + (b * 64 + 32) / group;
            const float s0 = bf16_to_f32(scales[g0]), z0 = bf16_to_f32(zeros[g0]);
            const float s1 = bf16_to_f32(scales[g1]), z1 = bf16_to_f32(zeros[g1]);
            for (int i = 0; i < 32; i++) {
                out[i] = (float)((bytes[i] & 0x0f) - 8) * s0 + z0;
                out[32 + i] = (float)((bytes[i] >> 4) - 8) * s1 + z1;
            }
        }
    }
    return 0;
}

/* The fp32 weight [N, K] of int8 codes with one scale per row, for the same reason. */
int moeqos_q8_dequant(const int8_t *codes, const uint16_t *scales, int64_t n, int64_t k, float *w,
                      int threads) {
#pragma omp parallel for schedule(static) num_threads(threads_for(n, k, threads))
    for (int64_t f = 0; f < n; f++) {
        const float s = bf16_to_f32(scales[f]);
        for (int64_t i = 0; i < k; i++) w[f * k + i] = (float)codes[f * k + i] * s;
    }
    return 0;
}

/* Bit-packed int3/int2 codes (moeqos.executor.quant.packing.pack_codes: count / 4 bytes of the low two
 * bits, four codes a byte, then for int3 count / 8 bytes of the high bit, eight a byte) to the byte
 * stream an int4 op reads: code 2j in the low nibble of byte j, code 2j + 1 in the high one, each
 * biased to the int4 range (int2: + 6; int3: + 4, the high bit worth 4 more). `unpack_nibble_bytes`'
 * torch ops in one pass, two output bytes per table lookup: a low byte's four codes as two bytes, plus
 * the bias (int3: of four high bits; every nibble stays below 16, so the sum never carries).
 * count a multiple of 8; 1 for other bits. */
int moeqos_unpack_nibbles(const uint8_t *packed, int bits, int64_t count, uint8_t *out) {
    if ((bits != 2 && bits != 3) || count % 8) return 1;
    uint16_t pairs[256], bias[16]; /* little-endian: the first output byte is the low one */
    for (int b = 0; b < 256; b++)
        pairs[b] = (uint16_t)(((b & 0x03) | ((b & 0x0c) << 2)) | ((((b >> 4) & 0x03) | ((b >> 2) & 0x30)) << 8));
    for (int h = 0; h < 16; h++) /* four codes' high bits -> + 4 + 4 * bit in each nibble */
        bias[h] = bits == 2 ? 0x6666
                            : (uint16_t)((0x44 + ((h & 1) << 2) + ((h & 2) << 5)) |
                                         ((0x44 + (h & 4) + ((h & 8) << 3)) << 8));
    const uint8_t *low = packed, *high = packed + count / 4;
    uint16_t *o = (uint16_t *)out;
    for (int64_t m = 0; m < count / 8; m++) { /* eight codes: two low bytes, one high byte */
        const int h = bits == 3 ? high[m] : 0;
        o[2 * m] = (uint16_t)(pairs[low[2 * m]] + bias[h & 15]);
        o[2 * m + 1] = (uint16_t)(pairs[low[2 * m + 1]] + bias[h >> 4]);
    }
    return 0;
}
