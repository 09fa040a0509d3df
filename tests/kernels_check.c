/* Every SIMD path of the native core (llmfs/model/_kernels.h) that this CPU
 * runs, against the portable C, kernel by kernel: random operands over each
 * kernel's whole contract (the bounds the model's load keeps), the extremes
 * (all 127, all -128, mixed signs) and sizes that end off the SIMD blocks.
 * Prints one line per path; exits 1 at the first difference.  Built and run
 * by tests/test_kernels.py, natively and, for arm64's NEON, under qemu. */
#include "_kernels.h"

#include <stdio.h>
#include <stdlib.h>

static uint64_t rng = 88172645463325252ull;

static int64_t rnd(int64_t lo, int64_t hi)    /* uniform in [lo, hi] (xorshift64) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return lo + (int64_t)(rng % (uint64_t)(hi - lo + 1));
}

/* fill: 0 random in [lo, hi], 1 all hi, 2 all lo, 3 alternating hi / lo */
static int64_t pick(int fill, int64_t lo, int64_t hi, size_t i)
{
    return fill == 0 ? rnd(lo, hi) : fill == 1 ? hi : fill == 2 ? lo : (i & 1 ? lo : hi);
}

static int fails;

static void same(const char *path, const char *what, const void *a, const void *b, size_t n,
                 int shape)
{
    if (memcmp(a, b, n)) {
        printf("%s: %s differs from portable (case %d)\n", path, what, shape);
        fails++;
    }
}

static void check_matmul(const Kernels *k, const Kernels *ref)
{
    /* (B, K, N, |x| bound): int8-valued inputs, and the strong tier's int16 SwiGLU
     * products over at most 512 channels (|sum| <= 512 * 32767 * 128 < 2**31) */
    static const int shapes[][4] = {{1, 128, 384, 128}, {3, 129, 70, 128}, {5, 512, 128, 128},
                                    {2, 1, 1, 128}, {4, 33, 65, 128}, {2, 512, 200, 32767},
                                    {1, 2048, 64, 128}};
    for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++)
        for (int fill = 0; fill < 4; fill++) {
            int B = shapes[c][0], K = shapes[c][1], N = shapes[c][2], X = shapes[c][3];
            int16_t *x = malloc(sizeof *x * B * K);
            int8_t *w = malloc((size_t)N * K), *wp = malloc(packed_size(N, K));
            int32_t *o1 = malloc(sizeof *o1 * B * N), *o2 = malloc(sizeof *o2 * B * N);
            for (size_t i = 0; i < (size_t)B * K; i++)
                x[i] = (int16_t)pick(fill, X == 128 ? -128 : -X, X == 128 ? 127 : X, i);
            for (size_t i = 0; i < (size_t)N * K; i++)
                w[i] = (int8_t)pick(fill ^ (int)(i % 3 == 0), -128, 127, i / 2);
            pack(w, N, K, wp);
            ref->matmul(x, B, wp, K, N, o1);
            k->matmul(x, B, wp, K, N, o2);
            same(k->name, "matmul", o1, o2, sizeof *o1 * B * N, (int)c * 4 + fill);
            free(x), free(w), free(wp), free(o1), free(o2);
        }
}

static void check_attention(const Kernels *k, const Kernels *ref)
{
    /* (hd, W, slots read): ring sizes and read lengths on and off the blocks of 16 / 32 */
    static const int shapes[][3] = {{64, 256, 256}, {64, 256, 96}, {33, 80, 80}, {32, 256, 1},
                                    {64, 48, 47}, {16, 272, 200}};
    for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++)
        for (int fill = 0; fill < 4; fill++) {
            int hd = shapes[c][0], W = shapes[c][1], n = shapes[c][2], H2 = (hd + 1) / 2;
            size_t ring = (size_t)H2 * W * 2;
            int8_t *q = malloc(hd), *kp = malloc(ring), *vt = malloc((size_t)hd * W);
            int16_t *q16 = malloc(sizeof *q16 * hd), *k16 = malloc(sizeof *k16 * ring);
            int16_t *ehi = malloc(sizeof *ehi * W), *elo = malloc(sizeof *elo * W);
            int32_t *z1 = malloc(sizeof *z1 * W), *z2 = malloc(sizeof *z2 * W);
            int64_t num1[64], num2[64];
            for (int i = 0; i < hd; i++) {
                q[i] = (int8_t)pick(fill, -128, 127, i);
                q16[i] = (int16_t)pick(fill, -254, 254, i);          /* rotated: |x| <= 254 */
            }
            for (size_t i = 0; i < ring; i++) {
                kp[i] = (int8_t)pick(fill, -128, 127, i);
                k16[i] = (int16_t)pick(fill, -254, 254, i);
            }
            for (size_t i = 0; i < (size_t)hd * W; i++)
                vt[i] = (int8_t)pick(fill, -128, 127, i);
            for (int i = 0; i < W; i++) {                       /* exp weights: 256 hi + lo */
                ehi[i] = (int16_t)pick(fill, 0, 256, i);
                elo[i] = (int16_t)pick(fill, 0, 255, i);
            }
            int shape = (int)c * 4 + fill;
            ref->scores(q, kp, hd, W, n, z1);
            k->scores(q, kp, hd, W, n, z2);
            same(k->name, "scores", z1, z2, sizeof *z1 * n, shape);
            ref->scores16(q16, k16, hd, W, n, z1);
            k->scores16(q16, k16, hd, W, n, z2);
            same(k->name, "scores16", z1, z2, sizeof *z1 * n, shape);
            ref->weigh(ehi, elo, vt, hd, W, n, num1);
            k->weigh(ehi, elo, vt, hd, W, n, num2);
            same(k->name, "weigh", num1, num2, sizeof *num1 * hd, shape);
            free(q), free(kp), free(vt), free(q16), free(k16), free(ehi), free(elo);
            free(z1), free(z2);
        }
}

static void check_softmax(const Kernels *k, const Kernels *ref)
{
    enum { W = 256, N_EXP = 64 };
    int32_t dots[W], rbias[W], exp32[N_EXP], z1[W], z2[W];
    int16_t h1[W], l1[W], h2[W], l2[W];
    for (int i = 0; i < N_EXP; i++)
        exp32[i] = 65536 >> (i / 4);
    for (int c = 0; c < 24; c++) {
        int slot = (int)rnd(0, W - 1), nk = c % 2 ? W : slot + 1;
        int lim = nk == W ? W : ((slot + 32) & ~31) < W ? (slot + 32) & ~31 : W;
        for (int i = 0; i < W; i++) {
            dots[i] = (int32_t)pick(c % 4, -(1 << 20), 1 << 20, i);
            rbias[i] = (int32_t)rnd(0, 1 << 10);
        }
        int sh = (int)rnd(1, 12);
        int64_t s1 = ref->softmax(dots, rbias, sh, slot, nk, W, lim, exp32, N_EXP, z1, h1, l1);
        int64_t s2 = k->softmax(dots, rbias, sh, slot, nk, W, lim, exp32, N_EXP, z2, h2, l2);
        same(k->name, "softmax sum", &s1, &s2, sizeof s1, c);
        same(k->name, "softmax hi", h1, h2, sizeof *h1 * lim, c);
        same(k->name, "softmax lo", l1, l2, sizeof *l1 * lim, c);
    }
}

int main(void)
{
    const Kernels *ref = &paths[N_PATHS - 1];
    for (size_t i = 0; i < N_PATHS; i++) {
        if (!cpu_runs(&paths[i]))
            continue;
        check_matmul(&paths[i], ref);
        check_attention(&paths[i], ref);
        check_softmax(&paths[i], ref);
        printf("%s: %s\n", paths[i].name, fails ? "DIFFERS" : "same integers as portable");
        if (fails)
            return 1;
    }
    return 0;
}
