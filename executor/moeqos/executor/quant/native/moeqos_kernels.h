/* The matmuls of moeqos_kernels.c that moeqos_decode.c builds its decode step from (see each
 * function's comment there for layouts and return codes), and the bf16 and AVX2 helpers both use. */
#ifndef MOEQOS_KERNELS_H
#define MOEQOS_KERNELS_H
#include <stdint.h>
#include <string.h>

int moeqos_q4_mm(const uint16_t *x, int64_t m, int64_t k, int64_t x_stride, const uint8_t *codes,
                 const uint16_t *scales, const uint16_t *zeros, int64_t n, int64_t group, uint16_t *y,
                 int64_t y_stride, int threads);
int moeqos_q8_mm(const uint16_t *x, int64_t m, int64_t k, int64_t x_stride, const int8_t *codes,
                 const uint16_t *scales, int64_t n, uint16_t *y, int64_t y_stride, int threads);
int moeqos_bf16_mm(const uint16_t *x, int64_t m, int64_t k, int64_t x_stride, const uint16_t *w, int64_t n,
                   uint16_t *y, int64_t y_stride, int threads);

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even, as torch does */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* a as torch's bf16 arithmetic leaves it: computed in fp32, rounded to bf16 (kept as the fp32 value). */
static inline float bf16_round(float a) { return bf16_to_f32(f32_to_bf16(a)); }

#if defined(__AVX2__) && defined(__FMA__) /* else the plain C loops beside each vector one */
#include <immintrin.h>
#define MOEQOS_AVX2 1

/* Eight bf16 values widened to fp32 (exact). */
static inline __m256 widen8(const uint16_t *x) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)x)), 16));
}

/* The sum of eight fp32 lanes. */
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

#endif
