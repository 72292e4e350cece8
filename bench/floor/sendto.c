/* The kernel's floor for one delivery: CPU a sender spends per send() of a
 * 300-byte frame to N loopback TCP sockets whose reader (another process)
 * sleeps in epoll, at a paced rate. No WebSocket, no JSON, no runtime:
 * only what any server on this machine must pay per fanned-out frame.
 *
 *   gcc -O2 -o /tmp/sendto bench/floor/sendto.c && /tmp/sendto 1000 20000 5
 *   (sockets, frames per second, seconds, [slack seconds])
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double cpu(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec + u.ru_stime.tv_usec / 1e6;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1000;
    double rate = argc > 2 ? atof(argv[2]) : 20000;
    double secs = argc > 3 ? atof(argv[3]) : 5;
    /* Sleep only when this far ahead: 0 wakes once per frame (a server woken
     * by each incoming event), 0.001 sends ~rate/1000 frames per wake-up. */
    double slack = argc > 4 ? atof(argv[4]) : 0;
    int lst = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (bind(lst, (struct sockaddr *)&a, sizeof a) || listen(lst, 4096) || getsockname(lst, (struct sockaddr *)&a, &al)) {
        perror("listen");
        return 1;
    }
    pid_t child = fork();
    if (child == 0) { /* reader: connect n sockets, read everything */
        int ep = epoll_create1(0);
        for (int i = 0; i < n; i++) {
            int s = socket(AF_INET, SOCK_STREAM, 0);
            if (connect(s, (struct sockaddr *)&a, sizeof a)) { perror("connect"); _exit(1); }
            struct epoll_event ev = {.events = EPOLLIN, .data.fd = s};
            epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
        }
        char buf[65536];
        struct epoll_event evs[256];
        double c0 = -1;
        long got = 0;
        for (;;) {
            int k = epoll_wait(ep, evs, 256, -1);
            if (c0 < 0) c0 = cpu();
            for (int i = 0; i < k; i++) {
                ssize_t r = read(evs[i].data.fd, buf, sizeof buf);
                if (r <= 0) {
                    printf("{\"reader_bytes\": %ld, \"reader_cpu_us_per_frame\": %.2f}\n", got,
                           (cpu() - c0) * 1e6 / (got / 300.0));
                    fflush(stdout);
                    _exit(0);
                }
                got += r;
            }
        }
    }
    int *fds = malloc(n * sizeof(int));
    for (int i = 0; i < n; i++) {
        fds[i] = accept(lst, NULL, NULL);
        int one = 1;
        setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    char frame[300];
    memset(frame, 'x', sizeof frame);
    long total = (long)(rate * secs), sent = 0;
    double t0 = now(), c0 = cpu();
    while (sent < total) {
        double due = t0 + sent / rate, t = now();
        if (due > t + slack) {
            struct timespec d = {0, (long)((due - t) * 1e9)};
            nanosleep(&d, NULL);
        }
        if (send(fds[sent % n], frame, sizeof frame, 0) != sizeof frame) { perror("send"); break; }
        sent++;
    }
    double c1 = cpu(), t1 = now();
    printf("{\"sockets\": %d, \"rate\": %.0f, \"slack_s\": %g, \"frames\": %ld, \"seconds\": %.2f, \"sender_cpu_us_per_frame\": %.2f}\n",
           n, rate, slack, sent, t1 - t0, (c1 - c0) * 1e6 / sent);
    for (int i = 0; i < n; i++) close(fds[i]);
    waitpid(child, NULL, 0);
    return 0;
}
