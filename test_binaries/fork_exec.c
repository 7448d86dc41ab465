#define _GNU_SOURCE
/* fork + exec + pipe: the child's stdout is a pipe to the parent, the child execs argv[1]
 * with the rest of argv; the parent prints what it read and how the child ended.  Also
 * reports the errno of an exec that must fail (argv[1] = "-" skips the pipeline). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: fork_exec PROGRAM ARGS... | - PATH\n"); return 2; }
    if (strcmp(argv[1], "-") == 0) {
        char *args[] = {argv[2], NULL};
        execv(argv[2], args);
        printf("exec %s: %s\n", argv[2], strerror(errno));
        return 1;
    }
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) { perror("pipe2"); return 1; }
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        dup2(fds[1], 1);
        execv(argv[1], argv + 1);
        printf("exec failed: %s\n", strerror(errno));
        _exit(127);
    }
    close(fds[1]);
    char buf[256];
    ssize_t got;
    while ((got = read(fds[0], buf, sizeof buf)) > 0)
        fwrite(buf, 1, (size_t)got, stdout);
    int status;
    waitpid(child, &status, 0);
    if (WIFEXITED(status))
        printf("child exited %d\n", WEXITSTATUS(status));
    else
        printf("child killed by %d\n", WTERMSIG(status));
    return 0;
}
