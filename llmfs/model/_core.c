/* The native exact core: the integer forward pass of ``engine.py`` for both
 * of its architectures (ALiBi: the shipped default, technical and starter;
 * rotary Llama: the strong tier), one position at a time with a key/value
 * ring buffer per stream, in C with no per-token
 * Python; and ``Model.decode``, which decodes a whole batch of range-coder
 * streams (model, mixing and decoder, ``_mix.c``) in one call.  Every value
 * is an integer and every sum is exact (int32 for int8 x int8 dot products,
 * int64 elsewhere), so the order of operations does not matter and the
 * tables equal the torch engine's bit for bit, whatever the SIMD path chosen
 * at import (AVX-512 VNNI, AVX2, NEON or the portable C: ``_kernels.h``;
 * ``simd()``).
 *
 * Python side: ``llmfs/model/native.py`` builds the weight buffers from the
 * model file's tensors and wraps ``Model``/``Cache`` behind the engine's
 * ``step``/``freqs`` interface.
 */
#include "_core.h"
#include "_kernels.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

#define SHIFT 24
#define RECIP 40
#define ROWS 512                    /* rows (streams x positions) a forward pass runs at most */

static const Kernels *kernels = &paths[N_PATHS - 1];    /* the SIMD path in use */

/* -- memory ----------------------------------------------------------------- */

/* The weights and the key/value rings are read once per step, megabytes of
 * them: on 4 KiB pages that is over a thousand TLB entries a step, and the
 * page walks (costly in a virtual machine) stalled the kernels.  Large
 * blocks are asked for on transparent huge pages.  Zeroed. */
#define HUGE (2u << 20)

static void *big_alloc(size_t n)
{
    void *p = NULL;
    if (n < HUGE)
        return calloc(n ? n : 1, 1);
    n = (n + HUGE - 1) / HUGE * HUGE;
    if (posix_memalign(&p, HUGE, n))
        return NULL;
#ifdef MADV_HUGEPAGE
    madvise(p, n, MADV_HUGEPAGE);
#endif
    memset(p, 0, n);
    return p;
}

static inline int64_t requant(int64_t acc, int64_t m)
{
    return (acc * m + ((int64_t)1 << (SHIFT - 1))) >> SHIFT;
}

static inline int64_t floordiv(int64_t a, int64_t b)  /* b > 0 */
{
    int64_t q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

static inline int8_t clamp8(int64_t v)
{
    return (int8_t)(v < -127 ? -127 : v > 127 ? 127 : v);
}

static int64_t isqrt(int64_t n)
{
    int64_t r = (int64_t)sqrt((double)n);
    return r - (r * r > n);
}

static inline int64_t requant_wide(int64_t acc, int64_t m, int extra)
{
    /* engine.requant_wide: round(acc * m / 2**(SHIFT + extra)) for |acc| < 2**53,
     * |m| < 2**33, with acc split at bit 24 so no product overflows */
    int64_t hi = acc >> 24, lo = acc & ((1 << 24) - 1);
    int t = SHIFT + extra - 24;
    return (hi * m + ((lo * m + (1 << 23)) >> 24) + ((int64_t)1 << (t - 1))) >> t;
}

/* -- the model ------------------------------------------------------------- */

#define ROPE_BITS 14               /* rotary tables are cos/sin * 2**14 (intformat.py) */
#define H_MAX 32767                /* Llama: the SwiGLU product is int16 ... */
#define H_SHIFT_MAX 20             /* ... shifted left by <= 20 bits per channel */
#define H_GROUP 512                /* channels whose int16 x int8 sums stay in int32 */

typedef struct {                   /* Llama: w2 columns that share one h shift */
    int shift, start, len;         /* channels perm[start .. start + len) */
    const int8_t *w;               /* packed [d][len] */
} W2Group;

typedef struct {
    PyObject_HEAD
    int d, H, KV, hd, A, ff, V, L, W, gelu_n, n_exp_attn, n_exp_vocab, llama, n_rope;
    int64_t eps, total;
    PyObject *keep;            /* the bytes objects the pointers below point into */
    int8_t *wpk;               /* all weights, packed (see pack) (owned) */
    size_t wbytes;             /* their size */
    const int32_t *emb;        /* [V, d] */
    const int8_t *head;        /* packed [V][d] */
    const int64_t *head_m, *norm_f, *exp_vocab, *exp_attn;
    const int32_t *alibi;      /* [H, W] ALiBi bias by distance (0 for Llama) */
    const int32_t *rope_cos, *rope_sin;   /* Llama: [n_rope][hd/2] */
    int32_t *rbias;            /* [H, W] the bias reversed (owned) */
    int32_t *exp32;            /* exp_attn as int32 (owned) */
    struct Layer {
        const int8_t *wqkv, *wo, *w1, *w2;    /* packed (see pack); Llama: w1 is gate
                                                 and up, [2 ff][d], and w2 unused */
        const int64_t *qkv_m, *wo_m, *w1_m, *w2_m, *norm1, *norm2;
        const int8_t *gelu;                   /* [ff][2 gelu_n + 1] */
        const int16_t *silu;                  /* Llama: [ff][2 gelu_n + 1] */
        const int64_t *wg_m, *h_m;            /* Llama: [ff] */
        const int32_t *shift;                 /* [H] attention score shifts */
        int *perm;                            /* Llama: channels by h shift (owned) */
        W2Group *groups;                      /* Llama (owned) */
        int n_groups;
        int8_t *w2g;                          /* Llama: the groups' packed w2 (owned) */
    } *layers;                 /* [L] */
} Model;

static const void *buf_ptr(PyObject *seq, Py_ssize_t i, Py_ssize_t want)
{
    PyObject *b = PySequence_GetItem(seq, i);
    if (!b)
        return NULL;
    if (!PyBytes_Check(b) || PyBytes_GET_SIZE(b) != want) {
        PyErr_Format(PyExc_ValueError, "buffer %zd: want %zd bytes", i, want);
        Py_DECREF(b);
        return NULL;
    }
    const void *p = PyBytes_AS_STRING(b);
    Py_DECREF(b);   /* the model keeps the whole list alive */
    return p;
}

static void Model_dealloc(Model *self)
{
    Py_XDECREF(self->keep);
    for (int l = 0; self->layers && l < self->L; l++) {
        PyMem_Free(self->layers[l].perm);
        PyMem_Free(self->layers[l].groups);
        free(self->layers[l].w2g);
    }
    PyMem_Free(self->layers);
    free(self->wpk);
    PyMem_Free(self->rbias);
    PyMem_Free(self->exp32);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int w2_groups(const Model *m, struct Layer *lw, const int8_t *w2, const int64_t *h_shift)
{
    /* Llama's down projection sums (h_c << k_c) * w2[j][c] over the ff channels c,
     * up to 2**53: the channels are grouped by shift k (at most H_GROUP a group,
     * so a group's int16 x int8 sums stay in int32) and each group is a small
     * matmul whose sums are shifted and added in int64, exactly. */
    int ff = m->ff, d = m->d, n = 0;
    lw->perm = PyMem_Malloc((size_t)ff * sizeof(int));
    lw->groups = PyMem_Malloc(((size_t)ff + H_SHIFT_MAX + 1) * sizeof(W2Group));
    if (!lw->perm || !lw->groups)
        return -1;
    size_t total = 0;
    for (int k = 0; k <= H_SHIFT_MAX; k++) {
        int first = n;
        for (int c = 0; c < ff; c++)
            if (h_shift[c] == k)
                lw->perm[n++] = c;
        for (int s = first; s < n; s += H_GROUP) {
            W2Group *g = &lw->groups[lw->n_groups++];
            g->shift = k;
            g->start = s;
            g->len = n - s < H_GROUP ? n - s : H_GROUP;
            total += packed_size(d, g->len);
        }
    }
    lw->w2g = big_alloc(total);
    int8_t *cols = malloc((size_t)d * H_GROUP);
    if (!lw->w2g || !cols) {
        free(cols);
        return -1;
    }
    int8_t *next = lw->w2g;
    for (int i = 0; i < lw->n_groups; i++) {
        W2Group *g = &lw->groups[i];
        for (int j = 0; j < d; j++)
            for (int t = 0; t < g->len; t++)
                cols[(size_t)j * g->len + t] = w2[(size_t)j * ff + lw->perm[g->start + t]];
        pack(cols, d, g->len, next);
        g->w = next;
        next += packed_size(d, g->len);
    }
    free(cols);
    return 0;
}

#define N_DIMS 15

static int Model_init(Model *self, PyObject *args, PyObject *kw)
{
    /* Model(dims, buffers): dims (d, heads, kv heads, head dim, ff, vocab, layers,
     * window, gelu_n, exp_attn size, exp_vocab size, eps, total, llama, rope
     * positions); buffers as native.py lists them */
    PyObject *dims, *bufs;
    if (!PyArg_ParseTuple(args, "O!O!", &PyTuple_Type, &dims, &PyList_Type, &bufs))
        return -1;
    long long v[N_DIMS];
    if (PyTuple_GET_SIZE(dims) != N_DIMS) {
        PyErr_Format(PyExc_ValueError, "%d dimensions expected", N_DIMS);
        return -1;
    }
    for (int i = 0; i < N_DIMS; i++) {
        v[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(dims, i));
        if (v[i] == -1 && PyErr_Occurred())
            return -1;
    }
    self->d = (int)v[0]; self->H = (int)v[1]; self->KV = (int)v[2]; self->hd = (int)v[3];
    self->ff = (int)v[4]; self->V = (int)v[5]; self->L = (int)v[6]; self->W = (int)v[7];
    self->gelu_n = (int)v[8]; self->n_exp_attn = (int)v[9]; self->n_exp_vocab = (int)v[10];
    self->eps = v[11]; self->total = v[12]; self->llama = v[13] != 0; self->n_rope = (int)v[14];
    int d = self->d, H = self->H, KV = self->KV, hd = self->hd, ff = self->ff, V = self->V;
    int L = self->L, G = 2 * self->gelu_n + 1, llama = self->llama;
    if (d <= 0 || H <= 0 || KV <= 0 || H % KV || hd <= 0 || hd % 2 || H * hd > 4096 || ff <= 0
            || V <= 0 || L <= 0 || self->W <= 0 || self->W > 65536 || d > 4096 || ff > 65536
            || self->gelu_n < 0 || self->n_exp_attn <= 0 || self->n_exp_vocab <= 0
            || (llama && (self->n_rope <= 0 || ff > 2048 || ff % NBLK))
            || (!llama && H * hd != d)) {
        PyErr_SetString(PyExc_ValueError, "implausible model dimensions");
        return -1;
    }
    self->A = H * hd;
    int A = self->A, qkv = (H + 2 * KV) * hd, n_glob = 7 + 2 * llama, per = 12 + 4 * llama;
    if (PyList_GET_SIZE(bufs) != n_glob + per * L) {
        PyErr_SetString(PyExc_ValueError, "wrong number of buffers");
        return -1;
    }
    self->layers = PyMem_Calloc((size_t)L, sizeof(struct Layer));
    if (!self->layers) {
        PyErr_NoMemory();
        return -1;
    }
    Py_INCREF(bufs);
    self->keep = bufs;
    size_t total16 = packed_size(V, d) + (size_t)L * (packed_size(qkv, d) + packed_size(d, A)
                                                      + packed_size((1 + llama) * ff, d)
                                                      + (llama ? 0 : packed_size(d, ff)));
    self->wpk = big_alloc(total16);
    self->wbytes = total16;
    if (!self->wpk) {
        PyErr_NoMemory();
        return -1;
    }
    int8_t *next16 = self->wpk;
#define GET(dst, i, n) if (!((dst) = buf_ptr(bufs, (i), (Py_ssize_t)(n)))) return -1
#define GETW(dst, i, N, K) do { const int8_t *src; GET(src, (i), (size_t)(N) * (K)); \
        (dst) = next16; pack(src, (N), (K), next16); next16 += packed_size((N), (K)); } while (0)
    GET(self->emb, 0, (size_t)V * d * 4);
    GETW(self->head, 1, V, d);
    GET(self->head_m, 2, (size_t)V * 8);
    GET(self->norm_f, 3, (size_t)d * 8);
    GET(self->exp_vocab, 4, (size_t)self->n_exp_vocab * 8);
    GET(self->exp_attn, 5, (size_t)self->n_exp_attn * 8);
    GET(self->alibi, 6, (size_t)H * self->W * 4);
    if (llama) {
        GET(self->rope_cos, 7, (size_t)self->n_rope * (hd / 2) * 4);
        GET(self->rope_sin, 8, (size_t)self->n_rope * (hd / 2) * 4);
        for (size_t i = 0; i < (size_t)self->n_rope * (hd / 2); i++)
            if (abs(self->rope_cos[i]) > 1 << ROPE_BITS || abs(self->rope_sin[i]) > 1 << ROPE_BITS) {
                PyErr_SetString(PyExc_ValueError, "rotary table out of range");
                return -1;
            }
    }
    for (int l = 0; l < L; l++) {
        int b = n_glob + per * l;
        struct Layer *lw = &self->layers[l];
        GETW(lw->wqkv, b, qkv, d);
        GET(lw->qkv_m, b + 1, (size_t)qkv * 8);
        GETW(lw->wo, b + 2, d, A);
        GET(lw->wo_m, b + 3, (size_t)d * 8);
        if (llama) {   /* gate rows, then up rows: one matmul */
            GETW(lw->w1, b + 12, ff, d);
            GETW(lw->w1, b + 4, ff, d);
            lw->w1 -= packed_size(ff, d);
        } else {
            GETW(lw->w1, b + 4, ff, d);
        }
        GET(lw->w1_m, b + 5, (size_t)ff * 8);
        if (llama) {
            const int8_t *w2;
            const int64_t *h_shift;
            GET(w2, b + 6, (size_t)d * ff);
            GET(h_shift, b + 15, (size_t)ff * 8);
            for (int c = 0; c < ff; c++)
                if (h_shift[c] < 0 || h_shift[c] > H_SHIFT_MAX) {
                    PyErr_SetString(PyExc_ValueError, "SwiGLU product shifts out of range");
                    return -1;
                }
            if (w2_groups(self, lw, w2, h_shift) < 0) {
                PyErr_NoMemory();
                return -1;
            }
            GET(lw->silu, b + 8, (size_t)ff * G * 2);
            GET(lw->wg_m, b + 13, (size_t)ff * 8);
            GET(lw->h_m, b + 14, (size_t)ff * 8);
        } else {
            GETW(lw->w2, b + 6, d, ff);
            GET(lw->gelu, b + 8, (size_t)ff * G);
        }
        GET(lw->w2_m, b + 7, (size_t)d * 8);
        GET(lw->norm1, b + 9, (size_t)d * 8);
        GET(lw->norm2, b + 10, (size_t)d * 8);
        GET(lw->shift, b + 11, (size_t)H * 4);
        for (int i = 0; llama && i < d; i++)
            if (lw->w2_m[i] <= -((int64_t)1 << 33) || lw->w2_m[i] >= (int64_t)1 << 33) {
                PyErr_SetString(PyExc_ValueError, "w2 multipliers out of range");
                return -1;
            }
    }
#undef GETW
#undef GET
    /* the largest weight of a row is table[0]: it must be positive, or a sum divides by 0 */
    if (self->exp_attn[0] <= 0 || self->exp_vocab[0] <= 0) {
        PyErr_SetString(PyExc_ValueError, "exp tables must start positive");
        return -1;
    }
    /* the bounds that keep the attention's int32 arithmetic exact (softmax, weigh) */
    self->rbias = PyMem_Malloc((size_t)H * self->W * sizeof(int32_t));
    self->exp32 = PyMem_Malloc((size_t)self->n_exp_attn * sizeof(int32_t));
    if (!self->rbias || !self->exp32) {
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < H * self->W; i++) {
        if (self->alibi[i] < -(1 << 24) || self->alibi[i] > (1 << 24)) {
            PyErr_SetString(PyExc_ValueError, "ALiBi bias out of range");
            return -1;
        }
        int h = i / self->W, k = i % self->W;
        self->rbias[(size_t)h * self->W + self->W - 1 - k] = self->alibi[i];
    }
    for (int i = 0; i < self->n_exp_attn; i++) {
        /* e <= 2**22 (int16 halves), and W * (e >> 8) * 127 < 2**31 (weigh's sums) */
        if (self->exp_attn[i] < 0 || self->exp_attn[i] > (1 << 22)
                || (int64_t)self->W * (self->exp_attn[i] >> 8) * 127 >= (int64_t)1 << 31) {
            PyErr_SetString(PyExc_ValueError, "attention exp table out of range");
            return -1;
        }
        self->exp32[i] = (int32_t)self->exp_attn[i];
    }
    if (hd * 127 * 127 > (1 << 24)) {
        PyErr_SetString(PyExc_ValueError, "head dimension too large for the core");
        return -1;
    }
    for (int l = 0; l < L; l++)
        for (int h = 0; h < H; h++)
            if (self->layers[l].shift[h] < 1 || self->layers[l].shift[h] > 30) {
                PyErr_SetString(PyExc_ValueError, "attention score shift out of range");
                return -1;
            }
    return 0;
}

/* -- the key/value cache: a ring of W positions per stream and layer -------- */

typedef struct {
    PyObject_HEAD
    Model *model;
    int B;
    int64_t fill;              /* positions seen (shared by the batch, as KVCache.fill) */
    void *k;                   /* [L][B][KV] rings of W positions: keys [hd/2][W][2], int8
                                  (int16 rotated for Llama) ... */
    int8_t *v;                 /* ... values [hd][W] (see the attention kernels) */
} Cache;

static size_t key_size(const Model *m)
{
    return m->llama ? 2 : 1;
}

static void Cache_dealloc(Cache *self)
{
    free(self->k);
    free(self->v);
    Py_XDECREF(self->model);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject ModelType, CacheType;

static int Cache_init(Cache *self, PyObject *args, PyObject *kw)
{
    Model *m;
    int B;
    if (!PyArg_ParseTuple(args, "O!i", &ModelType, &m, &B))
        return -1;
    if (B <= 0) {
        PyErr_SetString(PyExc_ValueError, "batch size must be positive");
        return -1;
    }
    size_t n = (size_t)m->L * B * m->W * m->KV * m->hd;
    self->k = big_alloc(n * key_size(m));
    self->v = big_alloc(n);
    if (!self->k || !self->v) {
        PyErr_NoMemory();
        return -1;
    }
    Py_INCREF(m);
    self->model = m;
    self->B = B;
    self->fill = 0;
    return 0;
}

static void norm(const Model *m, const int64_t *x, const int64_t *gain2, int16_t *y)
{
    /* engine._norm: floor((x * gain2 + den) / 2den), den = isqrt(ss/d + eps) << 16 */
    int d = m->d;
    int64_t ss = 0;
    for (int i = 0; i < d; i++)
        ss += x[i] * x[i];
    int64_t r = isqrt(floordiv(ss << 12, d) + m->eps);
    int64_t den = r << 16;
    for (int i = 0; i < d; i++)
        y[i] = clamp8(floordiv(x[i] * gain2[i] + den, den << 1));
}

typedef struct {           /* per-step scratch for a batch of B streams */
    int64_t *x;            /* [B][d] residual */
    int16_t *y;            /* [B][max(d, ff)] int8-valued matmul inputs */
    int32_t *acc;          /* [B][max(qkv, ff, V)] matmul sums */
    int8_t *qkv;           /* [B][qkv] */
    int16_t *a;            /* [B][A] attention outputs */
    int16_t *q16;          /* Llama: [A] the rotated queries of one row */
    int16_t *hg;           /* Llama: [B][H_GROUP] the SwiGLU products of one w2 group */
    int64_t *acc64;        /* Llama: [B][d] the down projection's wide sums */
    int32_t *dots;         /* [W] q.k of every ring slot */
    int32_t *z;            /* [W] attention logits by ring slot */
    int16_t *ehi, *elo;    /* [W] their exp weights, split as 256 hi + lo */
    int64_t *num;          /* [hd] the weighted sums of the values */
} Scratch;

static void attention(const Model *m, Cache *c, int l, int b, int64_t pos, const int8_t *qkv,
                      int16_t *a, Scratch *S)
{
    int H = m->H, KV = m->KV, hd = m->hd, W = m->W, group = H / KV;
    int64_t first = pos - W + 1 < 0 ? 0 : pos - W + 1;
    int slot = (int)(pos % W), nk = (int)(pos - first + 1);
    /* the slots the kernels read: those that hold keys (0 .. slot until the ring
     * is full), rounded up to whole SIMD blocks (the extra weights are 0) */
    int used = nk == W ? W : ((slot + 32) & ~31) < W ? (slot + 32) & ~31 : W;
    size_t head = (size_t)hd * W;
    size_t row = ((size_t)l * c->B + b) * KV * head;
    int8_t *kc = (int8_t *)c->k + row, *vc = c->v + row;
    int16_t *kc16 = (int16_t *)c->k + row;
    for (int kv = 0; kv < KV; kv++)         /* the new value into its slot */
        for (int i = 0; i < hd; i++)
            vc[kv * head + (size_t)i * W + slot] = qkv[(H + KV + kv) * hd + i];
    if (m->llama) {       /* rotary positions (engine._rotate): keys into their slot, queries */
        const int32_t *cs = m->rope_cos + pos * (hd / 2), *sn = m->rope_sin + pos * (hd / 2);
        for (int h = 0; h < H + KV; h++)
            for (int i = 0; i < hd / 2; i++) {
                int32_t x0 = qkv[h * hd + 2 * i], x1 = qkv[h * hd + 2 * i + 1];
                int16_t r0 = (int16_t)((x0 * cs[i] - x1 * sn[i] + (1 << (ROPE_BITS - 1)))
                                       >> ROPE_BITS);
                int16_t r1 = (int16_t)((x0 * sn[i] + x1 * cs[i] + (1 << (ROPE_BITS - 1)))
                                       >> ROPE_BITS);
                int16_t *dst = h < H ? S->q16 + h * hd + 2 * i
                                     : kc16 + (h - H) * head + ((size_t)i * W + slot) * 2;
                dst[0] = r0;
                dst[1] = r1;
            }
    } else {
        for (int kv = 0; kv < KV; kv++)
            for (int i = 0; i < hd; i++)
                kc[kv * head + ((size_t)(i >> 1) * W + slot) * 2 + (i & 1)] = qkv[(H + kv) * hd + i];
    }
    for (int h = 0; h < H; h++) {
        const int8_t *vt = vc + (h / group) * head;
        if (m->llama)
            kernels->scores16(S->q16 + h * hd, kc16 + (h / group) * head, hd, W, used, S->dots);
        else
            kernels->scores(qkv + h * hd, kc + (h / group) * head, hd, W, used, S->dots);
        int64_t s = kernels->softmax(S->dots, m->rbias + (size_t)h * W, m->layers[l].shift[h],
                                     slot, nk, W, used, m->exp32, m->n_exp_attn, S->z, S->ehi,
                                     S->elo);
        int64_t inv = ((int64_t)1 << RECIP) / s;
        kernels->weigh(S->ehi, S->elo, vt, hd, W, used, S->num);
        for (int i = 0; i < hd; i++)
            a[h * hd + i] = (int16_t)((S->num[i] * inv + ((int64_t)1 << (RECIP - 1))) >> RECIP);
    }
}

static void gelu_mlp(const Model *m, const struct Layer *lw, int R, Scratch *S)
{
    /* x += GELU(y @ w1) @ w2 (engine._mlp) for the R rows of y */
    int d = m->d, ff = m->ff, G = 2 * m->gelu_n + 1;
    kernels->matmul(S->y, R, lw->w1, d, ff, S->acc);
    for (int i = 0; i < ff; i++) {    /* channel-major: one GELU table row stays cached */
        const int8_t *table = lw->gelu + (size_t)i * G + m->gelu_n;
        for (int r = 0; r < R; r++) {
            int64_t idx = requant(S->acc[(size_t)r * ff + i], lw->w1_m[i]);
            idx = idx < -m->gelu_n ? -m->gelu_n : idx > m->gelu_n ? m->gelu_n : idx;
            S->y[(size_t)r * ff + i] = table[idx];    /* GELU outputs: inputs of w2 */
        }
    }
    kernels->matmul(S->y, R, lw->w2, ff, d, S->acc);
    for (int r = 0; r < R; r++) {
        int64_t *x = S->x + (size_t)r * d;
        const int32_t *ac = S->acc + (size_t)r * d;
        for (int i = 0; i < d; i++)
            x[i] += requant(ac[i], lw->w2_m[i]);
    }
}

static void swiglu(const Model *m, const struct Layer *lw, int R, Scratch *S)
{
    /* Llama: x += (h << k) @ w2 with h = requant(SiLU(y @ wg) * (y @ w1)) in int16
     * (engine._mlp); the down projection by groups of channels with one shift */
    int d = m->d, ff = m->ff, G = 2 * m->gelu_n + 1, n = m->gelu_n;
    kernels->matmul(S->y, R, lw->w1, d, 2 * ff, S->acc);     /* gate | up */
    for (int r = 0; r < R; r++) {
        const int32_t *ac = S->acc + (size_t)r * 2 * ff;
        for (int i = 0; i < ff; i++) {
            int64_t idx = requant(ac[i], lw->wg_m[i]);
            idx = idx < -n ? -n : idx > n ? n : idx;
            int64_t up = clamp8(requant(ac[ff + i], lw->w1_m[i]));
            int64_t h = requant(lw->silu[(size_t)i * G + n + idx] * up, lw->h_m[i]);
            S->y[(size_t)r * ff + i] = (int16_t)(h < -H_MAX ? -H_MAX : h > H_MAX ? H_MAX : h);
        }
    }
    memset(S->acc64, 0, (size_t)R * d * 8);
    for (int g = 0; g < lw->n_groups; g++) {
        const W2Group *gr = &lw->groups[g];
        const int *ch = lw->perm + gr->start;
        for (int r = 0; r < R; r++)
            for (int t = 0; t < gr->len; t++)
                S->hg[(size_t)r * gr->len + t] = S->y[(size_t)r * ff + ch[t]];
        kernels->matmul(S->hg, R, gr->w, gr->len, d, S->acc);
        for (size_t i = 0; i < (size_t)R * d; i++)
            S->acc64[i] += (int64_t)S->acc[i] * ((int64_t)1 << gr->shift);  /* acc may be < 0 */
    }
    for (int r = 0; r < R; r++)
        for (int i = 0; i < d; i++)
            S->x[(size_t)r * d + i] += requant_wide(S->acc64[(size_t)r * d + i], lw->w2_m[i],
                                                    H_SHIFT_MAX);
}

/* Positions pos0 .. pos0 + n of streams b0 .. b1: row (b, j) reads token
 * tokens[b * tstride + j] and writes its logits at logits + b * lstride + j * V.
 * The matmuls run on all those rows at once (each weight read once for them
 * all); attention goes row by row, each stream's positions in order, so each
 * key/value enters its ring slot just before the position that adds it. */
static void forward(const Model *m, Cache *c, int b0, int b1, int64_t pos0, int n,
                    const int64_t *tokens, size_t tstride, int64_t *logits, size_t lstride,
                    Scratch *S)
{
    /* streams b0 .. b1 of the cache; row r is stream b0 + r / n */
    int R = (b1 - b0) * n, d = m->d, A = m->A;
    int qkvn = (m->H + 2 * m->KV) * m->hd;
    tokens += (size_t)b0 * tstride;
    logits += (size_t)b0 * lstride;
    for (int r = 0; r < R; r++) {
        const int32_t *e = m->emb + (size_t)tokens[(r / n) * tstride + r % n] * d;
        for (int i = 0; i < d; i++)
            S->x[(size_t)r * d + i] = e[i];
    }
    for (int l = 0; l < m->L; l++) {
        const struct Layer *lw = &m->layers[l];
        for (int r = 0; r < R; r++)
            norm(m, S->x + (size_t)r * d, lw->norm1, S->y + (size_t)r * d);
        kernels->matmul(S->y, R, lw->wqkv, d, qkvn, S->acc);
        for (int r = 0; r < R; r++) {
            int8_t *q = S->qkv + (size_t)r * qkvn;
            const int32_t *ac = S->acc + (size_t)r * qkvn;
            for (int i = 0; i < qkvn; i++)
                q[i] = clamp8(requant(ac[i], lw->qkv_m[i]));
            attention(m, c, l, b0 + r / n, pos0 + r % n, q, S->a + (size_t)r * A, S);
        }
        kernels->matmul(S->a, R, lw->wo, A, d, S->acc);
        for (int r = 0; r < R; r++) {
            int64_t *x = S->x + (size_t)r * d;
            const int32_t *ac = S->acc + (size_t)r * d;
            for (int i = 0; i < d; i++)
                x[i] += requant(ac[i], lw->wo_m[i]);
            norm(m, x, lw->norm2, S->y + (size_t)r * d);
        }
        if (m->llama)
            swiglu(m, lw, R, S);
        else
            gelu_mlp(m, lw, R, S);
    }
    for (int r = 0; r < R; r++)
        norm(m, S->x + (size_t)r * d, m->norm_f, S->y + (size_t)r * d);
    kernels->matmul(S->y, R, m->head, d, m->V, S->acc);
    for (int r = 0; r < R; r++) {
        const int32_t *ac = S->acc + (size_t)r * m->V;
        int64_t *o = logits + (r / n) * lstride + (size_t)(r % n) * m->V;
        for (int i = 0; i < m->V; i++)
            o[i] = requant(ac[i], m->head_m[i]);
    }
}

static size_t acc_width(const Model *m)
{
    /* the widest matmul output: qkv, ff (Llama: gate and up, 2 ff) or the vocabulary */
    size_t w = (size_t)(m->H + 2 * m->KV) * m->hd, f = (size_t)(1 + m->llama) * m->ff;
    w = w > f ? w : f;
    return w > (size_t)m->V ? w : (size_t)m->V;
}

/* Scratch is made and freed in Model.decode's loop, which runs without the
 * GIL: Python's raw allocator (malloc), never its object allocator. */
static void scratch_free(Scratch *S)
{
    PyMem_RawFree(S->x);
    PyMem_RawFree(S->y);
    PyMem_RawFree(S->acc);
    PyMem_RawFree(S->qkv);
    PyMem_RawFree(S->a);
    PyMem_RawFree(S->q16);
    PyMem_RawFree(S->hg);
    PyMem_RawFree(S->acc64);
    PyMem_RawFree(S->dots);
    PyMem_RawFree(S->z);
    PyMem_RawFree(S->ehi);
    PyMem_RawFree(S->elo);
    PyMem_RawFree(S->num);
}

static int scratch_alloc(Scratch *S, const Model *m, int B)
{
    size_t qkvn = (size_t)(m->H + 2 * m->KV) * m->hd;
    size_t yw = (size_t)(m->d > m->ff ? m->d : m->ff);
    size_t aw = acc_width(m);
    S->x = PyMem_RawMalloc((size_t)B * m->d * 8);
    S->y = PyMem_RawMalloc((size_t)B * yw * 2);
    S->acc = PyMem_RawMalloc((size_t)B * aw * 4);
    S->qkv = PyMem_RawMalloc((size_t)B * qkvn);
    S->a = PyMem_RawMalloc((size_t)B * m->A * 2);
    S->q16 = PyMem_RawMalloc((size_t)m->A * 2);
    S->hg = PyMem_RawMalloc((size_t)B * H_GROUP * 2);
    S->acc64 = PyMem_RawMalloc((size_t)B * m->d * 8);
    S->dots = PyMem_RawMalloc((size_t)m->W * 4);
    S->z = PyMem_RawMalloc((size_t)m->W * 4);
    S->ehi = PyMem_RawMalloc((size_t)m->W * 2);
    S->elo = PyMem_RawMalloc((size_t)m->W * 2);
    S->num = PyMem_RawMalloc((size_t)m->hd * 8);
    if (!S->x || !S->y || !S->acc || !S->qkv || !S->a || !S->q16 || !S->hg || !S->acc64
            || !S->dots || !S->z || !S->ehi || !S->elo || !S->num) {
        scratch_free(S);
        return -1;
    }
    return 0;
}

static void freqs_row(const Model *m, const int64_t *l, int64_t *f);

/* One step over the helper threads (_team.c): chunk i runs the forward pass
 * of the streams part(i) .. part(i + 1) with its own scratch and, when
 * decoding, their frequency tables, mixed.  The streams' rows are
 * independent, so any split gives the same integers. */
typedef struct {
    const Model *m;
    Cache *c;
    int B, chunks, n;
    int64_t pos0;
    const int64_t *tokens;
    size_t tstride, lstride;
    int64_t *logits;
    int64_t *freqs;        /* decoding: [B][V] tables of the logits; else NULL */
    MixState **mix;        /* decoding: each row's mixer (NULL: the model alone) ... */
    const int *ids, *at;   /* ... its stream there, its row among the mixer's rows */
    Scratch *S;            /* [chunks] */
} StepJob;

static int part(const StepJob *j, int i)
{
    return (int)((int64_t)j->B * i / j->chunks);
}

static void step_chunk(void *arg, int i)
{
    const StepJob *j = arg;
    int b0 = part(j, i), b1 = part(j, i + 1);
    if (b0 == b1)
        return;
    forward(j->m, j->c, b0, b1, j->pos0, j->n, j->tokens, j->tstride, j->logits, j->lstride,
            &j->S[i]);
    for (int b = b0; j->freqs && b < b1; b++) {
        int64_t *f = j->freqs + (size_t)b * j->m->V;
        freqs_row(j->m, j->logits + (size_t)b * j->lstride, f);
        if (j->mix[b])
            mix_row(j->mix[b], f, j->ids[b], j->at[b]);
    }
}

/* Weights beyond this are read from memory, not cache, at every step: each
 * chunk reads them all, so such a model (the strong tier's 135 M) runs one
 * chunk per thread (two per thread cost it 10 % more time than one thread). */
#define BIG_WEIGHTS (16u << 20)

static Scratch *step_scratch(StepJob *j, int B, int rows_per_stream)
{
    /* j->chunks and their scratch for B streams: two chunks per thread, so a
     * thread the machine is slow to run leaves less for the others to wait on */
    int t = team_threads(0);
    int want = t <= 1 ? 1 : j->m->wbytes > BIG_WEIGHTS ? t : 2 * t;
    j->B = B;
    j->chunks = want < B ? want : B;
    j->S = PyMem_RawCalloc((size_t)j->chunks, sizeof(Scratch));
    int rows = ((B + j->chunks - 1) / j->chunks) * rows_per_stream;
    for (int i = 0; j->S && i < j->chunks; i++)
        if (scratch_alloc(&j->S[i], j->m, rows) < 0) {
            for (int k = 0; k < i; k++)
                scratch_free(&j->S[k]);
            PyMem_RawFree(j->S);
            j->S = NULL;
        }
    return j->S;
}

static void step_scratch_free(StepJob *j)
{
    for (int i = 0; j->S && i < j->chunks; i++)
        scratch_free(&j->S[i]);
    PyMem_RawFree(j->S);
    j->S = NULL;
}

static PyObject *Cache_step(Cache *self, PyObject *args)
{
    /* step(tokens: bytes of int64 [B, n], out: writable buffer int64 [B, n, V]) */
    Py_buffer tok, out;
    int n;
    if (!PyArg_ParseTuple(args, "y*iw*", &tok, &n, &out))
        return NULL;
    Model *m = self->model;
    int B = self->B;
    PyObject *ret = NULL;
    if (n <= 0 || tok.len != (Py_ssize_t)B * n * 8 || out.len != (Py_ssize_t)B * n * m->V * 8) {
        PyErr_SetString(PyExc_ValueError, "tokens / output of the wrong size");
        goto done;
    }
    const int64_t *t = tok.buf;
    for (Py_ssize_t i = 0; i < (Py_ssize_t)B * n; i++)
        if (t[i] < 0 || t[i] >= m->V) {
            PyErr_SetString(PyExc_ValueError, "token id out of range");
            goto done;
        }
    if (m->llama && self->fill + n > m->n_rope) {
        PyErr_SetString(PyExc_ValueError, "position beyond the rotary table");
        goto done;
    }
    int rows = (int)((1 << 23) / acc_width(m));   /* the sums of a pass: at most 32 MiB */
    rows = rows > ROWS ? ROWS : rows;
    int sub = rows / B > n ? n : rows / B > 0 ? rows / B : 1;   /* positions per forward */
    StepJob job = {.m = m, .c = self, .tstride = (size_t)n, .lstride = (size_t)n * m->V};
    if (!step_scratch(&job, B, sub)) {
        PyErr_NoMemory();
        goto done;
    }
    int64_t *o = out.buf;
    int64_t fill = self->fill;
    Py_BEGIN_ALLOW_THREADS
    for (int j = 0; j < n; j += sub) {
        job.pos0 = fill + j;
        job.n = n - j < sub ? n - j : sub;
        job.tokens = t + j;
        job.logits = o + (size_t)j * m->V;
        team_run(step_chunk, &job, job.chunks);
    }
    Py_END_ALLOW_THREADS
    step_scratch_free(&job);
    self->fill = fill + n;
    ret = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&tok);
    PyBuffer_Release(&out);
    return ret;
}

static void cache_keep(Cache *c, const int *rows, int nb)
{
    /* keep only the streams rows[0..nb) (ascending batch indices) */
    const Model *m = c->model;
    size_t per = (size_t)m->W * m->KV * m->hd;
    for (int l = 0; l < m->L; l++)
        for (int i = 0; i < nb; i++) {
            size_t from = ((size_t)l * c->B + rows[i]) * per, to = ((size_t)l * nb + i) * per;
            memmove((char *)c->k + to * key_size(m), (char *)c->k + from * key_size(m),
                    per * key_size(m));
            memmove(c->v + to, c->v + from, per);
        }
    c->B = nb;
}

int *int_list(PyObject *obj, const char *what, int bound, int ascending, const char *bad,
              int *n)
{
    char msg[64];
    snprintf(msg, sizeof msg, "%s must be a sequence", what);
    PyObject *seq = PySequence_Fast(obj, msg);
    if (!seq)
        return NULL;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(seq);
    int *out = PyMem_Malloc((size_t)(len ? len : 1) * sizeof(int));
    if (!out) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (v < 0 || v >= bound || (ascending && i && v <= out[i - 1])) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, bad);
            PyMem_Free(out);
            Py_DECREF(seq);
            return NULL;
        }
        out[i] = (int)v;
    }
    Py_DECREF(seq);
    *n = (int)len;
    return out;
}

static PyObject *Cache_select(Cache *self, PyObject *args)
{
    /* keep only the streams *rows* (a sequence of indices, ascending) */
    PyObject *rows;
    int nb;
    if (!PyArg_ParseTuple(args, "O", &rows))
        return NULL;
    int *keep = int_list(rows, "rows", self->B, 1, "rows must be ascending batch indices", &nb);
    if (!keep)
        return NULL;
    cache_keep(self, keep, nb);
    PyMem_Free(keep);
    Py_RETURN_NONE;
}

static PyObject *Cache_get_batch(Cache *self, void *closure)
{
    return PyLong_FromLong(self->B);
}

static PyObject *Cache_get_fill(Cache *self, void *closure)
{
    return PyLong_FromLongLong(self->fill);
}

static void freqs_row(const Model *m, const int64_t *l, int64_t *f)
{
    /* engine.freqs of one row of logits: exp table by gap to the max, scaled to
     * sum to total, the rounding remainder to the first maximum */
    int V = m->V, first = 0;
    int64_t zmax = l[0], sum = 0, fsum = 0;
    for (int i = 1; i < V; i++)
        if (l[i] > zmax) {
            zmax = l[i];
            first = i;
        }
    for (int i = 0; i < V; i++) {
        int64_t gap = zmax - l[i];
        if (gap > m->n_exp_vocab - 1)
            gap = m->n_exp_vocab - 1;
        f[i] = m->exp_vocab[gap];
        sum += f[i];
    }
    int64_t rr = (m->total << 32) / sum;
    for (int i = 0; i < V; i++) {
        f[i] = (f[i] * rr) >> 32;
        fsum += f[i];
    }
    f[first] += m->total - fsum;
}

static PyObject *Model_freqs(Model *self, PyObject *args)
{
    /* freqs(logits: int64 buffer [R, V], out: writable int64 [R, V], which may be
     * logits itself: each entry is read before it is written): engine.freqs */
    Py_buffer lg, out;
    if (!PyArg_ParseTuple(args, "y*w*", &lg, &out))
        return NULL;
    int V = self->V;
    if (lg.len % ((Py_ssize_t)V * 8) || out.len != lg.len) {
        PyBuffer_Release(&lg);
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "logits / output of the wrong size");
        return NULL;
    }
    Py_ssize_t R = lg.len / ((Py_ssize_t)V * 8);
    const int64_t *l = lg.buf;
    int64_t *f = out.buf;
    for (Py_ssize_t r = 0; r < R; r++, l += V, f += V)
        freqs_row(self, l, f);
    PyBuffer_Release(&lg);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

/* -- decoding a batch of streams: model, mixing and range decoder ---------- */

typedef struct {               /* one stream of Model.decode */
    const uint8_t *words;
    size_t n_words;
    int64_t n;                 /* tokens to decode */
    int group;                 /* index into the groups, or -1: the model alone */
    int failed;
    int32_t *out;              /* [n] */
    int64_t done;
    RangeDecoder rd;
} DStream;

typedef struct {
    int start, count;
    MixState *ms;
} DGroup;

static int run_end(const DStream *st, const int *act, int nact, int r0)
{
    /* the end of the run of rows from r0 that share row r0's mixer (one row
     * when it has none) */
    int g = st[act[r0]].group, r1 = r0 + 1;
    while (g >= 0 && r1 < nact && st[act[r1]].group == g)
        r1++;
    return r1;
}

static int decode_loop(const Model *m, Cache *c, DStream *st, int *act, int nact,
                       DGroup *groups, int bos)
{
    /* LLMCodec._decode_streams for the streams act[0..nact) (ascending, each
     * with tokens to decode); no Python inside.  0, or -1: out of memory. */
    int V = m->V, rc = -1;
    int64_t *cur = malloc((size_t)nact * 8), *logits = malloc((size_t)nact * V * 8);
    int64_t *fr = malloc((size_t)nact * V * 8);
    int *ids = malloc((size_t)nact * sizeof(int)), *syms = malloc((size_t)nact * sizeof(int));
    int *keep = malloc((size_t)nact * sizeof(int)), *at = malloc((size_t)nact * sizeof(int));
    MixState **mix = malloc((size_t)nact * sizeof(MixState *));
    StepJob job = {.m = m, .c = c, .n = 1, .tokens = cur, .tstride = 1, .logits = logits,
                   .lstride = (size_t)V, .freqs = fr, .mix = mix, .ids = ids, .at = at};
    if (!cur || !logits || !fr || !ids || !syms || !keep || !at || !mix
            || !step_scratch(&job, nact, 1))
        goto out;
    for (int r = 0; r < nact; r++) {
        cur[r] = bos;
        rd_init(&st[act[r]].rd, st[act[r]].words, st[act[r]].n_words);
    }
    while (nact) {
        /* a group's active streams are consecutive rows: their mixer
         * predicts from what they coded so far, then mixes each row's table
         * in the step's chunks */
        for (int r0 = 0, r1; r0 < nact; r0 = r1) {
            int g = st[act[r0]].group;
            r1 = run_end(st, act, nact, r0);
            for (int r = r0; r < r1; r++) {
                mix[r] = g < 0 ? NULL : groups[g].ms;
                ids[r] = g < 0 ? 0 : act[r] - groups[g].start;
                at[r] = r - r0;
            }
            if (g >= 0 && mix_prepare(groups[g].ms, r1 - r0) < 0)
                goto out;
        }
        job.pos0 = c->fill;
        if (nact < job.B) {          /* streams ended: the chunks split the rest */
            job.B = nact;
            job.chunks = job.chunks < nact ? job.chunks : nact;
        }
        team_run(step_chunk, &job, job.chunks);
        c->fill++;
        int nk = 0;
        for (int r = 0; r < nact; r++) {
            DStream *d = &st[act[r]];
            int sym = rd_decode(&d->rd, fr + (size_t)r * V, V);
            if (sym < 0) {
                d->failed = 1;      /* its block fails; its mixer learns a stand-in */
                sym = 0;
            } else {
                d->out[d->done++] = sym;
                if (d->done < d->n) {
                    cur[nk] = sym;
                    keep[nk++] = r;
                }
            }
            syms[r] = sym;
        }
        for (int r0 = 0, r1; r0 < nact; r0 = r1) {
            int g = st[act[r0]].group;
            r1 = run_end(st, act, nact, r0);
            if (g >= 0 && mix_learn(groups[g].ms, ids + r0, syms + r0, r1 - r0) < 0)
                goto out;
        }
        if (nk < nact) {
            cache_keep(c, keep, nk);
            for (int k = 0; k < nk; k++)
                act[k] = act[keep[k]];
            nact = nk;
        }
    }
    rc = 0;
out:
    step_scratch_free(&job);
    free(cur);
    free(logits);
    free(fr);
    free(ids);
    free(syms);
    free(keep);
    free(at);
    free(mix);
    return rc;
}

static PyObject *Model_decode(Model *self, PyObject *args)
{
    /* decode(bos, streams: [(words: bytes, n_tokens)], groups: [(start, count,
     * version)]) -> per stream a list of token ids, or None where the data is
     * not a stream the encoder wrote.  The streams of each group (consecutive)
     * share a mixer of that frame version; the others are coded with the
     * model alone.  The whole batch decodes in lockstep, without the GIL. */
    int bos;
    PyObject *streams, *groups_obj, *ret = NULL;
    if (!PyArg_ParseTuple(args, "iO!O!", &bos, &PyList_Type, &streams, &PyList_Type, &groups_obj))
        return NULL;
    if (bos < 0 || bos >= self->V) {
        PyErr_SetString(PyExc_ValueError, "bos token out of range");
        return NULL;
    }
    Py_ssize_t ns = PyList_GET_SIZE(streams), ng = PyList_GET_SIZE(groups_obj);
    DStream *st = PyMem_Calloc((size_t)ns + 1, sizeof(DStream));
    DGroup *groups = PyMem_Calloc((size_t)ng + 1, sizeof(DGroup));
    int *act = PyMem_Malloc(((size_t)ns + 1) * sizeof(int));
    Cache *c = NULL;
    int nact = 0;
    if (!st || !groups || !act) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < ns; i++) {
        PyObject *words;
        long long n;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(streams, i), "O!L", &PyBytes_Type, &words, &n))
            goto done;
        if (n < 0 || n > (1 << 26) || (self->llama && n > self->n_rope)) {
            PyErr_SetString(PyExc_ValueError, "implausible token count");
            goto done;
        }
        st[i].words = (const uint8_t *)PyBytes_AS_STRING(words);   /* the list keeps it */
        st[i].n_words = (size_t)PyBytes_GET_SIZE(words) / 4;
        st[i].failed = PyBytes_GET_SIZE(words) % 4 != 0;
        st[i].n = n;
        st[i].group = -1;
        st[i].out = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(int32_t));
        if (!st[i].out) {
            PyErr_NoMemory();
            goto done;
        }
    }
    for (Py_ssize_t g = 0; g < ng; g++) {
        int start, count, version;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(groups_obj, g), "iii", &start, &count, &version))
            goto done;
        if (start < 0 || count <= 0 || start + (Py_ssize_t)count > ns
                || (g && start < groups[g - 1].start + groups[g - 1].count)) {
            PyErr_SetString(PyExc_ValueError, "groups must be ascending ranges of streams");
            goto done;
        }
        groups[g].start = start;
        groups[g].count = count;
        groups[g].ms = mix_new(count, version, self->V);
        if (!groups[g].ms) {
            PyErr_Format(PyExc_ValueError, "unknown llm payload version %d", version);
            goto done;
        }
        for (int i = start; i < start + count; i++)
            st[i].group = (int)g;
    }
    for (Py_ssize_t i = 0; i < ns; i++)
        if (!st[i].failed && st[i].n > 0)
            act[nact++] = (int)i;
    int rc = 0;
    if (nact) {
        c = (Cache *)PyObject_CallFunction((PyObject *)&CacheType, "Oi", self, nact);
        if (!c)
            goto done;
        Py_BEGIN_ALLOW_THREADS
        rc = decode_loop(self, c, st, act, nact, groups, bos);
        Py_END_ALLOW_THREADS
    }
    if (rc < 0) {
        PyErr_NoMemory();
        goto done;
    }
    ret = PyList_New(ns);
    for (Py_ssize_t i = 0; ret && i < ns; i++) {
        PyObject *item;
        if (st[i].failed) {
            item = Py_NewRef(Py_None);
        } else {
            item = PyList_New((Py_ssize_t)st[i].n);
            for (int64_t t = 0; item && t < st[i].n; t++)
                PyList_SET_ITEM(item, t, PyLong_FromLong(st[i].out[t]));
        }
        if (!item)
            Py_CLEAR(ret);
        else
            PyList_SET_ITEM(ret, i, item);
    }
done:
    Py_XDECREF(c);
    for (Py_ssize_t g = 0; groups && g < ng; g++)
        mix_free(groups[g].ms);
    for (Py_ssize_t i = 0; st && i < ns; i++)
        PyMem_Free(st[i].out);
    PyMem_Free(st);
    PyMem_Free(groups);
    PyMem_Free(act);
    return ret;
}

static PyObject *core_simd(PyObject *mod, PyObject *args)
{
    /* simd() -> the path in use; simd(name) switches to another this CPU runs
     * (for tests and comparison: every path gives the same integers) */
    const char *name = NULL;
    if (!PyArg_ParseTuple(args, "|s", &name))
        return NULL;
    if (name) {
        const Kernels *k = paths;
        while (k < paths + N_PATHS && (strcmp(k->name, name) || !cpu_runs(k)))
            k++;
        if (k == paths + N_PATHS) {
            PyErr_Format(PyExc_ValueError, "SIMD path %s is not available on this CPU", name);
            return NULL;
        }
        kernels = k;
    }
    return PyUnicode_FromString(kernels->name);
}

static PyObject *core_simd_paths(PyObject *mod, PyObject *noargs)
{
    /* every path this CPU can run, fastest first */
    PyObject *out = PyList_New(0);
    for (size_t i = 0; out && i < N_PATHS; i++)
        if (cpu_runs(&paths[i])) {
            PyObject *name = PyUnicode_FromString(paths[i].name);
            if (!name || PyList_Append(out, name) < 0)
                Py_CLEAR(out);
            Py_XDECREF(name);
        }
    return out;
}

static PyObject *core_threads(PyObject *mod, PyObject *args)
{
    /* threads() -> the threads a step runs on; threads(k) asks for k (the
     * calling thread and k - 1 helpers): same integers, less time */
    int n = 0;
    if (!PyArg_ParseTuple(args, "|i", &n))
        return NULL;
    if (PyTuple_GET_SIZE(args) && (n < 1 || n > 64)) {
        PyErr_SetString(PyExc_ValueError, "threads must be 1 .. 64");
        return NULL;
    }
    int k;
    Py_BEGIN_ALLOW_THREADS        /* waits for a step under way in another thread */
    k = team_threads(n);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(k);
}

static PyMethodDef Model_methods[] = {
    {"freqs", (PyCFunction)Model_freqs, METH_VARARGS, "Integer frequency tables of logits."},
    {"decode", (PyCFunction)Model_decode, METH_VARARGS, "Decode a batch of streams."},
    {NULL}
};

static PyMethodDef Cache_methods[] = {
    {"step", (PyCFunction)Cache_step, METH_VARARGS, "Advance every stream by n tokens."},
    {"select", (PyCFunction)Cache_select, METH_VARARGS, "Keep only some streams."},
    {NULL}
};

static PyGetSetDef Cache_getset[] = {
    {"batch", (getter)Cache_get_batch, NULL, "streams in the cache", NULL},
    {"fill", (getter)Cache_get_fill, NULL, "positions seen", NULL},
    {NULL}
};

static PyTypeObject ModelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "llmfs.model._core.Model",
    .tp_basicsize = sizeof(Model),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Model_init,
    .tp_dealloc = (destructor)Model_dealloc,
    .tp_methods = Model_methods,
};

static PyTypeObject CacheType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "llmfs.model._core.Cache",
    .tp_basicsize = sizeof(Cache),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Cache_init,
    .tp_dealloc = (destructor)Cache_dealloc,
    .tp_methods = Cache_methods,
    .tp_getset = Cache_getset,
};

static PyMethodDef core_methods[] = {
    {"simd", core_simd, METH_VARARGS, "The SIMD path in use; simd(name) switches."},
    {"simd_paths", core_simd_paths, METH_NOARGS, "The SIMD paths this CPU can run."},
    {"threads", core_threads, METH_VARARGS, "Threads a step runs on; threads(k) sets them."},
    {NULL}
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "_core", "The native exact core.", -1, core_methods,
};

PyMODINIT_FUNC PyInit__core(void)
{
    if (PyType_Ready(&ModelType) < 0 || PyType_Ready(&CacheType) < 0)
        return NULL;
    kernels = paths;
    while (!cpu_runs(kernels))              /* the fastest path this CPU has */
        kernels++;
    PyObject *m = PyModule_Create(&core_module);
    if (!m)
        return NULL;
    Py_INCREF(&ModelType);
    Py_INCREF(&CacheType);
    if (PyModule_AddObject(m, "Model", (PyObject *)&ModelType) < 0
            || PyModule_AddObject(m, "Cache", (PyObject *)&CacheType) < 0
            || mix_add_types(m) < 0)
        return NULL;
    return m;
}
