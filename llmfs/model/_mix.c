/* The mixing of the native core: the match model (codec/match.py) and the
 * n-gram caches (codec/ngram.py) of one block's streams, and the range
 * decoder, in C with the same integers as the Python reference.
 *
 * Each function below names the Python it mirrors; the arithmetic is the
 * same (every product is bounded as the Python docstrings say, nothing is
 * rounded differently), so the tables are equal bit for bit, which
 * tests/test_native.py checks against codec/mixer.py on real blocks.  The
 * dictionaries of the Python become hash maps keyed by the context's
 * tokens; the sparse/dense follower counts of ngram.py are one list of
 * (token, count) plus, past DENSE tokens, an index by token (the sums do not
 * depend on the representation).
 */
#include "_core.h"

#include <stdlib.h>
#include <string.h>

#define TOTAL ((int64_t)1 << FREQ_BITS)
#define ONE ((int64_t)1 << 16)
#define N_CTX 3
static const int CONTEXTS[N_CTX] = {1, 2, 4};
#define START 6554
#define FLOOR 64
#define RATE 5
#define DENSE 24
#define N_ORDERS 4
static const int ORDERS[N_ORDERS] = {8, 4, 2, 1};
#define VERIFY 64
#define LEN_BUCKETS 24
#define PROB_BUCKETS (2 * FREQ_BITS + 1)
#define PRIOR 2

/* -- a hash map from up to eight tokens (two u64 keys) to an int64 --------- */

typedef struct {
    uint64_t a, b;
    int64_t val;            /* -1: empty */
} Slot;

typedef struct {
    Slot *slots;
    size_t cap, used;       /* cap a power of two */
} Map;

static uint64_t hash2(uint64_t a, uint64_t b)
{
    uint64_t h = a * 0x9E3779B97F4A7C15ull ^ (b + 0x632BE59BD9B4E019ull) * 0xC2B2AE3D27D4EB4Full;
    return h ^ (h >> 29);
}

static int map_init(Map *m, size_t cap)
{
    m->slots = malloc(cap * sizeof(Slot));
    if (!m->slots)
        return -1;
    for (size_t i = 0; i < cap; i++)
        m->slots[i].val = -1;
    m->cap = cap;
    m->used = 0;
    return 0;
}

static int64_t *map_get(const Map *m, uint64_t a, uint64_t b)
{
    for (size_t i = hash2(a, b) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        Slot *s = &m->slots[i];
        if (s->val < 0)
            return NULL;
        if (s->a == a && s->b == b)
            return &s->val;
    }
}

static int map_put(Map *m, uint64_t a, uint64_t b, int64_t val)
{
    /* set (replacing the value of an equal key, as a dict does) */
    if (2 * (m->used + 1) > m->cap) {
        Map bigger;
        if (map_init(&bigger, 2 * m->cap) < 0)
            return -1;
        for (size_t i = 0; i < m->cap; i++)
            if (m->slots[i].val >= 0)
                map_put(&bigger, m->slots[i].a, m->slots[i].b, m->slots[i].val);
        free(m->slots);
        *m = bigger;
    }
    for (size_t i = hash2(a, b) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        Slot *s = &m->slots[i];
        if (s->val < 0) {
            s->a = a;
            s->b = b;
            s->val = val;
            m->used++;
            return 0;
        }
        if (s->a == a && s->b == b) {
            s->val = val;
            return 0;
        }
    }
}

static void key_of(const int32_t *toks, int k, uint64_t *a, uint64_t *b)
{
    /* k <= 8 tokens < 2**16 (checked in mix_new), packed four to a key; each
     * context length has a map of its own */
    *a = *b = 0;
    for (int i = 0; i < k; i++) {
        uint64_t *w = i < 4 ? a : b;
        *w = (*w << 16) | (uint64_t)(uint16_t)toks[i];
    }
}

/* -- growable int32 arrays ------------------------------------------------- */

typedef struct {
    int32_t *v;
    int n, cap;
} Ints;

static int ints_push(Ints *a, int32_t x)
{
    if (a->n == a->cap) {
        int cap = a->cap ? 2 * a->cap : 16;
        int32_t *v = realloc(a->v, (size_t)cap * sizeof(int32_t));
        if (!v)
            return -1;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return 0;
}

/* -- n-gram caches (ngram.py, NGramGroup) ------------------------------------ */

typedef struct {
    int64_t seen;           /* times the context was seen */
    Ints toks, counts;      /* its followers and their counts */
    int32_t *where;         /* past DENSE followers: token -> index in toks + 1 */
} Entry;

typedef struct {
    int64_t total;          /* each table row sums to this */
    int64_t *uni, n;        /* [V] unigram counts, tokens counted */
    Map follow[N_CTX];      /* context -> index into entries */
    Entry *entries;
    size_t n_entries, cap_entries;
    int32_t (*prev)[4];     /* [streams] the last tokens of each stream */
    int *n_prev;
    int64_t (*weights)[1 + N_CTX];
    Ints pend_ids, pend_toks;   /* this step's tokens, counted at the next */
    /* what mix saw per row, for learn */
    int64_t (*counts)[1 + N_CTX], (*w)[1 + N_CTX];
    int64_t (*found)[N_CTX];    /* entry index or -1 */
} NGrams;

static int64_t follower(const Entry *e, int tok)
{
    if (e->where)
        return e->where[tok] ? e->counts.v[e->where[tok] - 1] : 0;
    for (int i = 0; i < e->toks.n; i++)
        if (e->toks.v[i] == tok)
            return e->counts.v[i];
    return 0;
}

static int count_follower(Entry *e, int tok, int V)
{
    if (e->where) {
        if (e->where[tok]) {
            e->counts.v[e->where[tok] - 1]++;
            return 0;
        }
    } else {
        for (int i = 0; i < e->toks.n; i++)
            if (e->toks.v[i] == tok) {
                e->counts.v[i]++;
                return 0;
            }
    }
    if (ints_push(&e->toks, tok) < 0 || ints_push(&e->counts, 1) < 0)
        return -1;
    if (e->where)
        e->where[tok] = e->toks.n;
    else if (e->toks.n > DENSE) {
        e->where = calloc((size_t)V, sizeof(int32_t));
        if (!e->where)
            return -1;
        for (int i = 0; i < e->toks.n; i++)
            e->where[e->toks.v[i]] = i + 1;
    }
    return 0;
}

static int ngram_flush(NGrams *g, int V)
{
    /* NGramGroup._flush */
    for (int p = 0; p < g->pend_ids.n; p++) {
        int i = g->pend_ids.v[p], tok = g->pend_toks.v[p], np = g->n_prev[i];
        for (int j = 0; j < N_CTX; j++) {
            int k = CONTEXTS[j];
            if (np < k)
                continue;
            uint64_t a, b;
            key_of(g->prev[i] + np - k, k, &a, &b);
            int64_t *at = map_get(&g->follow[j], a, b);
            if (at) {
                Entry *e = &g->entries[*at];
                e->seen++;
                if (count_follower(e, tok, V) < 0)
                    return -1;
                continue;
            }
            if (g->n_entries == g->cap_entries) {
                size_t cap = g->cap_entries ? 2 * g->cap_entries : 1024;
                Entry *es = realloc(g->entries, cap * sizeof(Entry));
                if (!es)
                    return -1;
                g->entries = es;
                g->cap_entries = cap;
            }
            Entry *e = &g->entries[g->n_entries];
            memset(e, 0, sizeof *e);
            e->seen = 1;
            if (ints_push(&e->toks, tok) < 0 || ints_push(&e->counts, 1) < 0
                    || map_put(&g->follow[j], a, b, (int64_t)g->n_entries) < 0)
                return -1;
            g->n_entries++;
        }
        if (np == 4) {
            memmove(g->prev[i], g->prev[i] + 1, 3 * sizeof(int32_t));
            g->prev[i][3] = tok;
        } else {
            g->prev[i][np] = tok;
            g->n_prev[i] = np + 1;
        }
        g->uni[tok]++;
    }
    g->n += g->pend_ids.n;
    g->pend_ids.n = g->pend_toks.n = 0;
    return 0;
}

static void ngram_mix_row(NGrams *g, int64_t *t, int i, int r, int V)
{
    /* NGramGroup.mix for row r (stream i), table t[V] in place, once the
     * step's pending counts are flushed: reads the shared counts, writes only
     * row r's records, so rows may be mixed on any threads */
    int np = g->n_prev[i];
    int64_t *cnt = g->counts[r], *w = g->w[r], coef[1 + N_CTX], w0 = ONE;
    cnt[0] = g->n;
    for (int j = 0; j < N_CTX; j++) {
        int k = CONTEXTS[j];
        int64_t *at = NULL;
        if (np >= k) {
            uint64_t a, b;
            key_of(g->prev[i] + np - k, k, &a, &b);
            at = map_get(&g->follow[j], a, b);
        }
        g->found[r][j] = at ? *at : -1;
        cnt[1 + j] = at ? g->entries[*at].seen : 0;
    }
    for (int c = 0; c < 1 + N_CTX; c++) {
        w[c] = cnt[c] > 0 ? g->weights[i][c] : 0;
        w0 -= w[c];
        coef[c] = w[c] * g->total / (cnt[c] > 0 ? cnt[c] : 1);
    }
    int64_t sum = 0;
    for (int v = 0; v < V; v++)
        t[v] = ((t[v] * w0) >> 16) + ((g->uni[v] * coef[0]) >> 16);
    for (int j = 0; j < N_CTX; j++) {
        if (g->found[r][j] < 0)
            continue;
        const Entry *e = &g->entries[g->found[r][j]];
        for (int f = 0; f < e->toks.n; f++)
            t[e->toks.v[f]] += ((int64_t)e->counts.v[f] * coef[1 + j]) >> 16;
    }
    int top = 0;
    for (int v = 0; v < V; v++) {
        sum += t[v];
        if (t[v] > t[top])
            top = v;
    }
    t[top] += g->total - sum;
}

static int ngram_learn(NGrams *g, const int *ids, const int64_t *matched, const int *syms,
                       int rows, int V)
{
    /* NGramGroup.learn: matched[rows][V] are the tables ngram_mix was given */
    for (int r = 0; r < rows; r++) {
        int i = ids[r], sym = syms[r];
        const int64_t *cnt = g->counts[r], *w = g->w[r];
        int64_t hits[1 + N_CTX], shares[1 + N_CTX], q, wsum = 0, caches = 0, nw[1 + N_CTX];
        hits[0] = g->uni[sym];
        for (int j = 0; j < N_CTX; j++)
            hits[1 + j] = g->found[r][j] < 0 ? 0 : follower(&g->entries[g->found[r][j]], sym);
        for (int c = 0; c < 1 + N_CTX; c++) {
            shares[c] = w[c] * (hits[c] * g->total / (cnt[c] > 0 ? cnt[c] : 1));
            wsum += w[c];
        }
        q = (ONE - wsum) * matched[(size_t)r * V + sym];
        for (int c = 0; c < 1 + N_CTX; c++)
            q += shares[c];
        for (int c = 0; c < 1 + N_CTX; c++) {
            int64_t old = g->weights[i][c];
            if (q > 0 && cnt[c] > 0) {
                /* >> of a negative int64 is a floor shift in GCC and Clang, as numpy's */
                int64_t step = (((shares[c] << 16) / q) - w[c]) >> RATE;
                nw[c] = old + step > FLOOR ? old + step : FLOOR;
            } else {
                nw[c] = old;
            }
            caches += nw[c];
        }
        for (int c = 0; c < 1 + N_CTX; c++)
            g->weights[i][c] = caches > ONE - FLOOR ? nw[c] * (ONE - FLOOR) / caches : nw[c];
        if (ints_push(&g->pend_ids, i) < 0 || ints_push(&g->pend_toks, sym) < 0)
            return -1;
    }
    return 0;
}

/* -- the match model (match.py: MatchGroup, Confidence, mix) ---------------- */

typedef struct {
    int64_t coarse[PROB_BUCKETS][2];
    int64_t fine[LEN_BUCKETS * PROB_BUCKETS][2];
    int ctx_q, ctx_f;
} Confidence;

typedef struct {
    Ints *hists;            /* [streams] */
    Map index[N_ORDERS];    /* context (per length) -> stream << 32 | next position */
    int *src, *ptr, *length;
    int *guess_tok, *guess_len;     /* this step's predictions; guess_len 0: none */
    int64_t step;
    Confidence *conf;       /* [streams] */
} Matches;

static int bit_length(uint64_t x)
{
    return x ? 64 - __builtin_clzll(x) : 0;
}

static int len_bucket(int n)
{
    if (n < 16)
        return n;
    int b = 11 + bit_length((uint64_t)n);
    return b < LEN_BUCKETS - 1 ? b : LEN_BUCKETS - 1;
}

static int prob_bucket(int64_t f)
{
    f += 1;
    return 2 * f <= TOTAL ? bit_length((uint64_t)f)
                          : PROB_BUCKETS - 1 - bit_length((uint64_t)(TOTAL - f));
}

static int64_t conf_prob(Confidence *c, int length, int64_t f)
{
    int q = prob_bucket(f);
    c->ctx_q = q;
    c->ctx_f = len_bucket(length) * PROB_BUCKETS + q;
    int64_t c_miss = c->coarse[q][0], c_hit = c->coarse[q][1];
    int64_t miss = c->fine[c->ctx_f][0], hit = c->fine[c->ctx_f][1], cc = c_miss + c_hit;
    return (hit * cc + PRIOR * c_hit) * TOTAL / ((miss + hit + PRIOR) * cc);
}

static void conf_learn(Confidence *c, int hit)
{
    c->coarse[c->ctx_q][hit] += 2;
    c->fine[c->ctx_f][hit] += 1;
}

static int match_predict(Matches *mt, int n_streams)
{
    /* MatchGroup.predictions (with _find) */
    int64_t s = mt->step, pos = s - 1;
    for (int j = 0; j < n_streams; j++) {
        const Ints *h = &mt->hists[j];
        if (pos < 0 || pos >= h->n)
            continue;
        for (int o = 0; o < N_ORDERS; o++) {
            int k = ORDERS[o];
            if (pos < k)
                continue;
            uint64_t a, b;
            key_of(h->v + pos - k, k, &a, &b);
            if (map_put(&mt->index[o], a, b, ((int64_t)j << 32) | pos) < 0)
                return -1;
        }
    }
    for (int i = 0; i < n_streams; i++) {
        const Ints *h = &mt->hists[i];
        mt->guess_len[i] = 0;
        if (h->n != s)
            continue;
        if (mt->length[i] && mt->ptr[i] >= mt->hists[mt->src[i]].n)
            mt->length[i] = 0;
        if (!mt->length[i]) {
            for (int o = 0; o < N_ORDERS; o++) {
                int k = ORDERS[o];
                if (s < k)
                    continue;
                uint64_t a, b;
                key_of(h->v + s - k, k, &a, &b);
                int64_t *hit = map_get(&mt->index[o], a, b);
                if (!hit)
                    continue;
                int j = (int)(*hit >> 32), p = (int)(*hit & 0xFFFFFFFF), n = k;
                const int32_t *src = mt->hists[j].v;
                while (n < VERIFY && p > n && s > n && src[p - 1 - n] == h->v[s - 1 - n])
                    n++;
                mt->src[i] = j;
                mt->ptr[i] = p;
                mt->length[i] = n;
                break;
            }
        }
        if (mt->length[i]) {
            mt->guess_tok[i] = mt->hists[mt->src[i]].v[mt->ptr[i]];
            mt->guess_len[i] = mt->length[i];
        }
    }
    mt->step++;
    return 0;
}

static int match_append(Matches *mt, int i, int tok)
{
    if (mt->length[i]) {
        if (mt->hists[mt->src[i]].v[mt->ptr[i]] == tok) {
            mt->length[i]++;
            mt->ptr[i]++;
        } else {
            mt->length[i] = 0;
        }
    }
    return ints_push(&mt->hists[i], tok);
}

static void match_mix(int64_t *t, int V, int sym, int64_t p)
{
    /* match.mix for one row: give sym probability p / TOTAL */
    int64_t total = TOTAL - V, f = t[sym];
    if (f >= total)
        return;
    if (p > total)
        p = total;
    int64_t scale = ((total + 1 - p) << 32) / (total - f), sum = 0;
    for (int v = 0; v < V; v++)
        if (v != sym) {
            t[v] = (t[v] * scale) >> 32;
            sum += t[v];
        }
    t[sym] = total - sum;
}

/* -- the mixer (mixer.py, Mixer) --------------------------------------------- */

struct MixState {
    int n, version, V, cap_rows;
    Matches *match;
    NGrams *ngram;
    int64_t *matched;       /* [cap_rows][V] the tables the n-grams were given */
};

static void *zalloc(size_t n, size_t size)
{
    return calloc(n ? n : 1, size);
}

void mix_free(MixState *ms)
{
    if (!ms)
        return;
    if (ms->match) {
        Matches *mt = ms->match;
        for (int i = 0; mt->hists && i < ms->n; i++)
            free(mt->hists[i].v);
        free(mt->hists);
        for (int o = 0; o < N_ORDERS; o++)
            free(mt->index[o].slots);
        free(mt->src);
        free(mt->ptr);
        free(mt->length);
        free(mt->guess_tok);
        free(mt->guess_len);
        free(mt->conf);
        free(mt);
    }
    if (ms->ngram) {
        NGrams *g = ms->ngram;
        for (size_t e = 0; e < g->n_entries; e++) {
            free(g->entries[e].toks.v);
            free(g->entries[e].counts.v);
            free(g->entries[e].where);
        }
        free(g->entries);
        for (int j = 0; j < N_CTX; j++)
            free(g->follow[j].slots);
        free(g->uni);
        free(g->prev);
        free(g->n_prev);
        free(g->weights);
        free(g->pend_ids.v);
        free(g->pend_toks.v);
        free(g->counts);
        free(g->w);
        free(g->found);
        free(g);
    }
    free(ms->matched);
    free(ms);
}

MixState *mix_new(int n, int version, int V)
{
    if (n < 0 || V <= 0 || V > 65536
            || (version != MODEL_ALONE && version != MATCH && version != NGRAMS))
        return NULL;
    MixState *ms = zalloc(1, sizeof *ms);
    if (!ms)
        return NULL;
    ms->n = n;
    ms->version = version;
    ms->V = V;
    if (version >= MATCH) {
        Matches *mt = ms->match = zalloc(1, sizeof *mt);
        if (!mt)
            goto fail;
        mt->hists = zalloc((size_t)n, sizeof(Ints));
        mt->src = zalloc((size_t)n, sizeof(int));
        mt->ptr = zalloc((size_t)n, sizeof(int));
        mt->length = zalloc((size_t)n, sizeof(int));
        mt->guess_tok = zalloc((size_t)n, sizeof(int));
        mt->guess_len = zalloc((size_t)n, sizeof(int));
        mt->conf = zalloc((size_t)n, sizeof(Confidence));
        if (!mt->hists || !mt->src || !mt->ptr || !mt->length || !mt->guess_tok
                || !mt->guess_len || !mt->conf)
            goto fail;
        for (int o = 0; o < N_ORDERS; o++)
            if (map_init(&mt->index[o], 1024) < 0)
                goto fail;
        for (int i = 0; i < n; i++)
            for (int q = 0; q < PROB_BUCKETS; q++)
                mt->conf[i].coarse[q][0] = mt->conf[i].coarse[q][1] = 1;
    }
    if (version >= NGRAMS) {
        NGrams *g = ms->ngram = zalloc(1, sizeof *g);
        if (!g)
            goto fail;
        g->total = TOTAL - V;
        g->uni = zalloc((size_t)V, sizeof(int64_t));
        g->prev = zalloc((size_t)n, sizeof *g->prev);
        g->n_prev = zalloc((size_t)n, sizeof(int));
        g->weights = zalloc((size_t)n, sizeof *g->weights);
        if (!g->uni || !g->prev || !g->n_prev || !g->weights)
            goto fail;
        for (int j = 0; j < N_CTX; j++)
            if (map_init(&g->follow[j], 1024) < 0)
                goto fail;
        for (int i = 0; i < n; i++)
            for (int c = 0; c < 1 + N_CTX; c++)
                g->weights[i][c] = START;
    }
    return ms;
fail:
    mix_free(ms);
    return NULL;
}

static int reserve_rows(MixState *ms, int rows)
{
    if (rows <= ms->cap_rows)
        return 0;
    int64_t *m = realloc(ms->matched, (size_t)rows * ms->V * sizeof(int64_t));
    if (!m)
        return -1;
    ms->matched = m;
    if (ms->ngram) {
        NGrams *g = ms->ngram;
        void *c = realloc(g->counts, (size_t)rows * sizeof *g->counts);
        if (c)
            g->counts = c;
        void *w = realloc(g->w, (size_t)rows * sizeof *g->w);
        if (w)
            g->w = w;
        void *f = realloc(g->found, (size_t)rows * sizeof *g->found);
        if (f)
            g->found = f;
        if (!c || !w || !f)
            return -1;
    }
    ms->cap_rows = rows;
    return 0;
}

int mix_prepare(MixState *ms, int rows)
{
    if (ms->version == MODEL_ALONE)
        return 0;
    if (reserve_rows(ms, rows) < 0 || match_predict(ms->match, ms->n) < 0)
        return -1;
    return ms->ngram ? ngram_flush(ms->ngram, ms->V) : 0;
}

void mix_row(MixState *ms, int64_t *t, int i, int r)
{
    int V = ms->V;
    if (ms->version == MODEL_ALONE)
        return;
    Matches *mt = ms->match;
    if (mt->guess_len[i]) {     /* conf_prob notes its contexts in stream i's record */
        int64_t p = conf_prob(&mt->conf[i], mt->guess_len[i], t[mt->guess_tok[i]]);
        match_mix(t, V, mt->guess_tok[i], p);
    }
    if (ms->ngram) {
        memcpy(ms->matched + (size_t)r * V, t, (size_t)V * sizeof(int64_t));
        ngram_mix_row(ms->ngram, t, i, r, V);
    }
}

int mix_tables(MixState *ms, int64_t *freqs, const int *ids, int rows)
{
    if (mix_prepare(ms, rows) < 0)
        return -1;
    for (int r = 0; r < rows; r++)
        mix_row(ms, freqs + (size_t)r * ms->V, ids[r], r);
    return 0;
}

int mix_learn(MixState *ms, const int *ids, const int *syms, int rows)
{
    if (ms->version == MODEL_ALONE)
        return 0;
    Matches *mt = ms->match;
    for (int r = 0; r < rows; r++) {
        int i = ids[r];
        if (mt->guess_len[i])
            conf_learn(&mt->conf[i], syms[r] == mt->guess_tok[i]);
        if (match_append(mt, i, syms[r]) < 0)
            return -1;
    }
    return ms->ngram ? ngram_learn(ms->ngram, ids, ms->matched, syms, rows, ms->V) : 0;
}

/* -- the range decoder (constriction's queue RangeDecoder, u32 / u64) -------- */

static uint32_t next_word(RangeDecoder *rd)
{
    if (rd->pos >= rd->n_words)
        return 0;       /* past the end constriction shifts in zeros too */
    const uint8_t *w = rd->words + 4 * rd->pos++;
    return (uint32_t)w[0] | (uint32_t)w[1] << 8 | (uint32_t)w[2] << 16 | (uint32_t)w[3] << 24;
}

void rd_init(RangeDecoder *rd, const uint8_t *words, size_t n_words)
{
    rd->words = words;
    rd->n_words = n_words;
    rd->pos = 0;
    rd->lower = 0;
    rd->range = UINT64_MAX;
    uint64_t hi = next_word(rd);
    rd->point = hi << 32 | next_word(rd);
}

int rd_decode(RangeDecoder *rd, const int64_t *f, int V)
{
    uint64_t scale = rd->range >> FREQ_BITS;
    uint64_t quantile = (rd->point - rd->lower) / scale;
    if (quantile >= ((uint64_t)1 << FREQ_BITS))
        return -1;
    uint64_t cum = 0;
    int s = 0;
    for (; s < V - 1; s++) {        /* entry s covers [cum, cum + f[s] + 1) */
        uint64_t next = cum + (uint64_t)f[s] + 1;
        if (quantile < next)
            break;
        cum = next;
    }
    uint64_t prob = (uint64_t)f[s] + 1;
    if (quantile >= cum + prob)
        return -1;                  /* a table that does not sum to 2**24 */
    rd->lower += scale * cum;
    rd->range = scale * prob;
    if (rd->range < ((uint64_t)1 << 32)) {
        rd->lower <<= 32;
        rd->range <<= 32;
        rd->point = rd->point << 32 | next_word(rd);
    }
    return s;
}

/* -- Python: Mixer, the C mixer behind codec/mixer.py's interface ---------- */

typedef struct {
    PyObject_HEAD
    MixState *ms;
    int n, V;
} Mixer;

static void Mixer_dealloc(Mixer *self)
{
    mix_free(self->ms);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Mixer_init(Mixer *self, PyObject *args, PyObject *kw)
{
    int n, version, V;
    if (!PyArg_ParseTuple(args, "iii", &n, &version, &V))
        return -1;
    if (version != MODEL_ALONE && version != MATCH && version != NGRAMS) {
        PyErr_Format(PyExc_ValueError, "unknown llm payload version %d", version);
        return -1;
    }
    mix_free(self->ms);
    self->ms = mix_new(n, version, V);
    if (!self->ms) {
        PyErr_SetString(PyExc_ValueError, "bad mixer dimensions or out of memory");
        return -1;
    }
    self->n = n;
    self->V = V;
    return 0;
}

static int *ids_of(Mixer *self, PyObject *obj, int *rows)
{
    return int_list(obj, "ids", self->n, 1, "ids must be ascending stream indices", rows);
}

static PyObject *Mixer_tables(Mixer *self, PyObject *args)
{
    /* tables(freqs: writable int64 [rows, V], ids) -> freqs, mixed in place */
    Py_buffer buf;
    PyObject *ids_obj, *ret = NULL;
    if (!PyArg_ParseTuple(args, "w*O", &buf, &ids_obj))
        return NULL;
    int rows, *ids = ids_of(self, ids_obj, &rows);
    if (ids) {
        if (buf.len != (Py_ssize_t)rows * self->V * 8)
            PyErr_SetString(PyExc_ValueError, "freqs must be int64 [len(ids), vocab]");
        else if (mix_tables(self->ms, buf.buf, ids, rows) < 0)
            PyErr_NoMemory();
        else
            ret = Py_NewRef(buf.obj);
        PyMem_Free(ids);
    }
    PyBuffer_Release(&buf);
    return ret;
}

static PyObject *Mixer_learn(Mixer *self, PyObject *args)
{
    /* learn(ids, syms): the tokens coded at this step */
    PyObject *ids_obj, *syms_obj, *ret = NULL;
    if (!PyArg_ParseTuple(args, "OO", &ids_obj, &syms_obj))
        return NULL;
    int rows, *ids = ids_of(self, ids_obj, &rows);
    if (!ids)
        return NULL;
    int n_syms, *syms = int_list(syms_obj, "syms", self->V, 0, "symbol out of range", &n_syms);
    if (!syms)
        goto done;
    if (n_syms != rows) {
        PyErr_SetString(PyExc_ValueError, "one symbol per id");
        goto done;
    }
    if (mix_learn(self->ms, ids, syms, rows) < 0)
        PyErr_NoMemory();
    else
        ret = Py_NewRef(Py_None);
done:
    PyMem_Free(syms);
    PyMem_Free(ids);
    return ret;
}

static void symbol_stats(const int64_t *t, int V, int sym, int64_t *out)
{
    /* llm.symbol_stats of one row: symbol, sum of the entries before it + sym, its entry */
    int64_t lo = sym;
    for (int v = 0; v < sym; v++)
        lo += t[v];
    out[0] = sym;
    out[1] = lo;
    out[2] = t[sym];
}

static PyObject *Mixer_run(Mixer *self, PyObject *args)
{
    /* run(freqs [B, n, V], tokens [B, L], lens [B], start, alone [B, L, 3], mixed [B, L, 3])
     * (int64 buffers): positions start .. start + n of every
     * stream still going there, as llm.LLMCodec._stats steps them -- the
     * symbol statistics of its token with the model's table (alone) and the
     * mixed one, then learn. */
    Py_buffer fb, tb, lb, ab, mb;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "y*y*y*nw*w*", &fb, &tb, &lb, &start, &ab, &mb))
        return NULL;
    PyObject *ret = NULL;
    int B = self->n, V = self->V, *ids = NULL, *syms = NULL;
    int64_t *rows = NULL;
    Py_ssize_t L = B ? tb.len / 8 / B : 0, n = B ? fb.len / 8 / B / V : 0;
    const int64_t *tok = tb.buf, *lens = lb.buf;
    if (B == 0 || tb.len != (Py_ssize_t)B * L * 8 || fb.len != (Py_ssize_t)B * n * V * 8
            || lb.len != (Py_ssize_t)B * 8 || ab.len != (Py_ssize_t)B * L * 24
            || mb.len != ab.len || start < 0 || start + n > L) {
        PyErr_SetString(PyExc_ValueError, "run: buffers of the wrong size");
        goto done;
    }
    for (Py_ssize_t i = 0; i < B * L; i++)
        if (tok[i] < 0 || tok[i] >= V) {
            PyErr_SetString(PyExc_ValueError, "token id out of range");
            goto done;
        }
    ids = PyMem_Malloc((size_t)B * sizeof(int));
    syms = PyMem_Malloc((size_t)B * sizeof(int));
    rows = PyMem_Malloc((size_t)B * V * sizeof(int64_t));
    if (!ids || !syms || !rows) {
        PyErr_NoMemory();
        goto done;
    }
    const int64_t *fr = fb.buf;
    int64_t *alone = ab.buf, *mixed = mb.buf;
    for (Py_ssize_t s = start; s < start + n; s++) {
        int act = 0;
        for (int b = 0; b < B; b++)
            if (s < lens[b]) {
                ids[act] = b;
                syms[act] = (int)tok[(size_t)b * L + s];
                memcpy(rows + (size_t)act * V, fr + ((size_t)b * n + (s - start)) * V,
                       (size_t)V * 8);
                symbol_stats(rows + (size_t)act * V, V, syms[act], alone + ((size_t)b * L + s) * 3);
                act++;
            }
        if (mix_tables(self->ms, rows, ids, act) < 0) {
            PyErr_NoMemory();
            goto done;
        }
        for (int r = 0; r < act; r++)
            symbol_stats(rows + (size_t)r * V, V, syms[r], mixed + ((size_t)ids[r] * L + s) * 3);
        if (mix_learn(self->ms, ids, syms, act) < 0) {
            PyErr_NoMemory();
            goto done;
        }
    }
    ret = Py_NewRef(Py_None);
done:
    PyMem_Free(ids);
    PyMem_Free(syms);
    PyMem_Free(rows);
    PyBuffer_Release(&fb);
    PyBuffer_Release(&tb);
    PyBuffer_Release(&lb);
    PyBuffer_Release(&ab);
    PyBuffer_Release(&mb);
    return ret;
}

static PyObject *core_range_decode(PyObject *mod, PyObject *args)
{
    /* range_decode(words: bytes, tables: int64 [n, V]) -> list of n symbols
     * (a test hook: the decoder against constriction's encoder) */
    Py_buffer wb, tb;
    int V;
    if (!PyArg_ParseTuple(args, "y*y*i", &wb, &tb, &V))
        return NULL;
    PyObject *out = NULL;
    if (V <= 0 || wb.len % 4 || tb.len % ((Py_ssize_t)V * 8)) {
        PyErr_SetString(PyExc_ValueError, "range_decode: buffers of the wrong size");
    } else {
        Py_ssize_t n = tb.len / V / 8;
        RangeDecoder rd;
        rd_init(&rd, wb.buf, (size_t)wb.len / 4);
        out = PyList_New(n);
        for (Py_ssize_t i = 0; out && i < n; i++) {
            int s = rd_decode(&rd, (const int64_t *)tb.buf + i * V, V);
            if (s < 0) {
                Py_CLEAR(out);
                PyErr_SetString(PyExc_ValueError, "invalid range-coder data");
                break;
            }
            PyList_SET_ITEM(out, i, PyLong_FromLong(s));
        }
    }
    PyBuffer_Release(&wb);
    PyBuffer_Release(&tb);
    return out;
}

static PyMethodDef Mixer_methods[] = {
    {"tables", (PyCFunction)Mixer_tables, METH_VARARGS, "Mix this step's tables in place."},
    {"learn", (PyCFunction)Mixer_learn, METH_VARARGS, "The tokens coded at this step."},
    {"run", (PyCFunction)Mixer_run, METH_VARARGS, "Symbol statistics of a chunk, both ways."},
    {NULL}
};

static PyTypeObject MixerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "llmfs.model._core.Mixer",
    .tp_basicsize = sizeof(Mixer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Mixer_init,
    .tp_dealloc = (destructor)Mixer_dealloc,
    .tp_methods = Mixer_methods,
};

static PyMethodDef mix_functions[] = {
    {"range_decode", core_range_decode, METH_VARARGS, "Decode symbols of full tables."},
    {NULL}
};

int mix_add_types(PyObject *module)
{
    if (PyType_Ready(&MixerType) < 0 || PyModule_AddFunctions(module, mix_functions) < 0)
        return -1;
    Py_INCREF(&MixerType);
    return PyModule_AddObject(module, "Mixer", (PyObject *)&MixerType);
}
