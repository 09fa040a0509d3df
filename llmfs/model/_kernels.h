/* The exact integer kernels of the native core, one set per SIMD path
 * (AVX-512 VNNI, AVX2, NEON, portable C), and the table that names them.
 * No Python here: ``_core.c`` includes it for the model, and
 * ``tests/kernels_check.c`` includes it to hold every path the CPU runs
 * against the portable one (natively, and under qemu for arm64). */
#ifndef LLMFS_KERNELS_H
#define LLMFS_KERNELS_H

#include <stdint.h>
#include <string.h>

/* -- exact integer kernels ------------------------------------------------ */

/* Weights are packed for the matmul as [N/64][K/2][64][2] int8 (zero
 * padded): a block of 64 outputs walks the inner dimension in pairs, which
 * is what AVX2's vpmaddwd multiplies and adds (two int16 products into one
 * int32 lane) once the kernel has widened them.  Stored as int8, not int16:
 * a decode step reads every weight for a handful of rows, and half the
 * bytes saves time there (the strong tier's 135 M weights: one row 19.9 ->
 * 12.2 ms, 8 rows 49 -> 44 ms, 170 rows 756 -> 699 ms); the default model's
 * compute-bound 170-row chunk pays about 5 % for the widening (9.2 -> 9.6
 * ms).  Every path computes the same exact int32 sums. */
#define NBLK 64

static size_t packed_size(int N, int K)
{
    return (size_t)((N + NBLK - 1) / NBLK) * NBLK * (size_t)((K + 1) / 2) * 2;
}

static void pack(const int8_t *src, int N, int K, int8_t *dst)
{
    /* [N][K] int8 rows (as the engine stores them) -> the packed layout */
    int K2 = (K + 1) / 2, NB = (N + NBLK - 1) / NBLK;
    for (int nb = 0; nb < NB; nb++)
        for (int k2 = 0; k2 < K2; k2++)
            for (int j = 0; j < NBLK; j++)
                for (int t = 0; t < 2; t++) {
                    int n = nb * NBLK + j, k = 2 * k2 + t;
                    dst[(((size_t)nb * K2 + k2) * NBLK + j) * 2 + t] =
                        (n < N && k < K) ? src[(size_t)n * K + k] : 0;
                }
}

static inline int32_t xpair(const int16_t *xb, int k2, int K)
{
    /* inputs 2 k2 and 2 k2 + 1 of a row as one int32 (low half first, as
     * vpmaddwd / vpdpwssd pair them with the packed weights); 0 past K */
    int16_t x0 = xb[2 * k2], x1 = 2 * k2 + 1 < K ? xb[2 * k2 + 1] : 0;
    return (int32_t)(((uint32_t)(uint16_t)x1 << 16) | (uint16_t)x0);
}

static inline void put_block(int32_t *out, int b, int N, int nb, const int32_t *acc)
{
    /* the sums of outputs nb*64 .. of row b, the padding past N left out */
    for (int j = 0; j < NBLK && nb * NBLK + j < N; j++)
        out[(size_t)b * N + nb * NBLK + j] = acc[j];
}

#define PSUB 16      /* outputs the portable matmul sums at once: its sums fit in registers */

static void matmul_portable(const int16_t *x, int B, const int8_t *w, int K, int N,
                            int32_t *out)
{
    /* out[b][n] = sum_k x[b][k] * w[n][k]: |sum| <= 127 * 127 * K < 2**31.  The
     * even and odd inputs of a pair go to separate sums (acc2[2j], acc2[2j+1]),
     * added at the end: straight loops the compiler vectorises for any CPU. */
    int K2 = (K + 1) / 2, NB = (N + NBLK - 1) / NBLK;
    for (int nb = 0; nb < NB; nb++)
        for (int b = 0; b < B; b++) {
            int32_t acc[NBLK];
            const int16_t *xb = x + (size_t)b * K;
            for (int sub = 0; sub < NBLK; sub += PSUB) {
                int32_t acc2[2 * PSUB] = {0};
                for (int k2 = 0; k2 < K2; k2++) {
                    int32_t xp = xpair(xb, k2, K), x0 = (int16_t)(xp & 0xFFFF), x1 = xp >> 16;
                    const int8_t *wp = w + (((size_t)nb * K2 + k2) * NBLK + sub) * 2;
                    for (int t = 0; t < 2 * PSUB; t += 2) {
                        acc2[t] += x0 * wp[t];
                        acc2[t + 1] += x1 * wp[t + 1];
                    }
                }
                for (int j = 0; j < PSUB; j++)
                    acc[sub + j] = acc2[2 * j] + acc2[2 * j + 1];
            }
            put_block(out, b, N, nb, acc);
        }
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define HAVE_AVX2_PATH 1

__attribute__((target("avx2")))
static void matmul_avx2(const int16_t *x, int B, const int8_t *w, int K, int N, int32_t *out)
{
    int K2 = (K + 1) / 2, NB = (N + NBLK - 1) / NBLK;
    for (int nb = 0; nb < NB; nb++)
        for (int b = 0; b < B; b++) {
            __m256i acc[NBLK / 8];
            for (int j = 0; j < NBLK / 8; j++)
                acc[j] = _mm256_setzero_si256();
            const int16_t *xb = x + (size_t)b * K;
            for (int k2 = 0; k2 < K2; k2++) {
                __m256i xv = _mm256_set1_epi32(xpair(xb, k2, K));
                const __m128i *wp = (const __m128i *)(w + ((size_t)nb * K2 + k2) * NBLK * 2);
                for (int j = 0; j < NBLK / 8; j++)
                    acc[j] = _mm256_add_epi32(acc[j], _mm256_madd_epi16(
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(wp + j)), xv));
            }
            int32_t tmp[NBLK];
            for (int j = 0; j < NBLK / 8; j++)
                _mm256_storeu_si256((__m256i *)(tmp + 8 * j), acc[j]);
            put_block(out, b, N, nb, tmp);
        }
}

/* AVX-512 VNNI: vpdpwssd adds the two int16 products of each lane to its
 * int32 accumulator in one instruction, without saturation (the saturating
 * form is vpdpwssds, not used); 64 outputs are four zmm accumulators. */
__attribute__((target("avx512f,avx512bw,avx512vnni")))
static void matmul_vnni(const int16_t *x, int B, const int8_t *w, int K, int N, int32_t *out)
{
    int K2 = (K + 1) / 2, NB = (N + NBLK - 1) / NBLK;
    for (int nb = 0; nb < NB; nb++)
        for (int b = 0; b < B; b++) {
            __m512i acc[NBLK / 16];
            for (int j = 0; j < NBLK / 16; j++)
                acc[j] = _mm512_setzero_si512();
            const int16_t *xb = x + (size_t)b * K;
            for (int k2 = 0; k2 < K2; k2++) {
                __m512i xv = _mm512_set1_epi32(xpair(xb, k2, K));
                const __m256i *wp = (const __m256i *)(w + ((size_t)nb * K2 + k2) * NBLK * 2);
                for (int j = 0; j < NBLK / 16; j++)
                    acc[j] = _mm512_dpwssd_epi32(
                        acc[j], _mm512_cvtepi8_epi16(_mm256_loadu_si256(wp + j)), xv);
            }
            int32_t tmp[NBLK];
            for (int j = 0; j < NBLK / 16; j++)
                _mm512_storeu_si512(tmp + 16 * j, acc[j]);
            put_block(out, b, N, nb, tmp);
        }
}
#endif

/* Attention.  Keys are cached as [hd/2][W][2] (the two channels of a pair
 * side by side for each ring slot: what vpmaddwd multiplies by a pair of
 * query channels), values transposed as [hd][W].  The portable loops and the
 * AVX2 kernels compute the same exact int32 sums. */

static inline int32_t qpair(const int8_t *q, int c2, int hd)
{
    int16_t q0 = q[2 * c2], q1 = 2 * c2 + 1 < hd ? q[2 * c2 + 1] : 0;
    return (int32_t)(((uint32_t)(uint16_t)q1 << 16) | (uint16_t)q0);
}

static void scores_portable(const int8_t *q, const int8_t *kp, int hd, int W, int n, int32_t *z)
{
    /* z[s] = sum_c q[c] * k[c][s] over ring slots s < n */
    memset(z, 0, (size_t)n * sizeof(int32_t));
    for (int c2 = 0; c2 < (hd + 1) / 2; c2++) {
        int32_t qp = qpair(q, c2, hd), q0 = (int16_t)(qp & 0xFFFF), q1 = qp >> 16;
        const int8_t *row = kp + (size_t)c2 * W * 2;
        for (int s = 0; s < n; s++)
            z[s] += q0 * row[2 * s] + q1 * row[2 * s + 1];
    }
}

static inline int32_t pair16(const int16_t *q, int c2, int hd)
{
    int16_t q0 = q[2 * c2], q1 = 2 * c2 + 1 < hd ? q[2 * c2 + 1] : 0;
    return (int32_t)(((uint32_t)(uint16_t)q1 << 16) | (uint16_t)q0);
}

static void scores16_portable(const int16_t *q, const int16_t *kp, int hd, int W, int n,
                              int32_t *z)
{
    /* scores_portable for rotated (Llama) queries and keys, int16 in [-254, 254]:
     * |sum| <= hd * 254**2 < 2**31 */
    memset(z, 0, (size_t)n * sizeof(int32_t));
    for (int c2 = 0; c2 < (hd + 1) / 2; c2++) {
        int32_t qp = pair16(q, c2, hd), q0 = (int16_t)(qp & 0xFFFF), q1 = qp >> 16;
        const int16_t *row = kp + (size_t)c2 * W * 2;
        for (int s = 0; s < n; s++)
            z[s] += q0 * row[2 * s] + q1 * row[2 * s + 1];
    }
}

static void weigh_portable(const int16_t *ehi, const int16_t *elo, const int8_t *vt, int hd,
                           int W, int n, int64_t *num)
{
    /* num[i] = sum_{s < n} e[s] * v[i][s] with e = 256 hi + lo split so both sums stay in
     * int32: |sum| <= W * 256 * 127 < 2**31 for W <= 65536 */
    for (int i = 0; i < hd; i++) {
        const int8_t *v = vt + (size_t)i * W;
        int32_t hi = 0, lo = 0;
        for (int s = 0; s < n; s++) {
            hi += (int32_t)ehi[s] * v[s];
            lo += (int32_t)elo[s] * v[s];
        }
        num[i] = (int64_t)hi * 256 + lo;
    }
}

#if defined(HAVE_AVX2_PATH)
__attribute__((target("avx2")))
static void scores_avx2(const int8_t *q, const int8_t *kp, int hd, int W, int n, int32_t *z)
{
    int s = 0, H2 = (hd + 1) / 2;
    for (; s + 32 <= n; s += 32) {
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        for (int c2 = 0; c2 < H2; c2++) {
            __m256i qv = _mm256_set1_epi32(qpair(q, c2, hd));
            const int8_t *row = kp + ((size_t)c2 * W + s) * 2;
#define KP(o) _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(row + (o))))
            a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(KP(0), qv));
            a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(KP(16), qv));
            a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(KP(32), qv));
            a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(KP(48), qv));
#undef KP
        }
        _mm256_storeu_si256((__m256i *)(z + s), a0);
        _mm256_storeu_si256((__m256i *)(z + s + 8), a1);
        _mm256_storeu_si256((__m256i *)(z + s + 16), a2);
        _mm256_storeu_si256((__m256i *)(z + s + 24), a3);
    }
    if (s < n)   /* the last slots: the portable loop from slot s on (same sums) */
        scores_portable(q, kp + (size_t)s * 2, hd, W, n - s, z + s);
}

__attribute__((target("avx2")))
static void scores16_avx2(const int16_t *q, const int16_t *kp, int hd, int W, int n, int32_t *z)
{
    int s = 0, H2 = (hd + 1) / 2;
    for (; s + 32 <= n; s += 32) {
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        for (int c2 = 0; c2 < H2; c2++) {
            __m256i qv = _mm256_set1_epi32(pair16(q, c2, hd));
            const __m256i *row = (const __m256i *)(kp + ((size_t)c2 * W + s) * 2);
            a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_loadu_si256(row), qv));
            a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(_mm256_loadu_si256(row + 1), qv));
            a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(_mm256_loadu_si256(row + 2), qv));
            a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(_mm256_loadu_si256(row + 3), qv));
        }
        _mm256_storeu_si256((__m256i *)(z + s), a0);
        _mm256_storeu_si256((__m256i *)(z + s + 8), a1);
        _mm256_storeu_si256((__m256i *)(z + s + 16), a2);
        _mm256_storeu_si256((__m256i *)(z + s + 24), a3);
    }
    if (s < n)   /* the last slots: the portable loop from slot s on (same sums) */
        scores16_portable(q, kp + (size_t)s * 2, hd, W, n - s, z + s);
}

__attribute__((target("avx2")))
static inline int32_t hsum8(__m256i v)
{
    __m128i x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0x4E));
    x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0xB1));
    return _mm_cvtsi128_si32(x);
}

__attribute__((target("avx2")))
static void weigh_avx2(const int16_t *ehi, const int16_t *elo, const int8_t *vt, int hd, int W,
                       int n, int64_t *num)
{
    int W16 = n / 16 * 16;
    for (int i = 0; i < hd; i++) {
        const int8_t *v = vt + (size_t)i * W;
        __m256i h = _mm256_setzero_si256(), l = h;
        for (int s = 0; s < W16; s += 16) {
            __m256i vv = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(v + s)));
            h = _mm256_add_epi32(h, _mm256_madd_epi16(
                    _mm256_loadu_si256((const __m256i *)(ehi + s)), vv));
            l = _mm256_add_epi32(l, _mm256_madd_epi16(
                    _mm256_loadu_si256((const __m256i *)(elo + s)), vv));
        }
        int32_t hi = hsum8(h), lo = hsum8(l);
        for (int s = W16; s < n; s++) {
            hi += (int32_t)ehi[s] * v[s];
            lo += (int32_t)elo[s] * v[s];
        }
        num[i] = (int64_t)hi * 256 + lo;
    }
}
#endif

/* The attention weights of one head over the ring: z[s] = round(dots[s] / 2**sh)
 * - bias(distance of slot s), e[s] = exp table[min(max z - z[s], n - 1)] split as
 * 256 hi + lo (0 from the last key to slot lim); returns the sum of e.  Slot
 * `slot` holds the newest key; with nk < W keys (the ring not yet full) they
 * are slots 0 .. slot.  rbias is the
 * head's ALiBi bias by distance, reversed, so both runs of slots read it
 * forwards (and the compiler vectorises the loops).  int32 throughout: the
 * model's load checks the bounds that keep it exact. */
#define SOFTMAX_BODY                                                                  \
    int32_t rnd = (int32_t)1 << (sh - 1), zmax = INT32_MIN;                           \
    int full = nk == W;                                                               \
    const int32_t *rb = rbias + (W - 1 - slot);                                       \
    for (int s = 0; s <= slot; s++) {                                                 \
        z[s] = ((dots[s] + rnd) >> sh) - rb[s];                                       \
        zmax = z[s] > zmax ? z[s] : zmax;                                             \
    }                                                                                 \
    for (int s = slot + 1; full && s < W; s++) {                                      \
        z[s] = ((dots[s] + rnd) >> sh) - rbias[s - slot - 1];                         \
        zmax = z[s] > zmax ? z[s] : zmax;                                             \
    }                                                                                 \
    int64_t sum = 0;                                                                  \
    int top = n_exp - 1, end = full ? W : slot + 1;                                   \
    for (int s = 0; s < end; s++) {                                                   \
        int32_t gap = zmax - z[s];                                                    \
        int32_t e = exp32[gap < top ? gap : top];                                     \
        sum += e;                                                                     \
        ehi[s] = (int16_t)(e >> 8);                                                   \
        elo[s] = (int16_t)(e & 255);                                                  \
    }                                                                                 \
    for (int s = end; s < lim; s++)                                                   \
        ehi[s] = elo[s] = 0;                                                          \
    return sum;

#define SOFTMAX_ARGS const int32_t *dots, const int32_t *rbias, int sh, int slot, int nk, \
    int W, int lim, const int32_t *exp32, int n_exp, int32_t *z, int16_t *ehi, int16_t *elo

static int64_t softmax_portable(SOFTMAX_ARGS)
{
    SOFTMAX_BODY
}

#if defined(HAVE_AVX2_PATH)
__attribute__((target("avx2")))
static int64_t softmax_avx2(SOFTMAX_ARGS)
{
    SOFTMAX_BODY
}
#endif

/* NEON (every arm64 CPU has it): vmlal widens int16 x int16 products to int32
 * and adds them without saturation (the saturating forms are vqdmlal*, not
 * used).  vld2 splits the packed pairs into the even and odd inputs' weights,
 * so each lane sums the same products as the other paths, in another order:
 * the sums are exact, so the order does not matter. */
#if defined(__aarch64__)
#include <arm_neon.h>
#define HAVE_NEON_PATH 1

static void matmul_neon(const int16_t *x, int B, const int8_t *w, int K, int N, int32_t *out)
{
    int K2 = (K + 1) / 2, NB = (N + NBLK - 1) / NBLK;
    for (int nb = 0; nb < NB; nb++)
        for (int b = 0; b < B; b++) {
            int32x4_t acc[NBLK / 4];
            for (int j = 0; j < NBLK / 4; j++)
                acc[j] = vdupq_n_s32(0);
            const int16_t *xb = x + (size_t)b * K;
            for (int k2 = 0; k2 < K2; k2++) {
                int16_t x0 = xb[2 * k2], x1 = 2 * k2 + 1 < K ? xb[2 * k2 + 1] : 0;
                const int8_t *wp = w + ((size_t)nb * K2 + k2) * NBLK * 2;
                for (int j = 0; j < NBLK / 8; j++) {     /* outputs 8j .. 8j + 7 */
                    int8x8x2_t p = vld2_s8(wp + 16 * j);
                    int16x8_t ev = vmovl_s8(p.val[0]), od = vmovl_s8(p.val[1]);
                    acc[2 * j] = vmlal_n_s16(acc[2 * j], vget_low_s16(ev), x0);
                    acc[2 * j] = vmlal_n_s16(acc[2 * j], vget_low_s16(od), x1);
                    acc[2 * j + 1] = vmlal_n_s16(acc[2 * j + 1], vget_high_s16(ev), x0);
                    acc[2 * j + 1] = vmlal_n_s16(acc[2 * j + 1], vget_high_s16(od), x1);
                }
            }
            int32_t tmp[NBLK];
            for (int j = 0; j < NBLK / 4; j++)
                vst1q_s32(tmp + 4 * j, acc[j]);
            put_block(out, b, N, nb, tmp);
        }
}

static void scores_neon(const int8_t *q, const int8_t *kp, int hd, int W, int n, int32_t *z)
{
    int s = 0, H2 = (hd + 1) / 2;
    for (; s + 16 <= n; s += 16) {
        int32x4_t a0 = vdupq_n_s32(0), a1 = a0, a2 = a0, a3 = a0;
        for (int c2 = 0; c2 < H2; c2++) {
            int16_t q0 = q[2 * c2], q1 = 2 * c2 + 1 < hd ? q[2 * c2 + 1] : 0;
            const int8_t *row = kp + ((size_t)c2 * W + s) * 2;
            int8x16x2_t p = vld2q_s8(row);            /* slots s .. s + 15 */
            int16x8_t e0 = vmovl_s8(vget_low_s8(p.val[0])), e1 = vmovl_high_s8(p.val[0]);
            int16x8_t o0 = vmovl_s8(vget_low_s8(p.val[1])), o1 = vmovl_high_s8(p.val[1]);
            a0 = vmlal_n_s16(vmlal_n_s16(a0, vget_low_s16(e0), q0), vget_low_s16(o0), q1);
            a1 = vmlal_n_s16(vmlal_n_s16(a1, vget_high_s16(e0), q0), vget_high_s16(o0), q1);
            a2 = vmlal_n_s16(vmlal_n_s16(a2, vget_low_s16(e1), q0), vget_low_s16(o1), q1);
            a3 = vmlal_n_s16(vmlal_n_s16(a3, vget_high_s16(e1), q0), vget_high_s16(o1), q1);
        }
        vst1q_s32(z + s, a0);
        vst1q_s32(z + s + 4, a1);
        vst1q_s32(z + s + 8, a2);
        vst1q_s32(z + s + 12, a3);
    }
    if (s < n)   /* the last slots: the portable loop from slot s on (same sums) */
        scores_portable(q, kp + (size_t)s * 2, hd, W, n - s, z + s);
}

static void scores16_neon(const int16_t *q, const int16_t *kp, int hd, int W, int n, int32_t *z)
{
    int s = 0, H2 = (hd + 1) / 2;
    for (; s + 16 <= n; s += 16) {
        int32x4_t a0 = vdupq_n_s32(0), a1 = a0, a2 = a0, a3 = a0;
        for (int c2 = 0; c2 < H2; c2++) {
            int16_t q0 = q[2 * c2], q1 = 2 * c2 + 1 < hd ? q[2 * c2 + 1] : 0;
            const int16_t *row = kp + ((size_t)c2 * W + s) * 2;
            int16x8x2_t p = vld2q_s16(row), r = vld2q_s16(row + 16);
            a0 = vmlal_n_s16(vmlal_n_s16(a0, vget_low_s16(p.val[0]), q0),
                             vget_low_s16(p.val[1]), q1);
            a1 = vmlal_n_s16(vmlal_n_s16(a1, vget_high_s16(p.val[0]), q0),
                             vget_high_s16(p.val[1]), q1);
            a2 = vmlal_n_s16(vmlal_n_s16(a2, vget_low_s16(r.val[0]), q0),
                             vget_low_s16(r.val[1]), q1);
            a3 = vmlal_n_s16(vmlal_n_s16(a3, vget_high_s16(r.val[0]), q0),
                             vget_high_s16(r.val[1]), q1);
        }
        vst1q_s32(z + s, a0);
        vst1q_s32(z + s + 4, a1);
        vst1q_s32(z + s + 8, a2);
        vst1q_s32(z + s + 12, a3);
    }
    if (s < n)
        scores16_portable(q, kp + (size_t)s * 2, hd, W, n - s, z + s);
}

static void weigh_neon(const int16_t *ehi, const int16_t *elo, const int8_t *vt, int hd, int W,
                       int n, int64_t *num)
{
    int n8 = n / 8 * 8;
    for (int i = 0; i < hd; i++) {
        const int8_t *v = vt + (size_t)i * W;
        int32x4_t h = vdupq_n_s32(0), l = h;
        for (int s = 0; s < n8; s += 8) {
            int16x8_t vv = vmovl_s8(vld1_s8(v + s)), eh = vld1q_s16(ehi + s),
                      el = vld1q_s16(elo + s);
            h = vmlal_high_s16(vmlal_s16(h, vget_low_s16(eh), vget_low_s16(vv)), eh, vv);
            l = vmlal_high_s16(vmlal_s16(l, vget_low_s16(el), vget_low_s16(vv)), el, vv);
        }
        int32_t hi = vaddvq_s32(h), lo = vaddvq_s32(l);
        for (int s = n8; s < n; s++) {
            hi += (int32_t)ehi[s] * v[s];
            lo += (int32_t)elo[s] * v[s];
        }
        num[i] = (int64_t)hi * 256 + lo;
    }
}
#endif

/* The SIMD paths, fastest first: a path is the kernels it runs. */
typedef void (*matmul_fn)(const int16_t *, int, const int8_t *, int, int, int32_t *);
typedef void (*scores_fn)(const int8_t *, const int8_t *, int, int, int, int32_t *);
typedef void (*scores16_fn)(const int16_t *, const int16_t *, int, int, int, int32_t *);
typedef void (*weigh_fn)(const int16_t *, const int16_t *, const int8_t *, int, int, int,
                         int64_t *);
typedef int64_t (*softmax_fn)(SOFTMAX_ARGS);

typedef struct {
    const char *name;
    matmul_fn matmul;
    scores_fn scores;
    scores16_fn scores16;
    weigh_fn weigh;
    softmax_fn softmax;
} Kernels;

static const Kernels paths[] = {
#if defined(HAVE_AVX2_PATH)
    {"avx512vnni", matmul_vnni, scores_avx2, scores16_avx2, weigh_avx2, softmax_avx2},
    {"avx2", matmul_avx2, scores_avx2, scores16_avx2, weigh_avx2, softmax_avx2},
#endif
#if defined(HAVE_NEON_PATH)      /* the softmax: the portable loops, which the compiler
                                    vectorises for NEON (arm64's baseline) */
    {"neon", matmul_neon, scores_neon, scores16_neon, weigh_neon, softmax_portable},
#endif
    {"portable", matmul_portable, scores_portable, scores16_portable, weigh_portable,
     softmax_portable},
};
#define N_PATHS (sizeof paths / sizeof *paths)

static int cpu_runs(const Kernels *k)
{
#if defined(HAVE_AVX2_PATH)
    __builtin_cpu_init();
    if (!strcmp(k->name, "avx512vnni"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
               && __builtin_cpu_supports("avx512vnni");
    if (!strcmp(k->name, "avx2"))
        return __builtin_cpu_supports("avx2");
#endif
    (void)k;              /* neon: every arm64 CPU; portable: every CPU */
    return 1;
}

#endif
