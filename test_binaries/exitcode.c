/* exitcode: process termination paths and stdio flushing at exit.
 *
 * Usage: exitcode [STATUS [MODE]]       STATUS default 3, MODE default "return"
 *   Prints "exitcode: status=S mode=M" (flushed), then writes
 *   "buffered tail" WITHOUT a newline or flush and ends via MODE:
 *     return  return STATUS from main -> atexit handler runs, tail flushed
 *     exit    exit(STATUS)            -> same as return
 *     _exit   _exit(STATUS)           -> no atexit, tail is lost
 *   Exit status = STATUS & 255.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void at_exit_handler(void)
{
    printf("atexit handler ran\n");
}

int main(int argc, char **argv)
{
    int status = argc > 1 ? atoi(argv[1]) : 3;
    const char *mode = argc > 2 ? argv[2] : "return";

    atexit(at_exit_handler);
    printf("exitcode: status=%d mode=%s\n", status, mode);
    fflush(stdout);
    printf("buffered tail ");               /* no newline, no flush */

    if (strcmp(mode, "_exit") == 0)
        _exit(status);
    if (strcmp(mode, "exit") == 0)
        exit(status);
    return status;
}
