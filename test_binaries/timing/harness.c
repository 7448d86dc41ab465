/* timing/harness.c: the timing build of a test program (test_binaries/Makefile, `make timing`)
 * is the program's own NAME.c, compiled exactly as in the other builds (so its contract's
 * offsets hold, and `leakdbt harden` can harden it), linked with this file.
 *
 * Without LEAKDBT_TIMING in the environment the program runs as usual.  With
 * LEAKDBT_TIMING=N:OUT, a constructor takes over before main: it calls main N times with
 * argv[1] (the secret, hex digits) either as given (class 0, "fixed") or replaced by random
 * hex digits of the same length (class 1, "random"), the class drawn at random each time
 * (dudect's protocol), with rdtsc around each call (lfence on both sides), stdout going to
 * /dev/null.  It writes N records {u8 class; u64 cycles} (little-endian, packed) to the file
 * OUT and exits 0.  Usage errors exit 2.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <x86intrin.h>

int main(int argc, char **argv);

static uint64_t state = 0x9e3779b97f4a7c15u;

static uint64_t next(void)  /* xorshift64*: not a secret generator, a class/secret drawer */
{
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545f4914f6cdd1du;
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
        fputs("LEAKDBT_TIMING=N:OUT, and a secret in argv[1]\n", stderr);
        _exit(2);
    }
    FILE *out = fopen(end + 1, "wb");
    int null = open("/dev/null", O_WRONLY);
    if (!out || null < 0) {
        perror("timing");
        _exit(2);
    }
    size_t len = strlen(argv[1]);
    char *fixed = argv[1], *secret = malloc(len + 1);
    char **args = malloc((argc + 1) * sizeof *args);
    uint8_t *classes = malloc(n);
    uint64_t *times = malloc(n * sizeof *times);
    if (!secret || !args || !classes || !times)
        _exit(2);
    memcpy(args, argv, (argc + 1) * sizeof *args);
    fflush(stdout);
    dup2(null, 1);
    for (unsigned long i = 0; i < n; i++) {
        /* Both classes are written to the same buffer, so that only the digits differ. */
        classes[i] = next() & 1;
        for (size_t j = 0; j < len; j++)
            secret[j] = classes[i] ? "0123456789abcdef"[next() & 15] : fixed[j];
        secret[len] = '\0';
        args[1] = secret;
        uint64_t t0 = cycles();
        main(argc, args);
        times[i] = cycles() - t0;
    }
    fflush(stdout);
    for (unsigned long i = 0; i < n; i++) {
        fputc(classes[i], out);
        fwrite(&times[i], sizeof times[i], 1, out);
    }
    fclose(out);
    _exit(0);
}
