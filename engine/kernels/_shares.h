/* Work shares with stealing: n items cut into one contiguous share per thread, each
 * thread taking chunks from the front of its own share and, once that is empty,
 * stealing the back half of the fullest other share (which it then works through and
 * can lose halves of in turn).
 *
 *   ws_share_t sh[nt]; ws_init(sh, nt, n)        before the parallel region
 *   while (ws_next(sh, nt, tid, want, &lo, &hi)) run items lo .. hi-1  (at most want)
 *   ws_share_end(sh, tid)                       where tid's share ends for now
 *
 * A thread's items stay consecutive, as a static split's are (its gathered panels,
 * padded planes and the next item's prefetch stay its own), while a thread that falls
 * behind (these hosts are shared: a core can run at half speed for a while) is
 * relieved by the others instead of holding up the whole call at the closing barrier.
 * Which thread computes an item changes; what the item computes does not, so results
 * stay bitwise independent of the thread count.
 *
 * A share is [lo, hi) packed into one 64-bit word (lo low, hi high), updated by
 * compare-and-swap: the owner moves lo up, a thief moves hi down, never both at once.
 * n must be below 2^32 (ws_fits). Each share on its own cache line: the owner's
 * compare-and-swap per chunk does not contend with the other threads'.
 */
#ifndef CONVTUNE_SHARES_H
#define CONVTUNE_SHARES_H
#include <stdint.h>

typedef struct {
    uint64_t range;
    char pad[64 - sizeof(uint64_t)];
} __attribute__((aligned(64))) ws_share_t;

static inline uint64_t ws_pack(uint64_t lo, uint64_t hi) { return lo | (hi << 32); }
static inline int64_t ws_lo(uint64_t r) { return (int64_t)(r & 0xFFFFFFFFu); }
static inline int64_t ws_hi(uint64_t r) { return (int64_t)(r >> 32); }

static inline int ws_fits(int64_t n) { return n >= 0 && n < ((int64_t)1 << 32); }

/* thread t's share: items n*t/nt .. n*(t+1)/nt (a static split's) */
static inline void ws_init(ws_share_t* sh, int nt, int64_t n) {
    for (int t = 0; t < nt; t++)
        __atomic_store_n(&sh[t].range, ws_pack((uint64_t)(n * t / nt), (uint64_t)(n * (t + 1) / nt)),
                         __ATOMIC_RELAXED);
}

/* The next chunk for thread tid: up to want (>= 1) items [*lo, *hi) from the front of
   its share, after stealing the back half of the fullest other share when its own is
   empty. 0 when every share is empty: the thread is done. */
static inline int ws_next(ws_share_t* sh, int nt, int tid, int64_t want, int64_t* lo, int64_t* hi) {
    for (;;) {
        uint64_t r = __atomic_load_n(&sh[tid].range, __ATOMIC_ACQUIRE);
        while (ws_lo(r) < ws_hi(r)) {
            const int64_t a = ws_lo(r), b = ws_hi(r) - a < want ? ws_hi(r) : a + want;
            if (__atomic_compare_exchange_n(&sh[tid].range, &r, ws_pack((uint64_t)b, (uint64_t)ws_hi(r)),
                                            0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                *lo = a;
                *hi = b;
                return 1;
            }
        }
        /* own share empty: the fullest other one, if it has two items or more */
        int victim = -1;
        int64_t most = 1;
        for (int t = 0; t < nt; t++) {
            if (t == tid) continue;
            const uint64_t v = __atomic_load_n(&sh[t].range, __ATOMIC_RELAXED);
            if (ws_hi(v) - ws_lo(v) > most) { most = ws_hi(v) - ws_lo(v); victim = t; }
        }
        if (victim < 0) return 0;
        uint64_t v = __atomic_load_n(&sh[victim].range, __ATOMIC_ACQUIRE);
        const int64_t vl = ws_lo(v), vh = ws_hi(v);
        if (vh - vl < 2) continue;                    /* taken meanwhile: look again */
        const int64_t mid = vh - (vh - vl) / 2;
        if (__atomic_compare_exchange_n(&sh[victim].range, &v, ws_pack((uint64_t)vl, (uint64_t)mid),
                                        0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            /* nobody steals from an empty share, so only this thread writes its own now */
            __atomic_store_n(&sh[tid].range, ws_pack((uint64_t)mid, (uint64_t)vh), __ATOMIC_RELEASE);
    }
}

/* Where thread tid's share ends now (a thief may lower it at any time): how far its
   next chunks may reach, for work that pays to do for several at once. */
static inline int64_t ws_share_end(ws_share_t* sh, int tid) {
    return ws_hi(__atomic_load_n(&sh[tid].range, __ATOMIC_ACQUIRE));
}

#endif
