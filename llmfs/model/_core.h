/* Shared between the files of the native core (``_core.c``: the model and
 * the module; ``_mix.c``: the mixing and the range decoder). */
#ifndef LLMFS_CORE_H
#define LLMFS_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define FREQ_BITS 24                      /* the coder's tables sum to 2**24 */
#define MODEL_ALONE 2                     /* frame versions (codec/frame.py) */
#define MATCH 3
#define NGRAMS 4

/* The mixing state of one block's streams (codec/mixer.py's Mixer). */
typedef struct MixState MixState;

MixState *mix_new(int n_streams, int version, int vocab);
void mix_free(MixState *ms);
/* Mix in place the model tables freqs[rows][V] of the streams ids[rows]
 * (ascending; every stream still going); 0, or -1 when out of memory.
 * The same as mix_prepare and then mix_row for each row, which may run on
 * several threads (each row touches only its own records). */
int mix_tables(MixState *ms, int64_t *freqs, const int *ids, int rows);
int mix_prepare(MixState *ms, int rows);
void mix_row(MixState *ms, int64_t *table, int id, int row);
/* The tokens coded at this step, for the same ids as mix_tables; 0 or -1. */
int mix_learn(MixState *ms, const int *ids, const int *syms, int rows);

/* A range decoder reading what constriction's RangeEncoder (u32 words,
 * u64 state, 24-bit precision) wrote. */
typedef struct {
    const uint8_t *words;   /* little-endian u32 words */
    size_t n_words, pos;
    uint64_t lower, range, point;
} RangeDecoder;

void rd_init(RangeDecoder *rd, const uint8_t *words, size_t n_words);
/* The symbol of a table f[V] (entries coded as f + 1, summing to 2**24),
 * or -1 for data no encoder wrote. */
int rd_decode(RangeDecoder *rd, const int64_t *f, int V);

int mix_add_types(PyObject *module);

/* The helper threads of a step (``_team.c``): team_run calls fn(arg, i) once
 * for every i < n, on the calling thread and on the helpers, and returns when
 * all have finished; each call must touch only its own part of the data.
 * team_threads(k) asks for k threads in all (the caller and k - 1 helpers,
 * started on first use), team_threads(0) tells how many are asked for. */
typedef void (*team_fn)(void *arg, int chunk);
void team_run(team_fn fn, void *arg, int n);
int team_threads(int n);

/* The integers of the Python sequence *obj* (named *what* in errors) as a
 * PyMem array of *n*: each in [0, bound), strictly ascending if *ascending*;
 * else ValueError *bad* and NULL. */
int *int_list(PyObject *obj, const char *what, int bound, int ascending, const char *bad,
              int *n);

#endif
