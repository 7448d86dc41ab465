/* fork + exec cost, for bench/processes.py: `bench_spawn N PROGRAM ARGS...` runs PROGRAM
 * N times, one after the other: fork, execv in the child, waitpid in the parent.  Prints
 * how many children exited 0 (N with a PROGRAM such as /bin/true). */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 3) {
        fputs("usage: bench_spawn N PROGRAM ARGS...\n", stderr);
        return 2;
    }
    long n = strtol(argv[1], NULL, 0), ok = 0;
    for (long i = 0; i < n; i++) {
        pid_t child = fork();
        if (child < 0) {
            perror("fork");
            return 1;
        }
        if (child == 0) {
            execv(argv[2], argv + 2);
            _exit(127);
        }
        int status;
        if (waitpid(child, &status, 0) != child) {
            perror("waitpid");
            return 1;
        }
        ok += WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }
    printf("%ld of %ld exited 0\n", ok, n);
    return 0;
}
