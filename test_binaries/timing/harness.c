/* timing/harness.c: the timing build of a test program (test_binaries/Makefile, `make timing`)
 * is the program's own NAME.c, compiled exactly as in the other builds (so its contract's
 * offsets hold, and `leakdbt harden` can harden it), with its calls of the protected
 * functions timed by thunks (timing/timed_calls.awk), linked with this file.
 *
 * Without LEAKDBT_TIMING in the environment the program runs as usual.  With
 * LEAKDBT_TIMING=N:OUT[:SEED], a constructor takes over before main: it calls main N times
 * with argv[1] (the secret, hex digits) either as given (class 0, "fixed") or replaced by
 * random hex digits of the same length (class 1, "random"), the class drawn at random each
 * time (dudect's protocol; a decimal SEED, if given, seeds the drawer), with rdtsc around
 * each call (lfence on both sides), stdout going to /dev/null.  It writes to the file OUT:
 *
 *   u32 K; K NUL-terminated names (the protected functions);
 *   u64 FLOOR: median cycles of 1001 thunk calls of an empty function (the measurement's
 *       own cost, included in every per-function figure);
 *   N records { u8 class; u64 main_cycles; u64 cycles[K]; u64 calls[K] }
 *       (cycles[k]: the thunk-timed cycles of function k summed over its calls in that
 *       main call; calls[k]: how many there were),
 *
 * little-endian, packed, and exits 0.  Usage errors exit 2.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <x86intrin.h>

int main(int argc, char **argv);

/* Defined by the thunks of timing/timed_calls.awk: K, the names, and K + 1 slots (the last
 * one is the floor thunk's). */
extern const uint64_t __leakdbt_fn_count;
extern const char __leakdbt_fn_names[];
extern uint64_t __leakdbt_fn_cycles[], __leakdbt_fn_calls[];
void __leakdbt_timed_floor(void);

static uint64_t state = 0x9e3779b97f4a7c15u;

static uint64_t next(void)  /* xorshift64*: not a secret generator, a class/secret drawer */
{
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545f4914f6cdd1du;
}

static int by_value(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* The median cost of a thunk-timed call of an empty function. */
static uint64_t floor_cycles(void)
{
    enum { M = 1001 };
    static uint64_t t[M];
    uint64_t k = __leakdbt_fn_count;
    for (int i = 0; i < M; i++) {
        __leakdbt_fn_cycles[k] = 0;
        __leakdbt_timed_floor();
        t[i] = __leakdbt_fn_cycles[k];
    }
    qsort(t, M, sizeof t[0], by_value);
    return t[M / 2];
}

static inline uint64_t cycles(void)
{
    _mm_lfence();
    uint64_t t = __rdtsc();
    _mm_lfence();
    return t;
}

__attribute__((constructor)) static void timing(int argc, char **argv, char **envp)
{
    (void)envp;
    const char *spec = getenv("LEAKDBT_TIMING");
    if (!spec)
        return;
    char *end;
    unsigned long n = strtoul(spec, &end, 10);
    if (n == 0 || *end != ':' || argc < 2) {
        fputs("LEAKDBT_TIMING=N:OUT[:SEED], and a secret in argv[1]\n", stderr);
        _exit(2);
    }
    char *path = strdup(end + 1), *seed = strchr(path, ':');
    if (seed) {
        *seed++ = '\0';
        state = strtoull(seed, &end, 10) * 0x9e3779b97f4a7c15u + 0x632be59bd9b4e019u;
        if (*seed == '\0' || *end != '\0' || state == 0) {
            fputs("LEAKDBT_TIMING: SEED is a decimal number\n", stderr);
            _exit(2);
        }
    }
    FILE *out = fopen(path, "wb");
    int null = open("/dev/null", O_WRONLY);
    if (!out || null < 0) {
        perror("timing");
        _exit(2);
    }
    size_t len = strlen(argv[1]), k = __leakdbt_fn_count;
    size_t record = 1 + 8 + 16 * k;
    char *fixed = argv[1], *secret = malloc(len + 1);
    char **args = malloc((argc + 1) * sizeof *args);
    unsigned char *records = malloc(n * record);
    if (!secret || !args || !records)
        _exit(2);
    memcpy(args, argv, (argc + 1) * sizeof *args);
    uint64_t floor = floor_cycles();
    fflush(stdout);
    dup2(null, 1);
    for (unsigned long i = 0; i < n; i++) {
        /* Both classes are written to the same buffer, so that only the digits differ. */
        uint8_t cls = next() & 1;
        for (size_t j = 0; j < len; j++)
            secret[j] = cls ? "0123456789abcdef"[next() & 15] : fixed[j];
        secret[len] = '\0';
        args[1] = secret;
        memset(__leakdbt_fn_cycles, 0, k * sizeof *__leakdbt_fn_cycles);
        memset(__leakdbt_fn_calls, 0, k * sizeof *__leakdbt_fn_calls);
        uint64_t t0 = cycles();
        main(argc, args);
        uint64_t t = cycles() - t0;
        unsigned char *r = records + i * record;
        r[0] = cls;
        memcpy(r + 1, &t, 8);
        memcpy(r + 9, __leakdbt_fn_cycles, 8 * k);
        memcpy(r + 9 + 8 * k, __leakdbt_fn_calls, 8 * k);
    }
    fflush(stdout);
    uint32_t k32 = (uint32_t)k;
    fwrite(&k32, sizeof k32, 1, out);
    const char *name = __leakdbt_fn_names;
    for (size_t j = 0; j < k; j++) {
        fwrite(name, 1, strlen(name) + 1, out);
        name += strlen(name) + 1;
    }
    fwrite(&floor, sizeof floor, 1, out);
    fwrite(records, record, n, out);
    if (fclose(out) != 0) {
        perror("timing");
        _exit(2);
    }
    _exit(0);
}
