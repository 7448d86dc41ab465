/* stdin_echo: copies stdin to stdout, reports the byte count on stderr.
 *
 * Usage: stdin_echo [stdio]
 *   Default: raw read(2)/write(2) loop with a 37-byte buffer (odd size, so
 *   reads and writes split unevenly; partial writes and EINTR are handled).
 *   "stdio": the same copy with fread/fwrite.
 *   stderr: "stdin_echo: N bytes".  Exit 0, or 1 on an I/O error.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define BUFSZ 37

static long copy_raw(void)
{
    char buf[BUFSZ];
    long total = 0;
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n == 0)
            return total;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(1, buf + off, (size_t)(n - off));
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                return -1;
            }
            off += w;
        }
        total += n;
    }
}

static long copy_stdio(void)
{
    char buf[BUFSZ];
    long total = 0;
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) {
        if (fwrite(buf, 1, n, stdout) != n)
            return -1;
        total += (long)n;
    }
    if (ferror(stdin) || fflush(stdout) != 0)
        return -1;
    return total;
}

int main(int argc, char **argv)
{
    int use_stdio = argc > 1 && strcmp(argv[1], "stdio") == 0;
    long total = use_stdio ? copy_stdio() : copy_raw();
    if (total < 0) {
        fprintf(stderr, "stdin_echo: I/O error: %s\n", strerror(errno));
        return 1;
    }
    fprintf(stderr, "stdin_echo: %ld bytes\n", total);
    return 0;
}
