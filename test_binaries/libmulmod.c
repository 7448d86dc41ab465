/* libmulmod: a tiny shared library for plt_call (test_binaries/plt_call.c).
 *
 * mulmod(a, b, m) = a * b mod m for 64-bit operands: a 64x64->128 `mul` and
 * a call to the compiler helper __umodti3, which libgcc.a links into this
 * library (a direct, module-internal call).  mulmod_got is the same
 * function under a second name, which plt_call declares `noplt` so that its
 * call goes straight through the GOT (`call [rip + GOT]`, as -fno-plt
 * compiles every call).  Built with -shared -fPIC as
 * build/dynamic/libmulmod.so next to plt_call, which finds it by its rpath
 * ($ORIGIN). */
#include <stdint.h>

uint64_t mulmod(uint64_t a, uint64_t b, uint64_t m)
{
    return (uint64_t)((unsigned __int128)a * b % m);
}

uint64_t mulmod_got(uint64_t a, uint64_t b, uint64_t m) __attribute__((alias("mulmod")));
