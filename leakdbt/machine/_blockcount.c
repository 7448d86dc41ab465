/* Native instruction counter for leakdbt's Machine (--max-insns, --count-insns).
 *
 * A Unicorn UC_HOOK_BLOCK callback that adds each block's instruction count to a counter
 * and, once a limit is set, stops the engine before the first block that would carry the
 * count past it (Machine.run then lets the engine count the last instructions itself).
 * The callback only gets a block's (address, size in bytes), so a small open-addressing
 * table maps (address, size) to its instruction count; on a miss it calls back into Python
 * (a ctypes function pointer), once per distinct block, not once per execution.  Keying by
 * size as well as address keeps a block re-translated with different bytes (a patched
 * entry, self-modifying code) from reusing a stale count.  For a re-translation of the
 * same size, the engine's new-edge hook (bc_edge_hook) stores the new block's own count
 * as it is translated, and Python clears the table when mappings change or code is
 * invalidated.
 *
 * Loaded with ctypes, not imported: it needs neither Python.h nor Unicorn's headers.  The
 * engine functions it calls (uc_emu_stop) are handed over as pointers from the Python
 * binding's own libunicorn, so both sides use the one loaded copy.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int (*bc_emu_stop_fn)(void *uc);
/* The Python miss handler: the instruction count of the block (address, size); < 0 means
 * it failed (it has recorded why and stopped the engine). */
typedef int64_t (*bc_miss_fn)(uint64_t address, uint32_t size);

struct bc_entry {
    uint64_t address;
    uint32_t size; /* 0: empty slot (the engine never reports an empty block) */
    uint32_t count;
};

/* Shared with Python (leakdbt/machine/blockcount.py mirrors it field by field). */
struct bc_counter {
    uint64_t done;           /* instructions of the blocks counted so far */
    uint64_t limit;          /* stop before a block that would make done exceed it */
    uint64_t last_address;   /* the block counted last, for corrections after a fault */
    uint64_t misses;         /* calls to the miss handler (distinct blocks seen) */
    uint32_t last_size;
    uint32_t last_count;
    int32_t limit_reached;   /* set when this callback stopped the engine for the limit */
    int32_t final_step;      /* Machine.run's engine-counted last step: count, never stop */
    int32_t failed;          /* the miss handler failed */
    int32_t reserved;
    bc_emu_stop_fn emu_stop;
    bc_miss_fn miss;
    struct bc_entry *table;  /* owned by C: bc_clear / bc_release */
    uint64_t mask;           /* table size - 1 (a power of two), 0 before the first use */
    uint64_t used;
};

static uint64_t bc_hash(uint64_t address, uint32_t size)
{
    uint64_t h = address * 0x9E3779B97F4A7C15ull ^ ((uint64_t)size * 0xC2B2AE3D27D4EB4Full);
    return h ^ (h >> 29);
}

/* Double the table (or create it); 0 on allocation failure. */
static int bc_grow(struct bc_counter *c)
{
    uint64_t old_size = c->table ? c->mask + 1 : 0;
    uint64_t size = old_size ? old_size * 2 : 1024;
    struct bc_entry *table = calloc(size, sizeof *table);
    if (!table)
        return 0;
    for (uint64_t i = 0; i < old_size; i++) {
        struct bc_entry *e = &c->table[i];
        if (!e->size)
            continue;
        uint64_t j = bc_hash(e->address, e->size) & (size - 1);
        while (table[j].size)
            j = (j + 1) & (size - 1);
        table[j] = *e;
    }
    free(c->table);
    c->table = table;
    c->mask = size - 1;
    return 1;
}

/* Remember that block (address, size) holds count instructions. */
static void bc_store(struct bc_counter *c, uint64_t address, uint32_t size, uint32_t count)
{
    if ((!c->table || (c->used + 1) * 4 > (c->mask + 1) * 3) && !bc_grow(c))
        return; /* no memory for the table: the block is counted again next time */
    uint64_t i = bc_hash(address, size) & c->mask;
    while (c->table[i].size && !(c->table[i].size == size && c->table[i].address == address))
        i = (i + 1) & c->mask;
    if (!c->table[i].size)
        c->used++;
    c->table[i].address = address;
    c->table[i].size = size;
    c->table[i].count = count;
}

/* The instruction count of block (address, size); -1 when it cannot be had. */
static int64_t bc_lookup(struct bc_counter *c, uint64_t address, uint32_t size)
{
    if (c->table) {
        uint64_t i = bc_hash(address, size) & c->mask;
        for (;;) {
            struct bc_entry *e = &c->table[i];
            if (e->size == size && e->address == address)
                return e->count;
            if (!e->size)
                break;
            i = (i + 1) & c->mask;
        }
    }
    c->misses++;
    int64_t n = c->miss(address, size);
    if (n < 0 || n > UINT32_MAX)
        return -1;
    bc_store(c, address, size, (uint32_t)n); /* looks for the slot again: the handler may
                                                have cleared the table */
    return n;
}

/* The UC_HOOK_BLOCK callback (uc_cb_hookcode_t); user_data is the bc_counter. */
void bc_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    struct bc_counter *c = user_data;
    if (c->failed)
        return;
    int64_t n = bc_lookup(c, address, size);
    if (n < 0) {
        c->failed = 1;
        c->emu_stop(uc);
        return;
    }
    uint64_t done = c->done + (uint64_t)n;
    if ((done > c->limit || done < c->done) && !c->final_step) {
        c->limit_reached = 1;
        c->emu_stop(uc); /* from a block hook: the engine stops before the block runs */
        return;
    }
    c->done = done;
    c->last_address = address;
    c->last_size = size;
    c->last_count = (uint32_t)n;
}

/* The engine's uc_tb (unicorn.h): a translated block. */
struct bc_tb {
    uint64_t pc;
    uint16_t icount;
    uint16_t size;
};

/* The UC_HOOK_EDGE_GENERATED callback (uc_hook_edge_gen_t): the engine has translated the
 * block cur (reached from prev); remember its instruction count, replacing what an earlier
 * translation of the same (address, size) left. */
void bc_edge_hook(void *uc, struct bc_tb *cur, struct bc_tb *prev, void *user_data)
{
    (void)uc;
    (void)prev;
    if (cur && cur->size && cur->icount)
        bc_store(user_data, cur->pc, cur->size, cur->icount);
}

/* Forget every remembered block (code may have changed without changing a block's size). */
void bc_clear(struct bc_counter *c)
{
    if (c->table)
        memset(c->table, 0, (c->mask + 1) * sizeof *c->table);
    c->used = 0;
}

/* Free the table (the counter itself belongs to its Python owner). */
void bc_release(struct bc_counter *c)
{
    free(c->table);
    c->table = NULL;
    c->mask = 0;
    c->used = 0;
}

/* sizeof(struct bc_counter): Python checks that its mirror has the same layout. */
uint64_t bc_struct_size(void)
{
    return sizeof(struct bc_counter);
}
