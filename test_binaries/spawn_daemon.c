/* popen, system and the double-fork daemon pattern (issue 17): the daemon detaches with
 * setsid and a second fork, writes its pid file into DIR (an --rw directory under leakdbt)
 * and reports through a pipe; the parent waits for the middle process and for the daemon's
 * end (EOF on the pipe), then reads the pid file. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void pid_file(const char *dir, char *path, size_t size)
{
    snprintf(path, size, "%s/daemon.pid", dir);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fputs("usage: spawn_daemon DIR\n", stderr);
        return 2;
    }
    char line[100], path[4096];
    FILE *p = popen("echo from popen; exit 2", "r");
    while (fgets(line, sizeof line, p))
        printf("got: %s", line);
    printf("pclose: %d\n", WEXITSTATUS(pclose(p)));
    printf("system: %d\n", WEXITSTATUS(system("exit 4")));
    fflush(stdout);

    int ready[2];
    if (pipe(ready) != 0)
        return 1;
    pid_t middle = fork();
    if (middle == 0) {
        setsid();
        if (fork() != 0)
            _exit(0); /* the middle process ends: the daemon is orphaned */
        close(ready[0]);
        pid_file(argv[1], path, sizeof path);
        FILE *f = fopen(path, "w");
        if (!f)
            _exit(1);
        fprintf(f, "%d\n", (int)getpid());
        fclose(f);
        /* not its group's leader: the middle process made the session and the group */
        char leads = getpgrp() == getpid() ? 'L' : 'n';
        if (write(ready[1], &leads, 1) != 1)
            _exit(1);
        _exit(0);
    }
    close(ready[1]);
    int status;
    waitpid(middle, &status, 0);
    printf("middle exited: %d\n", WEXITSTATUS(status));
    char c;
    printf("daemon reported: %c\n", read(ready[0], &c, 1) == 1 ? c : '?');
    while (read(ready[0], &c, 1) > 0)
        ; /* EOF: the daemon is gone */
    pid_file(argv[1], path, sizeof path);
    FILE *f = fopen(path, "r");
    int pid = 0;
    if (f) {
        if (fscanf(f, "%d", &pid) != 1)
            pid = 0;
        fclose(f);
    }
    printf("pid file: %s\n", pid > 0 && pid != getpid() && pid != middle ? "ok" : "bad");
    return 0;
}
