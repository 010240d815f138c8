/* The benchmark service: first thing in main(), write CLOCK_MONOTONIC (ns) to
 * the FIFO named in argv[1], then wait forever. "Running again" in the
 * listener benchmarks means this timestamp (bench-method.md), not systemd's
 * report that the unit is active. Built static so exec costs the same for
 * every approach: cc -O2 -static -o stamp stamp.c */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (argc > 1) {
        char buf[64];
        int n = snprintf(buf, sizeof buf, "%lld\n",
                         (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
        int fd = open(argv[1], O_WRONLY | O_NONBLOCK | O_CLOEXEC);
        if (fd >= 0) {
            if (write(fd, buf, (size_t)n) < 0) { /* reader gone: nothing to report to */ }
            close(fd);
        }
    }
    for (;;) pause();
}
