/* timecalls: clock_gettime (REALTIME, MONOTONIC), clock_getres,
 * gettimeofday, time, nanosleep, clock_nanosleep (relative and absolute).
 * These go through the vDSO natively when it is available.
 *
 * Usage: timecalls
 *   Prints only deterministic facts ("NAME: yes"/"no"), never times.
 *   Exit 0 if every fact is "yes", else 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static int failures;

static void fact(const char *what, int cond)
{
    printf("%s: %s\n", what, cond ? "yes" : "no");
    if (!cond)
        failures++;
}

static long long ns(const struct timespec *t)
{
    return (long long)t->tv_sec * 1000000000LL + t->tv_nsec;
}

static long long now(clockid_t c)
{
    struct timespec t;
    if (clock_gettime(c, &t) != 0)
        return -1;
    return ns(&t);
}

int main(void)
{
    struct timespec rt, mono, res;
    fact("clock_gettime REALTIME ok", clock_gettime(CLOCK_REALTIME, &rt) == 0);
    fact("clock_gettime MONOTONIC ok", clock_gettime(CLOCK_MONOTONIC, &mono) == 0);
    fact("tv_nsec in range", rt.tv_nsec >= 0 && rt.tv_nsec < 1000000000L &&
                             mono.tv_nsec >= 0 && mono.tv_nsec < 1000000000L);
    fact("realtime after 2020", rt.tv_sec > 1577836800L);
    fact("clock_getres MONOTONIC <= 1ms",
         clock_getres(CLOCK_MONOTONIC, &res) == 0 && ns(&res) > 0 && ns(&res) <= 1000000);

    /* monotonic never goes backwards */
    long long prev = now(CLOCK_MONOTONIC);
    int nondecreasing = prev >= 0;
    for (int i = 0; i < 1000; i++) {
        long long t = now(CLOCK_MONOTONIC);
        if (t < prev)
            nondecreasing = 0;
        prev = t;
    }
    fact("monotonic non-decreasing", nondecreasing);

    struct timeval tv;
    fact("gettimeofday ok", gettimeofday(&tv, NULL) == 0);
    fact("tv_usec in range", tv.tv_usec >= 0 && tv.tv_usec < 1000000);
    long long gtod = (long long)tv.tv_sec * 1000000000LL + tv.tv_usec * 1000LL;
    long long rtn = now(CLOCK_REALTIME);
    long long d = rtn - gtod;
    fact("realtime within 5s of gettimeofday", d > -5000000000LL && d < 5000000000LL);
    time_t t1, t0 = time(&t1);
    fact("time() return == stored value", t0 == t1);
    fact("time within 5s of gettimeofday", t0 - tv.tv_sec > -5 && t0 - tv.tv_sec < 5);

    /* nanosleep(1ms) really sleeps */
    struct timespec req = { 0, 1000000 }, rem = { 0, 0 };
    long long a = now(CLOCK_MONOTONIC);
    int r = nanosleep(&req, &rem);
    long long b = now(CLOCK_MONOTONIC);
    fact("nanosleep ok", r == 0);
    fact("sleep ok", b - a >= 1000000);

    /* clock_nanosleep relative */
    a = now(CLOCK_MONOTONIC);
    r = clock_nanosleep(CLOCK_MONOTONIC, 0, &req, NULL);
    b = now(CLOCK_MONOTONIC);
    fact("clock_nanosleep relative ok", r == 0 && b - a >= 1000000);

    /* clock_nanosleep absolute: wake at now + 2ms */
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_nsec += 2000000;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    r = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL);
    fact("clock_nanosleep TIMER_ABSTIME ok", r == 0 && now(CLOCK_MONOTONIC) >= ns(&until));

    /* an absolute deadline in the past returns at once */
    struct timespec past = { 0, 0 };
    r = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &past, NULL);
    fact("clock_nanosleep past deadline ok", r == 0);

    /* invalid arguments */
    struct timespec bad = { 0, 1000000000L };
    errno = 0;
    fact("nanosleep tv_nsec=1e9 fails EINVAL", nanosleep(&bad, NULL) == -1 && errno == EINVAL);
    fact("clock_gettime bad clock fails EINVAL",
         clock_gettime((clockid_t)12345, &rt) == -1 && errno == EINVAL);

    printf("timecalls: %s\n", failures ? "FAILED" : "all ok");
    return failures ? 1 : 0;
}
