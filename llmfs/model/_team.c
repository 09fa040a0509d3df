/* A team of helper threads for one step of the native core.
 *
 * A decode step of one block is ~14 streams whose forward passes are
 * independent (each reads only its own key/value ring and the shared
 * weights), so a step splits into chunks of streams that any thread may run;
 * the mixing and the range decoder stay on the calling thread.  Every chunk
 * computes exactly what it would on one thread: the thread count changes the
 * time, never a bit.
 *
 * Chunks are claimed from a counter, and the caller claims too.  A helper
 * that the kernel has not scheduled yet (the machine busy with other
 * processes) then costs nothing: the caller runs the chunks itself, and a
 * late helper finds nothing left to claim.  Claims carry the job's number, so
 * a helper waking after its job ended can never take a chunk of the next.
 *
 * One caller uses the team at a time; a concurrent caller (another Python
 * thread in the same process) runs its chunks alone.  After a fork the child
 * has no helpers (threads do not survive fork): its locks are made anew and
 * the team is started again on first use. */
#include "_core.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#define MAX_HELPERS 63

static struct {
    pthread_mutex_t mu;          /* guards job, fn, arg, n and helpers */
    pthread_cond_t go, done;
    pthread_mutex_t use;         /* held by the one caller using the helpers */
    pid_t pid;                   /* the process the helpers run in */
    int helpers, wanted;         /* running, asked for (team_threads - 1) */
    pthread_t th[MAX_HELPERS];
    uint32_t job;                /* number of the job posted last */
    _Atomic uint32_t posted;     /* the same, for helpers watching without the lock */
    team_fn fn;
    void *arg;
    int n;
    _Atomic uint64_t claim;      /* job << 32 | next chunk */
    _Atomic int left;            /* chunks of the job not finished */
} team = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER,
          PTHREAD_MUTEX_INITIALIZER};

/* Claims and runs chunks of job *job* until none is left; the last chunk to
 * finish wakes the caller. */
static void run_chunks(uint32_t job, team_fn fn, void *arg, int n)
{
    for (;;) {
        uint64_t c = atomic_load(&team.claim);
        if ((uint32_t)(c >> 32) != job || (int)(uint32_t)c >= n)
            return;
        if (!atomic_compare_exchange_weak(&team.claim, &c, c + 1))
            continue;
        fn(arg, (int)(uint32_t)c);
        if (atomic_fetch_sub(&team.left, 1) == 1) {
            pthread_mutex_lock(&team.mu);
            pthread_cond_broadcast(&team.done);
            pthread_mutex_unlock(&team.mu);
        }
    }
}

/* Between two steps of a decode the caller works alone for a short while
 * (range decoder, learning); sleeping on a condition variable and waking
 * again costs tens of microseconds each way in a virtual machine, a tenth of
 * a step.  So the helpers, and the caller waiting for the last chunk, first
 * watch for a while (about SPIN_NS) before they sleep. */
#define SPIN_NS 200000

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static inline void relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Watches *flag until it differs from *value* or SPIN_NS pass. */
static void spin_until_changed(_Atomic uint32_t *flag, uint32_t value)
{
    int64_t end = now_ns() + SPIN_NS;
    for (int i = 0; atomic_load_explicit(flag, memory_order_acquire) == value; i++) {
        relax();
        if ((i & 255) == 255 && now_ns() > end)
            return;
    }
}

static void *helper(void *unused)
{
    uint32_t seen = 0;
    pthread_mutex_lock(&team.mu);
    seen = team.job;
    for (;;) {
        if (team.job == seen && team.helpers > 0) {
            pthread_mutex_unlock(&team.mu);
            spin_until_changed(&team.posted, seen);
            pthread_mutex_lock(&team.mu);
        }
        while (team.job == seen && team.helpers > 0)
            pthread_cond_wait(&team.go, &team.mu);
        if (team.helpers == 0)       /* the team is being resized */
            break;
        seen = team.job;
        team_fn fn = team.fn;
        void *arg = team.arg;
        int n = team.n;
        pthread_mutex_unlock(&team.mu);
        run_chunks(seen, fn, arg, n);
        pthread_mutex_lock(&team.mu);
    }
    pthread_mutex_unlock(&team.mu);
    return NULL;
}

static void stop_helpers(void)
{
    /* caller holds team.use */
    pthread_mutex_lock(&team.mu);
    int h = team.helpers;
    team.helpers = 0;
    pthread_cond_broadcast(&team.go);
    pthread_mutex_unlock(&team.mu);
    for (int i = 0; i < h; i++)
        pthread_join(team.th[i], NULL);
}

static void after_fork_child(void)
{
    /* only the forking thread lives on: fresh locks, no helpers */
    pthread_mutex_init(&team.mu, NULL);
    pthread_mutex_init(&team.use, NULL);
    pthread_cond_init(&team.go, NULL);
    pthread_cond_init(&team.done, NULL);
    team.helpers = 0;
    team.pid = 0;
}

static void watch_forks(void)
{
    pthread_atfork(NULL, NULL, after_fork_child);
}

int team_threads(int n)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    if (n < 1)
        return team.wanted + 1;
    pthread_once(&once, watch_forks);
    int want = n - 1 > MAX_HELPERS ? MAX_HELPERS : n - 1;
    pthread_mutex_lock(&team.use);
    if (want != team.wanted) {       /* the model workers set it per job: mostly the same */
        if (team.pid == getpid())
            stop_helpers();
        team.wanted = want;
        team.pid = 0;                /* started on first use */
    }
    pthread_mutex_unlock(&team.use);
    return want + 1;
}

static int start_helpers(void)
{
    /* caller holds team.use; the helpers this process has, or 0 */
    if (team.pid == getpid())
        return team.helpers;
    team.helpers = 0;                /* a forked child: the parent's helpers are not here */
    team.pid = getpid();
    pthread_mutex_lock(&team.mu);
    for (int i = 0; i < team.wanted; i++) {
        team.helpers = i + 1;        /* helpers wait while helpers > 0 */
        if (pthread_create(&team.th[i], NULL, helper, NULL) != 0) {
            team.helpers = i;
            break;
        }
    }
    pthread_mutex_unlock(&team.mu);
    return team.helpers;
}

void team_run(team_fn fn, void *arg, int n)
{
    int alone = n <= 1 || team.wanted == 0 || pthread_mutex_trylock(&team.use) != 0;
    if (!alone && start_helpers() == 0) {
        pthread_mutex_unlock(&team.use);
        alone = 1;
    }
    if (alone) {
        for (int i = 0; i < n; i++)
            fn(arg, i);
        return;
    }
    pthread_mutex_lock(&team.mu);
    uint32_t job = ++team.job;
    team.fn = fn;
    team.arg = arg;
    team.n = n;
    atomic_store(&team.left, n);
    atomic_store(&team.claim, (uint64_t)job << 32);
    atomic_store_explicit(&team.posted, job, memory_order_release);
    pthread_cond_broadcast(&team.go);
    pthread_mutex_unlock(&team.mu);
    run_chunks(job, fn, arg, n);
    int64_t end = now_ns() + SPIN_NS;
    for (int i = 0; atomic_load(&team.left) > 0; i++) {   /* watch, then sleep */
        relax();
        if ((i & 255) == 255 && now_ns() > end)
            break;
    }
    pthread_mutex_lock(&team.mu);
    while (atomic_load(&team.left) > 0)
        pthread_cond_wait(&team.done, &team.mu);
    pthread_mutex_unlock(&team.mu);
    pthread_mutex_unlock(&team.use);
}
