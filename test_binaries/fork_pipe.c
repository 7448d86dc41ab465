/* fork + pipe + waitpid: children that exit, are killed by a signal, crash, and a vfork
 * child; the parent reads the pipe to end of file and reports every status it waits for. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile int *volatile nowhere; /* a null pointer the compiler cannot see */

static void report(const char *what, int status) {
    if (WIFEXITED(status))
        printf("%s: exited %d\n", what, WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        printf("%s: killed by signal %d\n", what, WTERMSIG(status));
    else
        printf("%s: status %#x\n", what, status);
}

int main(void) {
    int fds[2];
    if (pipe(fds) != 0) { perror("pipe"); return 1; }
    fflush(stdout);
    pid_t parent = getpid();
    pid_t child = fork();
    if (child < 0) { perror("fork"); return 1; }
    if (child == 0) {
        close(fds[0]);
        char line[128];
        int n = snprintf(line, sizeof line, "child: my parent is the forker: %d\n",
                         getppid() == parent);
        for (int i = 0; i < 3; i++)
            if (write(fds[1], line, (size_t)n) != n) _exit(99);
        _exit(7);
    }
    close(fds[1]);
    char buf[64];
    ssize_t got;
    size_t total = 0;
    while ((got = read(fds[0], buf, sizeof buf)) > 0) {
        fwrite(buf, 1, (size_t)got, stdout);
        total += (size_t)got;
    }
    printf("parent: read %zu bytes, then end of file (%zd)\n", total, got);
    int status;
    struct rusage ru;
    pid_t waited = wait4(child, &status, 0, &ru);
    printf("wait4 returned the child: %d\n", waited == child);
    report("first child", status);

    fflush(stdout);
    child = fork();
    if (child == 0) { raise(SIGTERM); _exit(1); }
    waitpid(child, &status, 0);
    report("second child", status);

    fflush(stdout);
    child = fork();
    if (child == 0) { sleep(0); kill(getpid(), SIGKILL); _exit(1); }
    siginfo_t info;
    memset(&info, 0, sizeof info);
    int r = waitid(P_PID, (id_t)child, &info, WEXITED);
    printf("waitid: %d, pid matches %d, code %d, status %d\n", r, info.si_pid == child,
           info.si_code, info.si_status);

    fflush(stdout);
    child = fork();
    if (child == 0) { *nowhere = 1; _exit(1); }
    waitpid(child, &status, 0);
    report("crashing child", status);

    fflush(stdout);
    child = vfork();
    if (child == 0) _exit(3);
    waitpid(child, &status, 0);
    report("vfork child", status);

    errno = 0;
    pid_t none = waitpid(-1, &status, WNOHANG);
    printf("no children left: %d %s\n", none, strerror(errno));
    return 5;
}
