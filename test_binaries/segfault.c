/* segfault: a store through a NULL pointer in a named function -> SIGSEGV.
 *
 * Usage: segfault
 *   Prints "segfault: about to crash" (flushed), then crash_here() writes
 *   through NULL.  Expected: killed by SIGSEGV (shell exit status 139).
 */
#include <stdio.h>

/* volatile, so gcc can neither see the NULL nor turn the store into a trap */
int *volatile bad_pointer = NULL;

__attribute__((noipa)) void crash_here(int value)
{
    int *p = bad_pointer;
    *p = value;                             /* SIGSEGV here */
}

int main(void)
{
    printf("segfault: about to crash\n");
    fflush(stdout);
    crash_here(42);
    printf("segfault: still alive?!\n");
    return 1;
}
