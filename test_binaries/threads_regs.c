/* threads_regs: two threads hold a value in the same register (r12) across many scheduler
 * quanta, then branch on it: one holds a secret, the other public numbers.  With "inline"
 * main makes the same calls one after the other, so that `leakdbt analyze` can be compared
 * between the threaded and the single-threaded program (register taint is per thread), and
 * the two functions are regions an adaptive run switches while threads are parked in them.
 *
 * Usage: threads_regs KEY [thread|inline] [ROUNDS]
 *   KEY     the secret: exactly 16 hexadecimal digits (8 bytes).
 *   thread  (the default) or inline: the same length, so that both runs lay out their
 *           arguments alike (string functions then read the same bytes around the key).
 *   ROUNDS  calls of each function (default 4).
 *   Prints the public thread's and the secret thread's results ("public: <hex>",
 *   "secret: <hex>"); exit 0.  A malformed argument prints a usage line on stderr and
 *   exits 2.
 *
 * The mode is read byte by byte (is_word), not with strcmp: glibc's SSE4.2 strcmp loads the
 * aligned 16 bytes around argv[2]'s first byte when argv[2] lies in the last 16 bytes of a
 * 64-byte block, and those include the end of the key just below it on the stack.  Taint
 * is byte-granular, so the comparison's result then carries the key's taint, and which
 * branches that reaches depends on the word compared ("thread" is compared once more than
 * "inline") and on where argv lies (the length of the binary's path): the two modes'
 * findings would differ for reasons that have nothing to do with threads.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "secret_io.h"

static uint8_t key[8];
static long rounds = 4;

/* v in r12 through a loop of ~2000 instructions (two quanta of LEAKDBT_QUANTUM=1000), then
 * a branch on its low bit.  Two copies, so that a finding names the one that leaks. */
#define HOLD(name)                                                                      \
    __attribute__((noipa)) uint64_t name(uint64_t v, uint64_t seed)                     \
    {                                                                                   \
        register uint64_t r asm("r12") = v;                                             \
        uint64_t acc = seed;                                                            \
        asm volatile("" : "+r"(r));                                                     \
        for (int i = 0; i < 400; i++) {                                                 \
            acc = acc * 6364136223846793005u + 1442695040888963407u;                    \
            asm volatile("" : "+r"(acc) : "r"(r));                                      \
        }                                                                               \
        asm volatile("test $1, %%r12\n\tjz 1f\n\txor $0x5555, %0\n1:"                   \
                     : "+r"(acc) : "r"(r) : "cc");                                      \
        return acc;                                                                     \
    }

HOLD(hold_secret)
HOLD(hold_public)

static void *secret_thread(void *arg)
{
    (void)arg;
    uint64_t s;
    memcpy(&s, key, 8);
    uint64_t acc = 0;
    for (long i = 0; i < rounds; i++)
        acc += hold_secret(s, (uint64_t)i);
    return (void *)(uintptr_t)acc;
}

static void *public_thread(void *arg)
{
    (void)arg;
    uint64_t acc = 0;
    for (long i = 0; i < rounds; i++)
        acc += hold_public((uint64_t)i * 2 + 1, (uint64_t)i);  /* odd: the branch is taken */
    return (void *)(uintptr_t)acc;
}

/* Is arg exactly name?  Reads no byte outside the two strings (see the top). */
static int is_word(const char *arg, const char *name)
{
    while (*arg && *arg == *name) {
        arg++;
        name++;
    }
    return *arg == *name;
}

int main(int argc, char **argv)
{
    int inl = argc > 2 && is_word(argv[2], "inline");
    if (argc < 2 || argc > 4 || parse_hex(argv[1], key, 8) != 0 ||
        (argc > 2 && !inl && !is_word(argv[2], "thread")) ||
        (argc > 3 && (rounds = atol(argv[3])) <= 0)) {
        fputs("usage: threads_regs KEY(16 hex digits) [thread|inline] [ROUNDS]\n", stderr);
        return 2;
    }
    void *pub, *sec;
    if (inl) {
        sec = secret_thread(NULL);
        pub = public_thread(NULL);
    } else {
        pthread_t p, s;
        pthread_create(&p, NULL, public_thread, NULL);
        pthread_create(&s, NULL, secret_thread, NULL);
        pthread_join(p, &pub);
        pthread_join(s, &sec);
    }
    printf("public: %016llx\nsecret: %016llx\n", (unsigned long long)(uintptr_t)pub,
           (unsigned long long)(uintptr_t)sec);
    return 0;
}
