/* Native recording for leakdbt check's observers (leakdbt/leakage/observe.py).
 *
 * Two Unicorn hooks: a UC_HOOK_BLOCK callback (control flow, the scope's end, the
 * instruction and cost counts) and a UC_HOOK_MEM_READ|WRITE callback (memory access).  Each
 * keeps a running digest of what it observes and, for a full trace, appends the events to
 * growable arrays of 64-bit numbers that Python copies into its own arrays
 * (leakdbt.leakage.compact) when it reads the trace.  Events are recorded only while the
 * scope is active; the scope is entered from Python (a code hook at a scoped function's
 * entry sets `active` and `entry_rsp`) and left here, as soon as a block starts with the
 * stack pointer above the entry's (the scoped call returned): then Python's `leave` is
 * called, which updates the Python scope and its listeners.
 *
 * Per-block figures (instructions, cost, address of the last instruction) come from Python
 * once per block address (the `miss` handler, the same per-address cache the Python
 * observer keeps), then from an open-addressing table.
 *
 * The digest step is mix(d, x) = ((d ^ x) * K) ^ (... >> 32) mod 2^64, the same in the
 * Python fallback (observe.mix), so both record identical traces and digests.
 *
 * Loaded with ctypes, like leakdbt/machine/_blockcount.c: neither Python.h nor Unicorn's
 * headers; the engine functions it calls are handed over as pointers.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int (*tr_emu_stop_fn)(void *uc);
typedef int (*tr_reg_read_fn)(void *uc, int regid, void *value);
/* Python: the block's (instructions, cost, last instruction) into out[3]; < 0: failed. */
typedef int64_t (*tr_miss_fn)(uint64_t address, uint32_t size, uint64_t *out);
/* Python: the scoped call may have returned (checks and tells the scope's listeners). */
typedef void (*tr_leave_fn)(void);
/* Python: the arrays are full; it copies and stores them, then calls tr_forget. */
typedef void (*tr_flush_fn)(void);

struct tr_vec {
    uint64_t *data;
    uint64_t len;
    uint64_t cap;
};

struct tr_entry {
    uint64_t address;
    uint64_t instructions; /* 0 with address 0: empty slot */
    uint64_t cost;
    uint64_t last;
    uint64_t used;
};

/* Shared with Python (leakdbt/leakage/native.py mirrors it field by field). */
struct tr_state {
    int32_t active;       /* inside the scope now */
    int32_t full;         /* keep the events, not only digests */
    int32_t failed;       /* a handler failed or memory ran out: the engine was stopped */
    int32_t out_of_memory;
    uint64_t entry_rsp;   /* the scope ends when a block starts with RSP above it */
    int32_t everywhere;   /* the whole run is the scope: never ends */
    int32_t rsp_id;       /* the engine's register numbers */
    int32_t rip_id;
    int32_t write_type;   /* UC_MEM_WRITE */
    uint64_t unit;        /* memory unit in bytes (64: cache line) */
    uint64_t flow_digest;
    uint64_t memory_digest;
    uint64_t instructions; /* in scope */
    uint64_t cost;
    uint64_t cur_address; /* the block running now */
    uint64_t cur_size;
    tr_emu_stop_fn emu_stop;
    tr_reg_read_fn reg_read;
    tr_miss_fn miss;
    tr_leave_fn leave;
    struct tr_entry *table;
    uint64_t mask;
    uint64_t used;
    /* full traces: blocks (start, last, rsp) and accesses (block, pc, unit, write) */
    struct tr_vec starts, lasts, rsps;
    struct tr_vec mblocks, pcs, units, writes;
    /* bounded memory (leakdbt.leakage.chunks.TraceWriter): after a block, when the arrays
     * hold `flush_at` blocks or `flush_events` accesses, `flush` is called (0: never) */
    uint64_t base;        /* blocks recorded and forgotten before starts[0] */
    uint64_t flush_at;
    uint64_t flush_events;
    tr_flush_fn flush;
};

#define TR_K 0x9E3779B97F4A7C15ull

static inline uint64_t tr_mix(uint64_t d, uint64_t x)
{
    d = (d ^ x) * TR_K;
    return d ^ (d >> 32);
}

static int tr_push(struct tr_vec *v, uint64_t x)
{
    if (v->len == v->cap) {
        uint64_t cap = v->cap ? v->cap * 2 : 4096;
        uint64_t *data = realloc(v->data, cap * sizeof *data);
        if (!data)
            return 0;
        v->data = data;
        v->cap = cap;
    }
    v->data[v->len++] = x;
    return 1;
}

static void tr_fail(struct tr_state *s, void *uc, int out_of_memory)
{
    s->failed = 1;
    s->out_of_memory = out_of_memory;
    s->emu_stop(uc);
}

static uint64_t tr_hash(uint64_t address)
{
    uint64_t h = address * TR_K;
    return h ^ (h >> 29);
}

static int tr_grow(struct tr_state *s)
{
    uint64_t old_size = s->table ? s->mask + 1 : 0;
    uint64_t size = old_size ? old_size * 2 : 1024;
    struct tr_entry *table = calloc(size, sizeof *table);
    if (!table)
        return 0;
    for (uint64_t i = 0; i < old_size; i++) {
        struct tr_entry *e = &s->table[i];
        if (!e->used)
            continue;
        uint64_t j = tr_hash(e->address) & (size - 1);
        while (table[j].used)
            j = (j + 1) & (size - 1);
        table[j] = *e;
    }
    free(s->table);
    s->table = table;
    s->mask = size - 1;
    return 1;
}

/* The table's entry for the block at address (filled by Python on a miss); NULL: failed. */
static struct tr_entry *tr_lookup(struct tr_state *s, void *uc, uint64_t address,
                                  uint32_t size)
{
    if ((!s->table || (s->used + 1) * 4 > (s->mask + 1) * 3) && !tr_grow(s)) {
        tr_fail(s, uc, 1);
        return NULL;
    }
    uint64_t i = tr_hash(address) & s->mask;
    while (s->table[i].used) {
        if (s->table[i].address == address)
            return &s->table[i];
        i = (i + 1) & s->mask;
    }
    uint64_t out[3];
    if (s->miss(address, size, out) < 0) {
        tr_fail(s, uc, 0);
        return NULL;
    }
    struct tr_entry *e = &s->table[i];
    e->address = address;
    e->instructions = out[0];
    e->cost = out[1];
    e->last = out[2];
    e->used = 1;
    s->used++;
    return e;
}

/* The block at (address, size) counts: its figures, digest and (full) event. */
static void tr_record(struct tr_state *s, void *uc, uint64_t address, uint32_t size)
{
    struct tr_entry *e = tr_lookup(s, uc, address, size);
    if (!e)
        return;
    s->instructions += e->instructions;
    s->cost += e->cost;
    s->flow_digest = tr_mix(s->flow_digest, address);
    if (s->full) {
        uint64_t rsp = 0;
        s->reg_read(uc, s->rsp_id, &rsp);
        if (!tr_push(&s->starts, address) || !tr_push(&s->lasts, e->last)
            || !tr_push(&s->rsps, rsp)) {
            tr_fail(s, uc, 1);
            return;
        }
        if (s->flush_at && s->flush
            && (s->starts.len >= s->flush_at || s->mblocks.len >= s->flush_events))
            s->flush();
    }
}

/* The UC_HOOK_BLOCK callback; user_data is the tr_state. */
void tr_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    struct tr_state *s = user_data;
    if (s->failed)
        return;
    if (s->active && !s->everywhere) {
        uint64_t rsp = 0;
        s->reg_read(uc, s->rsp_id, &rsp);
        if (rsp > s->entry_rsp)
            s->leave(); /* Python: clears `active` through the scope's listeners */
    }
    s->cur_address = address;
    s->cur_size = size;
    if (s->active)
        tr_record(s, uc, address, size);
}

/* The scope was entered at `address` (Python, from the entry's code hook, after the block
 * hook of the block holding it): count that block now. */
void tr_enter(struct tr_state *s, void *uc, uint64_t address, uint64_t entry_rsp)
{
    s->active = 1;
    s->entry_rsp = entry_rsp;
    if (s->cur_address == address && !s->failed)
        tr_record(s, uc, s->cur_address, (uint32_t)s->cur_size);
}

/* The UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE callback (uc_cb_hookmem_t). */
void tr_memory_hook(void *uc, int type, uint64_t address, int size, int64_t value,
                    void *user_data)
{
    (void)value;
    struct tr_state *s = user_data;
    if (!s->active || s->failed)
        return;
    uint64_t w = type == s->write_type;
    uint64_t first = address / s->unit;
    uint64_t last = (address + (uint64_t)(size > 0 ? size - 1 : 0)) / s->unit;
    uint64_t pc = 0;
    if (s->full)
        s->reg_read(uc, s->rip_id, &pc);
    for (uint64_t u = first; u <= last; u++) {
        s->memory_digest = tr_mix(s->memory_digest, u * 2 + w);
        if (s->full) {
            if (!tr_push(&s->mblocks, s->base + s->starts.len - 1) || !tr_push(&s->pcs, pc)
                || !tr_push(&s->units, u) || !tr_push(&s->writes, w)) {
                tr_fail(s, uc, 1);
                return;
            }
        }
        if (u == UINT64_MAX)
            break;
    }
}

/* Free the arrays and the table (the state itself belongs to its Python owner); the hooks
 * record nothing more. */
void tr_release(struct tr_state *s)
{
    s->failed = 1;
    s->active = 0;
    struct tr_vec *vecs[] = {&s->starts, &s->lasts, &s->rsps, &s->mblocks, &s->pcs,
                             &s->units, &s->writes};
    for (size_t i = 0; i < sizeof vecs / sizeof *vecs; i++) {
        free(vecs[i]->data);
        vecs[i]->data = NULL;
        vecs[i]->len = vecs[i]->cap = 0;
    }
    free(s->table);
    s->table = NULL;
    s->mask = s->used = 0;
}

/* Python copied the arrays (and stored what it needs): empty them, keeping their room; the
 * blocks recorded from now on are numbered after the forgotten ones. */
void tr_forget(struct tr_state *s)
{
    s->base += s->starts.len;
    struct tr_vec *vecs[] = {&s->starts, &s->lasts, &s->rsps, &s->mblocks, &s->pcs,
                             &s->units, &s->writes};
    for (size_t i = 0; i < sizeof vecs / sizeof *vecs; i++)
        vecs[i]->len = 0;
}

/* tr_chunk_cuts on a trace that comes in pieces: `starts`, `rsps` are blocks state[0] ..
 * state[0]+n-1, and state holds (the next block's number, the last cut, the last
 * candidate, whether there was one, the stack pointer of the block before), all zero at
 * the first block, updated here.  Writes the cuts among these blocks, by number. */
uint64_t tr_chunk_cuts_from(const uint64_t *starts, const uint64_t *rsps, uint64_t n,
                            uint64_t min, uint64_t max, uint64_t mask, uint64_t *state,
                            uint64_t *out)
{
    uint64_t k0 = state[0], last = state[1], candidate = state[2], seen = state[3];
    uint64_t prev = state[4], count = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t k = k0 + i;
        int is = k > 0 && (rsps[i] > prev || (tr_hash(starts[i]) & mask) == 0);
        if (k == 0 || k - last >= max || (is && (!seen || k - candidate >= min))) {
            out[count++] = k;
            last = k;
        }
        if (is) {
            candidate = k;
            seen = 1;
        }
        prev = rsps[i];
    }
    state[0] = k0 + n;
    state[1] = last;
    state[2] = candidate;
    state[3] = seen;
    state[4] = prev;
    return count;
}

/* Chunks of a full trace (leakdbt/leakage/chunks.py): where each chunk of the block trace
 * (`starts`, `rsps`: each block's address and stack pointer, n blocks) starts.  A block is
 * a candidate when it starts with a higher stack pointer than the block before (a return,
 * or a frame released) or its address hashes to 0 under `mask`; a chunk starts at a
 * candidate that comes `min` or more blocks after the candidate before it, and after `max`
 * blocks anyway.  Whether a block starts a chunk (but for `max`) depends only on the blocks
 * before it, not on where the last chunk started: two runs that meet again after they
 * parted cut at the same blocks again `min` blocks later, and the iterations of a loop
 * that calls a function cut alike (content-defined chunking).  Writes the first block of
 * each chunk to `out` (at most n entries); returns how many. */
uint64_t tr_chunk_cuts(const uint64_t *starts, const uint64_t *rsps, uint64_t n,
                       uint64_t min, uint64_t max, uint64_t mask, uint64_t *out)
{
    uint64_t state[5] = {0, 0, 0, 0, 0};
    return tr_chunk_cuts_from(starts, rsps, n, min, max, mask, state, out);
}

/* How many access events each of the blocks first..first+n-1 has (counts[0] for block
 * `first`), as tr_block_counts; events of other blocks are not counted. */
uint64_t tr_block_counts_from(const uint64_t *blocks, uint64_t m, uint64_t first, uint64_t n,
                              uint64_t *counts)
{
    uint64_t before = 0;
    memset(counts, 0, n * sizeof *counts);
    for (uint64_t e = 0; e < m; e++) {
        if (blocks[e] == UINT64_MAX)
            before++;
        else if (blocks[e] >= first && blocks[e] - first < n)
            counts[blocks[e] - first]++;
    }
    return before;
}

/* How many access events each of the blocks 0..n-1 has (`blocks`: each event's block, in
 * block order; UINT64_MAX, i.e. -1: before any block).  Returns the events before any
 * block; events of blocks >= n are not counted. */
uint64_t tr_block_counts(const uint64_t *blocks, uint64_t m, uint64_t n, uint64_t *counts)
{
    return tr_block_counts_from(blocks, m, 0, n, counts);
}

/* sizeof(struct tr_state): Python checks that its mirror has the same layout. */
uint64_t tr_struct_size(void)
{
    return sizeof(struct tr_state);
}
