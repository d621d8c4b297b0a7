/* An open-loop HTTP load generator for the card path: 0100 authorisations at a fixed rate.
 *
 *   openloop HOST PORT RATE SECONDS CONNECTIONS CARDS_FILE NETWORK_KEY [TIMEOUT_MS]
 *
 * Request k is due at start + k / RATE whether or not earlier ones have been answered, and its
 * latency counts from that moment (no coordinated omission: a request that waits for a free
 * connection waits on the clock). Each request is a JSON 0100 with a unique network transaction id
 * for a card from CARDS_FILE (lines "pan expiry cvc"), over keep-alive HTTP/1.1 connections, one
 * request in flight per connection. An answer not complete within TIMEOUT_MS (2000) counts as a
 * timeout and its connection is replaced. Prints one JSON line: what was sent, the answers by HTTP
 * status and response code, and the latency percentiles of the approvals ("00") and of every answer.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF 16384
#define MAX_CODES 64

typedef struct { char pan[32], expiry[8], cvc[8]; } card_t;
typedef struct {
    int fd, busy, header_done;
    double due;
    size_t got, need;
    char buf[BUF];
} conn_t;
typedef struct { char key[16]; long n; } count_t;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static struct sockaddr_in addr;
static int epfd;
static count_t counts[MAX_CODES];
static int ncounts;
static double *approved_lat, *all_lat;
static long napproved, nall, timeouts, errors, sent;

static void count(const char *key) {
    for (int i = 0; i < ncounts; i++)
        if (!strcmp(counts[i].key, key)) { counts[i].n++; return; }
    if (ncounts < MAX_CODES) { snprintf(counts[ncounts].key, sizeof counts[0].key, "%s", key); counts[ncounts++].n = 1; }
}

static int open_conn(conn_t *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        close(c->fd);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    c->busy = 0;
    return 0;
}

static void reopen(conn_t *c) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    open_conn(c);
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void percentiles(const char *name, double *v, long n) {
    qsort(v, n, sizeof *v, cmp);
    printf("\"%s\":{\"count\":%ld", name, n);
    if (n) {
        const double ps[] = {50, 90, 99, 99.9};
        const char *names[] = {"p50_ms", "p90_ms", "p99_ms", "p999_ms"};
        for (int i = 0; i < 4; i++) {
            long k = (long)(ps[i] / 100.0 * (n - 1) + 0.5);
            printf(",\"%s\":%.2f", names[i], v[k] * 1000);
        }
        printf(",\"max_ms\":%.2f", v[n - 1] * 1000);
    }
    printf("}");
}

/* A complete answer is in c->buf: record it. */
static void answered(conn_t *c, double t) {
    int status = 0;
    sscanf(c->buf, "HTTP/1.%*d %d", &status);
    char key[16];
    const char *rc = strstr(c->buf, "\"response_code\":\"");
    if (status == 200 && rc) {
        snprintf(key, sizeof key, "%.2s", rc + 17);
    } else {
        snprintf(key, sizeof key, "http_%d", status);
    }
    count(key);
    double lat = t - c->due;
    all_lat[nall++] = lat;
    if (!strcmp(key, "00")) approved_lat[napproved++] = lat;
    c->busy = 0;
    c->got = 0;
}

static void on_readable(conn_t *c, double t) {
    for (;;) {
        ssize_t n = read(c->fd, c->buf + c->got, BUF - 1 - c->got);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (n <= 0) { /* closed: an answer cut short is an error */
            if (c->busy) { errors++; count("closed"); }
            reopen(c);
            return;
        }
        c->got += n;
        c->buf[c->got] = 0;
        if (!c->busy) continue; /* bytes nobody asked for: ignore */
        char *end = strstr(c->buf, "\r\n\r\n");
        if (!end) continue;
        const char *cl = strcasestr(c->buf, "content-length:");
        size_t body = cl && cl < end ? strtoul(cl + 15, NULL, 10) : 0;
        size_t total = (size_t)(end + 4 - c->buf) + body;
        if (c->got >= total) {
            answered(c, t);
            return;
        }
    }
}

int main(int argc, char **argv) {
    if (argc < 8) {
        fprintf(stderr, "usage: %s HOST PORT RATE SECONDS CONNECTIONS CARDS_FILE NETWORK_KEY [TIMEOUT_MS]\n", argv[0]);
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    double rate = atof(argv[3]), seconds = atof(argv[4]);
    int nconn = atoi(argv[5]);
    const char *key = argv[7];
    double timeout = argc > 8 ? atof(argv[8]) / 1000 : 2.0;

    FILE *f = fopen(argv[6], "r");
    if (!f) { perror("cards file"); return 2; }
    long ncards = 0, cap = 1024;
    card_t *cards = malloc(cap * sizeof *cards);
    while (fscanf(f, "%31s %7s %7s", cards[ncards].pan, cards[ncards].expiry, cards[ncards].cvc) == 3)
        if (++ncards == cap) cards = realloc(cards, (cap *= 2) * sizeof *cards);
    fclose(f);
    if (!ncards) { fprintf(stderr, "no cards\n"); return 2; }

    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    inet_pton(AF_INET, host, &addr.sin_addr);
    epfd = epoll_create1(0);
    conn_t *conns = calloc(nconn, sizeof *conns);
    for (int i = 0; i < nconn; i++) open_conn(&conns[i]);

    long total = (long)(rate * seconds);
    approved_lat = malloc((total + 1) * sizeof(double));
    all_lat = malloc((total + 1) * sizeof(double));
    char body[1024], req[2048];
    unsigned nonce = (unsigned)time(NULL) ^ (unsigned)getpid();
    struct epoll_event evs[256];
    double start = now_s();
    long next = 0;
    int cursor = 0;

    for (;;) {
        double t = now_s();
        /* Send what is due, each on an idle connection. */
        while (next < total && start + next / rate <= t) {
            conn_t *c = NULL;
            for (int i = 0; i < nconn; i++) {
                conn_t *k = &conns[(cursor + i) % nconn];
                if (!k->busy) { c = k; cursor = (cursor + i + 1) % nconn; break; }
            }
            if (!c) break; /* all busy: it waits, and its latency counts from when it was due */
            card_t *cd = &cards[next % ncards];
            int blen = snprintf(body, sizeof body,
                "{\"mti\":\"0100\",\"pan\":\"%s\",\"expiry\":\"%s\",\"cvc\":\"%s\",\"processing_code\":\"000000\","
                "\"amount\":%ld,\"currency\":\"GBP\",\"stan\":\"%06ld\",\"rrn\":\"%012ld\","
                "\"transmission_time\":\"2026-12-06T08:15:00Z\",\"network_transaction_id\":\"OL%08x%09ld\","
                "\"merchant\":{\"id\":\"BB0001\",\"name\":\"BRIGHTBIRD ESPRESSO\",\"mcc\":\"5814\","
                "\"city\":\"London\",\"country\":\"GB\"}}",
                cd->pan, cd->expiry, cd->cvc, 100 + next % 900, next % 1000000, next, nonce, next);
            int rlen = snprintf(req, sizeof req,
                "POST /network/authorisations HTTP/1.1\r\nHost: %s:%d\r\nx-network-key: %s\r\n"
                "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
                host, port, key, blen, body);
            c->due = start + next / rate;
            c->got = 0;
            next++;
            sent++;
            if (write(c->fd, req, rlen) != rlen) { errors++; count("write_failed"); reopen(c); continue; }
            c->busy = 1;
        }
        /* Time out what has waited too long. */
        int outstanding = 0;
        for (int i = 0; i < nconn; i++) {
            if (!conns[i].busy) continue;
            if (t - conns[i].due > timeout) { timeouts++; count("timeout"); reopen(&conns[i]); }
            else outstanding++;
        }
        if (next >= total && !outstanding) break;
        double wait = next < total ? start + next / rate - t : 0.01;
        int ms = wait > 0 ? (int)(wait * 1000) : 0;
        int n = epoll_wait(epfd, evs, 256, ms > 10 ? 10 : ms);
        t = now_s();
        for (int i = 0; i < n; i++) on_readable((conn_t *)evs[i].data.ptr, t);
    }
    double elapsed = now_s() - start;
    printf("{\"offered_per_s\":%.1f,\"seconds\":%.2f,\"sent\":%ld,\"timeouts\":%ld,\"errors\":%ld,\"codes\":{",
           rate, elapsed, sent, timeouts, errors);
    for (int i = 0; i < ncounts; i++) printf("%s\"%s\":%ld", i ? "," : "", counts[i].key, counts[i].n);
    printf("},\"approved_per_s\":%.1f,", napproved / seconds);
    percentiles("approved", approved_lat, napproved);
    printf(",");
    percentiles("answered", all_lat, nall);
    printf("}\n");
    return 0;
}
