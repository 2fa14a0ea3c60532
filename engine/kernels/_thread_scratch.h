/* Per-thread scratch that outlives the call, for the kernels' OpenMP threads.
 *
 * glibc gives large freed blocks back to the system (mmap'ed ones at once, and the
 * threads' arenas trim their tops), so a workspace malloc'ed and freed in every call is
 * page-faulted in, and zeroed by the kernel, again in every call: Winograd F(4x4) on 16
 * channels at 56x56, batch 8, took 2.67 ms so and 0.60 ms with the blocks kept (Zen 4,
 * 2 threads; 0.62 with glibc's mmap and trim thresholds raised instead). The Python
 * side's equivalent is registry._Scratch.
 *
 *   void* p = ts_get(slot, bytes)   this thread's block number slot (0 <= slot <
 *                                   TS_SLOTS), at least bytes long, 64-byte aligned; its
 *                                   contents are whatever an earlier call left there;
 *                                   NULL when it cannot be allocated
 *
 * A block grows to the largest size asked of it and is freed when its thread exits (a
 * pthread key's destructor). Each extension module that includes this has its own key
 * and blocks; within one, a call uses each slot for one buffer (the kernels do not
 * re-enter themselves on a thread).
 */
#ifndef CONVTUNE_THREAD_SCRATCH_H
#define CONVTUNE_THREAD_SCRATCH_H
#include <pthread.h>
#include <stdlib.h>

#define TS_SLOTS 4

typedef struct {
    void* p[TS_SLOTS];
    size_t n[TS_SLOTS];
} ts_blocks_t;

static pthread_key_t ts_key;
static pthread_once_t ts_once = PTHREAD_ONCE_INIT;
static int ts_key_made = 0;

static void ts_free_blocks(void* v) {
    ts_blocks_t* b = (ts_blocks_t*)v;
    for (int i = 0; i < TS_SLOTS; i++) free(b->p[i]);
    free(b);
}

static void ts_make_key(void) { ts_key_made = pthread_key_create(&ts_key, ts_free_blocks) == 0; }

static inline void* ts_get(int slot, size_t bytes) {
    if (slot < 0 || slot >= TS_SLOTS) return NULL;
    pthread_once(&ts_once, ts_make_key);
    if (!ts_key_made) return NULL;
    ts_blocks_t* b = (ts_blocks_t*)pthread_getspecific(ts_key);
    if (b == NULL) {
        b = (ts_blocks_t*)calloc(1, sizeof(ts_blocks_t));
        if (b == NULL) return NULL;
        if (pthread_setspecific(ts_key, b) != 0) {
            free(b);
            return NULL;
        }
    }
    if (b->p[slot] == NULL || b->n[slot] < bytes) {
        void* p = NULL;
        free(b->p[slot]);
        b->p[slot] = NULL;
        b->n[slot] = 0;
        if (posix_memalign(&p, 64, bytes > 0 ? bytes : 64) != 0) return NULL;
        b->p[slot] = p;
        b->n[slot] = bytes;
    }
    return b->p[slot];
}
#endif
