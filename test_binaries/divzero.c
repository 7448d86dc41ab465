/* divzero: integer division by zero in a named function -> SIGFPE.
 *
 * Usage: divzero
 *   Prints "divzero: dividing 7 by 0" (flushed), then divide() executes idiv
 *   with a zero divisor.  Expected: killed by SIGFPE (shell exit status 136).
 */
#include <stdio.h>

__attribute__((noipa)) int divide(int a, int b)
{
    volatile int va = a, vb = b;            /* forces a real idiv */
    return va / vb;
}

int main(void)
{
    printf("divzero: dividing 7 by 0\n");
    fflush(stdout);
    int q = divide(7, 0);
    printf("divzero: still alive?! q=%d\n", q);
    return 1;
}
