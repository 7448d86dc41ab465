/* hello: the smallest useful program -- stdout via stdio, argv, exit 0.
 *
 * Usage: hello [WORD...]     prints "hello WORD..." (space-joined) and a newline.
 */
#include <stdio.h>

int main(int argc, char **argv)
{
    fputs("hello", stdout);
    for (int i = 1; i < argc; i++) {
        putchar(' ');
        fputs(argv[i], stdout);
    }
    putchar('\n');
    return 0;
}
