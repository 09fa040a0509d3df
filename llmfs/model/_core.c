/* The native exact core: the integer forward pass of ``engine.py`` for the
 * ALiBi models (the shipped default, technical and starter), one position at
 * a time with a key/value ring buffer per stream, in C with no per-token
 * Python.  Every value is an integer and every sum is exact (int32 for
 * int8 x int8 dot products, int64 elsewhere), so the order of operations does
 * not matter and the tables equal the torch engine's bit for bit, whatever
 * the SIMD path the compiler picked (``target_clones``: AVX2 where the CPU
 * has it, else the portable build of the same C).
 *
 * Python side: ``llmfs/model/native.py`` builds the weight buffers from the
 * torch engine's tensors and wraps ``Model``/``Cache`` behind the engine's
 * ``step``/``freqs`` interface.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SHIFT 24
#define RECIP 40

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(__clang__)
#define SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SIMD_CLONES
#endif

/* -- exact integer kernels ------------------------------------------------ */

SIMD_CLONES
static void matvec_i8(const int8_t *x, const int8_t *w, int K, int N, int32_t *out)
{
    /* out[n] = sum_k x[k] * w[n*K + k]: |sum| <= 127 * 127 * K < 2**31 */
    for (int n = 0; n < N; n++) {
        const int8_t *row = w + (size_t)n * K;
        int32_t acc = 0;
        for (int k = 0; k < K; k++)
            acc += (int32_t)x[k] * (int32_t)row[k];
        out[n] = acc;
    }
}

SIMD_CLONES
static void axpy_i64(int64_t e, const int8_t *v, int n, int64_t *acc)
{
    for (int c = 0; c < n; c++)
        acc[c] += e * (int64_t)v[c];
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

/* -- the model ------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    int d, H, KV, hd, ff, V, L, W, gelu_n, n_exp_attn, n_exp_vocab;
    int64_t eps, total;
    PyObject *keep;            /* the bytes objects the pointers below point into */
    const int64_t *emb;        /* [V, d] */
    const int8_t *head;        /* [V, d] */
    const int64_t *head_m, *norm_f, *exp_vocab, *exp_attn;
    const int32_t *alibi;      /* [H, W] ALiBi bias by distance */
    /* per layer, arrays of L pointers */
    const int8_t **wqkv, **wo, **w1, **w2, **gelu;
    const int64_t **qkv_m, **wo_m, **w1_m, **w2_m, **norm1, **norm2;
    const int32_t **shift;     /* [H] attention score shifts */
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
    PyMem_Free(self->wqkv);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Model_init(Model *self, PyObject *args, PyObject *kw)
{
    PyObject *dims, *bufs;
    if (!PyArg_ParseTuple(args, "O!O!", &PyTuple_Type, &dims, &PyList_Type, &bufs))
        return -1;
    long long v[13];
    if (PyTuple_GET_SIZE(dims) != 13) {
        PyErr_SetString(PyExc_ValueError, "13 dimensions expected");
        return -1;
    }
    for (int i = 0; i < 13; i++) {
        v[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(dims, i));
        if (v[i] == -1 && PyErr_Occurred())
            return -1;
    }
    self->d = (int)v[0]; self->H = (int)v[1]; self->KV = (int)v[2]; self->hd = (int)v[3];
    self->ff = (int)v[4]; self->V = (int)v[5]; self->L = (int)v[6]; self->W = (int)v[7];
    self->gelu_n = (int)v[8]; self->n_exp_attn = (int)v[9]; self->n_exp_vocab = (int)v[10];
    self->eps = v[11]; self->total = v[12];
    int d = self->d, H = self->H, KV = self->KV, hd = self->hd, ff = self->ff, V = self->V;
    int L = self->L, G = 2 * self->gelu_n + 1, qkv = (H + 2 * KV) * hd;
    if (d <= 0 || H <= 0 || KV <= 0 || H % KV || hd <= 0 || H * hd != d || ff <= 0 || V <= 0
            || L <= 0 || self->W <= 0 || d > 4096 || ff > 65536) {
        PyErr_SetString(PyExc_ValueError, "implausible model dimensions");
        return -1;
    }
    if (PyList_GET_SIZE(bufs) != 7 + 12 * L) {
        PyErr_SetString(PyExc_ValueError, "wrong number of buffers");
        return -1;
    }
    self->wqkv = PyMem_Calloc(13 * (size_t)L, sizeof(void *));
    if (!self->wqkv)
        return -1;
    self->wo = self->wqkv + L; self->w1 = self->wo + L; self->w2 = self->w1 + L;
    self->gelu = self->w2 + L;
    self->qkv_m = (const int64_t **)(self->gelu + L); self->wo_m = self->qkv_m + L;
    self->w1_m = self->wo_m + L; self->w2_m = self->w1_m + L; self->norm1 = self->w2_m + L;
    self->norm2 = self->norm1 + L; self->shift = (const int32_t **)(self->norm2 + L);
    Py_INCREF(bufs);
    self->keep = bufs;
#define GET(dst, i, n) if (!((dst) = buf_ptr(bufs, (i), (Py_ssize_t)(n)))) return -1
    GET(self->emb, 0, (size_t)V * d * 8);
    GET(self->head, 1, (size_t)V * d);
    GET(self->head_m, 2, (size_t)V * 8);
    GET(self->norm_f, 3, (size_t)d * 8);
    GET(self->exp_vocab, 4, (size_t)self->n_exp_vocab * 8);
    GET(self->exp_attn, 5, (size_t)self->n_exp_attn * 8);
    GET(self->alibi, 6, (size_t)H * self->W * 4);
    for (int l = 0; l < L; l++) {
        int b = 7 + 12 * l;
        GET(self->wqkv[l], b, (size_t)qkv * d);
        GET(self->qkv_m[l], b + 1, (size_t)qkv * 8);
        GET(self->wo[l], b + 2, (size_t)d * d);
        GET(self->wo_m[l], b + 3, (size_t)d * 8);
        GET(self->w1[l], b + 4, (size_t)ff * d);
        GET(self->w1_m[l], b + 5, (size_t)ff * 8);
        GET(self->w2[l], b + 6, (size_t)d * ff);
        GET(self->w2_m[l], b + 7, (size_t)d * 8);
        GET(self->gelu[l], b + 8, (size_t)ff * G);
        GET(self->norm1[l], b + 9, (size_t)d * 8);
        GET(self->norm2[l], b + 10, (size_t)d * 8);
        GET(self->shift[l], b + 11, (size_t)H * 4);
    }
#undef GET
    return 0;
}

/* -- the key/value cache: a ring of W positions per stream and layer -------- */

typedef struct {
    PyObject_HEAD
    Model *model;
    int B;
    int64_t fill;              /* positions seen (shared by the batch, as KVCache.fill) */
    int8_t *k, *v;             /* [L][B][W][KV*hd] */
} Cache;

static void Cache_dealloc(Cache *self)
{
    PyMem_Free(self->k);
    PyMem_Free(self->v);
    Py_XDECREF(self->model);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject ModelType;

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
    self->k = PyMem_Calloc(n, 1);
    self->v = PyMem_Calloc(n, 1);
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

static void norm(const Model *m, const int64_t *x, const int64_t *gain2, int8_t *y)
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

/* One position of one stream: x [d] in, logits [V] out. */
static void forward(const Model *m, Cache *c, int b, int64_t pos, int token, int64_t *logits,
                    int8_t *y, int32_t *acc, int64_t *x, int8_t *a, int64_t *num)
{
    int d = m->d, H = m->H, KV = m->KV, hd = m->hd, ff = m->ff, W = m->W;
    int G = 2 * m->gelu_n + 1, group = H / KV, qkvn = (H + 2 * KV) * hd;
    int64_t first = pos - W + 1 < 0 ? 0 : pos - W + 1;
    memcpy(x, m->emb + (size_t)token * d, (size_t)d * 8);
    int8_t *qkv = a + d;   /* scratch after the attention output */
    for (int l = 0; l < m->L; l++) {
        norm(m, x, m->norm1[l], y);
        matvec_i8(y, m->wqkv[l], d, qkvn, acc);
        for (int i = 0; i < qkvn; i++)
            qkv[i] = clamp8(requant(acc[i], m->qkv_m[l][i]));
        size_t row = (((size_t)l * c->B + b) * W) * KV * hd;
        int8_t *kc = c->k + row, *vc = c->v + row;
        memcpy(kc + (size_t)(pos % W) * KV * hd, qkv + H * hd, (size_t)KV * hd);
        memcpy(vc + (size_t)(pos % W) * KV * hd, qkv + (H + KV) * hd, (size_t)KV * hd);
        int nk = (int)(pos - first + 1);
        for (int h = 0; h < H; h++) {
            const int8_t *q = qkv + h * hd;
            int kv = h / group, sh = m->shift[l][h];
            const int32_t *bias = m->alibi + (size_t)h * W;
            int64_t zmax = INT64_MIN;
            int64_t *z = num + hd;   /* scratch: nk logits */
            for (int j = 0; j < nk; j++) {
                int64_t p = first + j;
                int32_t dot;
                matvec_i8(q, kc + (size_t)(p % W) * KV * hd + kv * hd, hd, 1, &dot);
                int64_t zz = (((int64_t)dot + ((int64_t)1 << (sh - 1))) >> sh) - bias[pos - p];
                z[j] = zz;
                if (zz > zmax)
                    zmax = zz;
            }
            int64_t s = 0;
            memset(num, 0, (size_t)hd * 8);
            for (int j = 0; j < nk; j++) {
                int64_t gap = zmax - z[j];
                if (gap > m->n_exp_attn - 1)
                    gap = m->n_exp_attn - 1;
                int64_t e = m->exp_attn[gap];
                s += e;
                if (e)
                    axpy_i64(e, vc + (size_t)((first + j) % W) * KV * hd + kv * hd, hd, num);
            }
            int64_t inv = ((int64_t)1 << RECIP) / s;
            for (int i = 0; i < hd; i++)
                a[h * hd + i] = (int8_t)((num[i] * inv + ((int64_t)1 << (RECIP - 1))) >> RECIP);
        }
        matvec_i8(a, m->wo[l], d, d, acc);
        for (int i = 0; i < d; i++)
            x[i] += requant(acc[i], m->wo_m[l][i]);
        norm(m, x, m->norm2[l], y);
        matvec_i8(y, m->w1[l], d, ff, acc);
        int8_t *h8 = qkv;   /* [ff] GELU outputs (qkv is done with) */
        for (int i = 0; i < ff; i++) {
            int64_t idx = requant(acc[i], m->w1_m[l][i]);
            idx = (idx < -m->gelu_n ? -m->gelu_n : idx > m->gelu_n ? m->gelu_n : idx) + m->gelu_n;
            h8[i] = m->gelu[l][(size_t)i * G + idx];
        }
        matvec_i8(h8, m->w2[l], ff, d, acc);
        for (int i = 0; i < d; i++)
            x[i] += requant(acc[i], m->w2_m[l][i]);
    }
    norm(m, x, m->norm_f, y);
    matvec_i8(y, m->head, d, m->V, acc);
    for (int i = 0; i < m->V; i++)
        logits[i] = requant(acc[i], m->head_m[i]);
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
    size_t big = (size_t)(m->ff > m->V ? m->ff : m->V);
    size_t qkvn = (size_t)(m->H + 2 * m->KV) * m->hd;
    int8_t *y = PyMem_Malloc((size_t)m->d);
    int32_t *acc = PyMem_Malloc((big > qkvn ? big : qkvn) * 4);
    int64_t *x = PyMem_Malloc((size_t)m->d * 8);
    int8_t *a = PyMem_Malloc((size_t)m->d + (qkvn > (size_t)m->ff ? qkvn : (size_t)m->ff));
    int64_t *num = PyMem_Malloc(((size_t)m->hd + m->W) * 8);
    if (!y || !acc || !x || !a || !num) {
        PyErr_NoMemory();
    } else {
        int64_t *o = out.buf;
        int64_t fill = self->fill;
        Py_BEGIN_ALLOW_THREADS
        for (int j = 0; j < n; j++)
            for (int b = 0; b < B; b++)
                forward(m, self, b, fill + j, (int)t[(size_t)b * n + j],
                        o + ((size_t)b * n + j) * m->V, y, acc, x, a, num);
        Py_END_ALLOW_THREADS
        self->fill = fill + n;
        ret = Py_None;
        Py_INCREF(ret);
    }
    PyMem_Free(y);
    PyMem_Free(acc);
    PyMem_Free(x);
    PyMem_Free(a);
    PyMem_Free(num);
done:
    PyBuffer_Release(&tok);
    PyBuffer_Release(&out);
    return ret;
}

static PyObject *Cache_select(Cache *self, PyObject *args)
{
    /* keep only the streams *rows* (a sequence of indices, ascending) */
    PyObject *rows;
    if (!PyArg_ParseTuple(args, "O", &rows))
        return NULL;
    PyObject *seq = PySequence_Fast(rows, "rows must be a sequence");
    if (!seq)
        return NULL;
    Py_ssize_t nb = PySequence_Fast_GET_SIZE(seq);
    Model *m = self->model;
    size_t per = (size_t)m->W * m->KV * m->hd;
    for (Py_ssize_t i = 0; i < nb; i++) {
        long r = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (r < 0 || r >= self->B || (i && r <= PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i - 1)))) {
            Py_DECREF(seq);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "rows must be ascending batch indices");
            return NULL;
        }
    }
    for (int l = 0; l < m->L; l++)
        for (Py_ssize_t i = 0; i < nb; i++) {
            long r = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
            size_t from = ((size_t)l * self->B + r) * per, to = ((size_t)l * nb + i) * per;
            memmove(self->k + to, self->k + from, per);
            memmove(self->v + to, self->v + from, per);
        }
    Py_DECREF(seq);
    self->B = (int)nb;
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

static PyObject *Model_freqs(Model *self, PyObject *args)
{
    /* freqs(logits: int64 buffer [R, V], out: writable int64 [R, V]): engine.freqs */
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
    for (Py_ssize_t r = 0; r < R; r++, l += V, f += V) {
        int64_t zmax = l[0], sum = 0, fsum = 0;
        int first = 0;
        for (int i = 1; i < V; i++)
            if (l[i] > zmax) {
                zmax = l[i];
                first = i;
            }
        for (int i = 0; i < V; i++) {
            int64_t gap = zmax - l[i];
            if (gap > self->n_exp_vocab - 1)
                gap = self->n_exp_vocab - 1;
            f[i] = self->exp_vocab[gap];
            sum += f[i];
        }
        int64_t rr = (self->total << 32) / sum;
        for (int i = 0; i < V; i++) {
            f[i] = (f[i] * rr) >> 32;
            fsum += f[i];
        }
        f[first] += self->total - fsum;
    }
    PyBuffer_Release(&lg);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

static PyObject *core_simd(PyObject *mod, PyObject *noargs)
{
    /* which clone the dynamic loader picked for this CPU */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(__clang__)
    __builtin_cpu_init();
    return PyUnicode_FromString(__builtin_cpu_supports("avx2") ? "avx2" : "portable");
#else
    return PyUnicode_FromString("portable");
#endif
}

static PyMethodDef Model_methods[] = {
    {"freqs", (PyCFunction)Model_freqs, METH_VARARGS, "Integer frequency tables of logits."},
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
    {"simd", core_simd, METH_NOARGS, "The SIMD path this CPU runs."},
    {NULL}
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "_core", "The native exact core.", -1, core_methods,
};

PyMODINIT_FUNC PyInit__core(void)
{
    if (PyType_Ready(&ModelType) < 0 || PyType_Ready(&CacheType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&core_module);
    if (!m)
        return NULL;
    Py_INCREF(&ModelType);
    Py_INCREF(&CacheType);
    if (PyModule_AddObject(m, "Model", (PyObject *)&ModelType) < 0
            || PyModule_AddObject(m, "Cache", (PyObject *)&CacheType) < 0)
        return NULL;
    return m;
}
