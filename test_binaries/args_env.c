/* args_env: the initial stack (argc/argv/envp), getenv, getcwd, exit status.
 *
 * Usage: args_env [ARG...]
 *   Prints argc and every argv[i] (argv[0] too, so compare it only when the
 *   caller controls it).  Every argument is also looked up as an environment
 *   variable name.  If an argument is "--environ", the whole environment is
 *   printed sorted (deterministic when run under `env -i ...`).  Finally
 *   prints getcwd().  Exit status = argc.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <limits.h>

extern char **environ;

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    int want_environ = 0;

    printf("argc=%d\n", argc);
    for (int i = 0; i < argc; i++)
        printf("argv[%d]=%s\n", i, argv[i]);
    if (argv[argc] != NULL)
        printf("argv[argc] is not NULL!\n");

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--environ") == 0) {
            want_environ = 1;
            continue;
        }
        const char *v = getenv(argv[i]);
        if (v)
            printf("env %s=%s\n", argv[i], v);
        else
            printf("env %s unset\n", argv[i]);
    }

    if (want_environ) {
        size_t n = 0;
        while (environ[n])
            n++;
        char **copy = malloc((n + 1) * sizeof *copy);
        if (!copy)
            return 255;
        memcpy(copy, environ, n * sizeof *copy);
        qsort(copy, n, sizeof *copy, cmp_str);
        printf("environ count=%zu\n", n);
        for (size_t i = 0; i < n; i++)
            printf("environ %s\n", copy[i]);
        free(copy);
    }

    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd))
        printf("cwd=%s\n", cwd);
    else
        perror("getcwd");

    return argc;
}
