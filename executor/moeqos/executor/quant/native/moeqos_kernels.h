/* The matmuls of moeqos_kernels.c that moeqos_decode.c builds its decode step from (see each
 * function's comment there for layouts and return codes). */
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

#endif
