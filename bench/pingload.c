/*
 * pingload: a small, bounded HTTP/1.1 load generator for the haven-agent bench.
 *
 * It sends the same request bytes (GET PATH with a Host and any -H headers)
 * over a UNIX socket, plain TCP or TLS over TCP, so every path of the bench is
 * driven by the same client.  Like wrk, a few threads (-T) each run an epoll
 * loop over their share of the -c connections, with non-blocking sockets and
 * non-blocking TLS; each connection keeps one request in flight (no
 * pipelining).  With -N every request uses a new connection (for TLS a full
 * handshake without session resumption, as the docker CLI does): connect,
 * handshake, one GET, close.  -R with -N offers each connection's session
 * (a TLS 1.3 ticket) to the next one on the same slot, as a client with a
 * session cache does; "resumed_handshakes" counts the servers that took it.
 *
 * Bounded: it stops after -w seconds of uncounted warm-up plus -d measured
 * seconds, or earlier after -n requests per connection; a request that makes
 * no progress for -t seconds counts as an error and its connection is closed.
 * Only loopback TCP targets (127.x.y.z) are accepted.
 *
 * Prints one JSON object: requests, errors, seconds, rps, latency percentiles
 * (ms; request written -> full response read; with -N from connect()), the
 * TLS version/cipher/ALPN negotiated and the client's own CPU time.
 *
 *   pingload [-c CONNS] [-T THREADS] [-d SECONDS] [-w WARMUP] [-n MAX_PER_CONN]
 *            [-N [-R]] [-H 'Name: value']... [-p PATH] [-C CAFILE] [-t IO_TIMEOUT]
 *            unix:/path/to.sock | tcp:HOST:PORT | tls:HOST:PORT
 *
 * Build: gcc -O2 -pthread -o pingload pingload.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum kind { K_UNIX, K_TCP, K_TLS };
enum state { S_IDLE, S_CONNECTING, S_HANDSHAKE, S_WRITING, S_READING };

static enum kind g_kind;
static char g_unix_path[108];
static char g_host[256];
static int g_port;
static struct sockaddr_un g_sun;
static struct sockaddr_in g_sin;
static SSL_CTX *g_ctx;
static char *g_request;
static size_t g_request_len;
static int g_new_conn;
static int g_resume; /* -R: offer the previous connection's session (tickets) */
static long g_resumed; /* handshakes that resumed a session */
static long g_max_per_conn;
static double g_io_timeout = 10.0;

static double g_t_measure, g_t_end;
static pthread_barrier_t g_barrier;
static atomic_int g_tls_recorded;
static char g_tls_version[64] = "", g_tls_cipher[128] = "", g_alpn[64] = "";
static char g_first_error[512] = "";
static pthread_mutex_t g_err_lock = PTHREAD_MUTEX_INITIALIZER;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void note_error(const char *fmt, const char *detail) {
    pthread_mutex_lock(&g_err_lock);
    if (!g_first_error[0]) snprintf(g_first_error, sizeof g_first_error, fmt, detail ? detail : "");
    pthread_mutex_unlock(&g_err_lock);
}

#define BUF_SIZE 65536

struct conn {
    int fd;
    SSL *ssl;
    enum state state;
    uint32_t events; /* epoll interest currently registered (0: none) */
    size_t written;
    size_t have;
    double t0, last_progress;
    long done;
    int finished; /* -n reached */
    SSL_SESSION *session; /* -R: the last connection's, offered by the next */
    char buf[BUF_SIZE];
};

struct worker {
    pthread_t tid;
    int epfd;
    struct conn *conns;
    int nconns;
    uint32_t *lat; /* 0.1 us units */
    size_t nlat, cap;
    long requests, errors, non200, done;
};

static void record(struct worker *w, double seconds) {
    if (w->nlat == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 65536;
        if (cap > 50u * 1000 * 1000) return;
        uint32_t *p = realloc(w->lat, cap * sizeof *p);
        if (!p) return;
        w->lat = p;
        w->cap = cap;
    }
    double v = seconds * 1e7;
    w->lat[w->nlat++] = v > 4e9 ? 4000000000u : (uint32_t)v;
}

static void set_interest(struct worker *w, struct conn *c, uint32_t ev) {
    if (c->events == ev) return;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    if (c->events == 0)
        epoll_ctl(w->epfd, EPOLL_CTL_ADD, c->fd, &e);
    else
        epoll_ctl(w->epfd, EPOLL_CTL_MOD, c->fd, &e);
    c->events = ev;
}

static void conn_close(struct worker *w, struct conn *c) {
    if (c->fd >= 0) {
        if (c->events) epoll_ctl(w->epfd, EPOLL_CTL_DEL, c->fd, NULL);
        if (c->ssl && c->state != S_CONNECTING && c->state != S_HANDSHAKE) SSL_shutdown(c->ssl);
    }
    if (c->ssl) {
        if (g_resume && c->state != S_CONNECTING && c->state != S_HANDSHAKE) {
            SSL_SESSION *s = SSL_get1_session(c->ssl);
            if (s && SSL_SESSION_is_resumable(s)) {
                if (c->session) SSL_SESSION_free(c->session);
                c->session = s;
            } else if (s) {
                SSL_SESSION_free(s);
            }
        }
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->events = 0;
    c->have = 0;
    c->state = S_IDLE;
}

/* Start a TCP/UNIX connect; returns 0, or -1 on immediate failure. */
static int conn_connect(struct conn *c) {
    int domain = g_kind == K_UNIX ? AF_UNIX : AF_INET;
    c->fd = socket(domain, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) return note_error("socket: %s", strerror(errno)), -1;
    int r;
    if (g_kind == K_UNIX) {
        r = connect(c->fd, (struct sockaddr *)&g_sun, sizeof g_sun);
    } else {
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        r = connect(c->fd, (struct sockaddr *)&g_sin, sizeof g_sin);
    }
    if (r < 0 && errno != EINPROGRESS) { /* EAGAIN here: backlog or ports exhausted */
        note_error("connect: %s", strerror(errno));
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    c->state = S_CONNECTING;
    c->events = 0;
    c->have = 0;
    return 0;
}

static void remember_tls(SSL *ssl) {
    if (atomic_exchange(&g_tls_recorded, 1) != 0) return;
    const unsigned char *alpn = NULL;
    unsigned alpn_len = 0;
    snprintf(g_tls_version, sizeof g_tls_version, "%s", SSL_get_version(ssl));
    snprintf(g_tls_cipher, sizeof g_tls_cipher, "%s", SSL_get_cipher_name(ssl));
    SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
    if (alpn_len >= sizeof g_alpn) alpn_len = sizeof g_alpn - 1;
    memcpy(g_alpn, alpn ? (const char *)alpn : "", alpn_len);
    g_alpn[alpn_len] = 0;
}

static void tls_error(const char *what, SSL *ssl, int r) {
    char e[300];
    int code = SSL_get_error(ssl, r);
    unsigned long err = ERR_get_error();
    if (err)
        ERR_error_string_n(err, e, sizeof e);
    else
        snprintf(e, sizeof e, "SSL error %d, errno %s", code, strerror(errno));
    char msg[400];
    snprintf(msg, sizeof msg, "%s: %s", what, e);
    note_error("%s", msg);
    ERR_clear_error();
}

/* Try to parse one complete response at buf[0..have).  Returns its length
 * (>0) and sets *status and *keep_alive, 0 if more bytes are needed, -1 on a
 * malformed response. */
static long parse_response(const char *buf, size_t have, int *status, int *keep_alive) {
    const char *end = memmem(buf, have, "\r\n\r\n", 4);
    if (!end) return have >= BUF_SIZE ? -1 : 0;
    size_t head_len = (size_t)(end + 4 - buf);
    if (head_len < 12 || strncmp(buf, "HTTP/1.", 7) != 0) return -1;
    *status = atoi(buf + 9);
    *keep_alive = buf[7] == '1';
    long long content_length = -1;
    int chunked = 0;
    const char *line = memmem(buf, head_len, "\r\n", 2) + 2;
    while (line < end + 2) {
        const char *eol = memmem(line, (size_t)(end + 4 - line), "\r\n", 2);
        if (!eol || eol == line) break;
        size_t ll = (size_t)(eol - line);
        if (ll > 15 && strncasecmp(line, "content-length:", 15) == 0)
            content_length = strtoll(line + 15, NULL, 10);
        else if (ll > 18 && strncasecmp(line, "transfer-encoding:", 18) == 0)
            chunked = memmem(line, ll, "chunked", 7) != NULL;
        else if (ll > 11 && strncasecmp(line, "connection:", 11) == 0 && memmem(line, ll, "close", 5))
            *keep_alive = 0;
        line = eol + 2;
    }
    if (chunked) {
        size_t pos = head_len;
        for (;;) {
            const char *eol = memmem(buf + pos, have - pos, "\r\n", 2);
            if (!eol) return have >= BUF_SIZE ? -1 : 0;
            long long size = strtoll(buf + pos, NULL, 16);
            pos = (size_t)(eol + 2 - buf);
            if (size == 0) {
                for (;;) { /* trailers, then an empty line */
                    eol = memmem(buf + pos, have - pos, "\r\n", 2);
                    if (!eol) return have >= BUF_SIZE ? -1 : 0;
                    size_t ll = (size_t)(eol - (buf + pos));
                    pos += ll + 2;
                    if (ll == 0) return (long)pos;
                }
            }
            if (pos + (size_t)size + 2 > have) return have >= BUF_SIZE ? -1 : 0;
            pos += (size_t)size + 2;
        }
    }
    if (content_length >= 0) {
        if (head_len + (size_t)content_length > BUF_SIZE) return -1;
        if (have < head_len + (size_t)content_length) return 0;
        return (long)(head_len + (size_t)content_length);
    }
    if (*status == 204 || *status == 304 || (*status >= 100 && *status < 200)) return (long)head_len;
    return -1; /* body until close: not supported for a ping */
}

static void fail(struct worker *w, struct conn *c, double t) {
    if (t >= g_t_measure && t <= g_t_end) w->errors++;
    conn_close(w, c);
}

/* Begin the next request on c (new connection if needed). */
static void start_request(struct worker *w, struct conn *c, double t) {
    if (g_max_per_conn > 0 && c->done >= g_max_per_conn) {
        c->finished = 1;
        conn_close(w, c);
        return;
    }
    c->t0 = t;
    c->last_progress = t;
    c->written = 0;
    c->have = 0;
    if (c->fd < 0) {
        if (conn_connect(c) < 0) {
            fail(w, c, t);
            return;
        }
        set_interest(w, c, EPOLLOUT);
        return;
    }
    c->state = S_WRITING; /* the caller writes now; interest changes only on EAGAIN */
}

/* Advance c as far as it can go without blocking. */
static void drive(struct worker *w, struct conn *c) {
    for (;;) {
        double t;
        switch (c->state) {
        case S_IDLE:
            return;
        case S_CONNECTING: {
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err) {
                note_error("connect: %s", strerror(err));
                fail(w, c, now());
                return;
            }
            struct sockaddr_storage peer;
            socklen_t plen = sizeof peer;
            if (getpeername(c->fd, (struct sockaddr *)&peer, &plen) < 0) {
                if (errno == ENOTCONN) return set_interest(w, c, EPOLLOUT); /* in progress */
                note_error("connect: %s", strerror(errno));
                fail(w, c, now());
                return;
            }
            if (g_kind == K_TLS) {
                c->ssl = SSL_new(g_ctx);
                SSL_set_fd(c->ssl, c->fd);
                SSL_set_connect_state(c->ssl);
                if (c->session) SSL_set_session(c->ssl, c->session);
                X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), g_host);
                c->state = S_HANDSHAKE;
            } else {
                c->state = S_WRITING;
            }
            break;
        }
        case S_HANDSHAKE: {
            int r = SSL_do_handshake(c->ssl);
            if (r == 1) {
                remember_tls(c->ssl);
                if (SSL_session_reused(c->ssl)) __atomic_add_fetch(&g_resumed, 1, __ATOMIC_RELAXED);
                c->state = S_WRITING;
                break;
            }
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ) return set_interest(w, c, EPOLLIN);
            if (e == SSL_ERROR_WANT_WRITE) return set_interest(w, c, EPOLLOUT);
            tls_error("TLS handshake", c->ssl, r);
            fail(w, c, now());
            return;
        }
        case S_WRITING: {
            const char *p = g_request + c->written;
            size_t n = g_request_len - c->written;
            ssize_t r;
            if (c->ssl) {
                int k = SSL_write(c->ssl, p, (int)n);
                if (k <= 0) {
                    int e = SSL_get_error(c->ssl, k);
                    if (e == SSL_ERROR_WANT_WRITE) return set_interest(w, c, EPOLLOUT);
                    if (e == SSL_ERROR_WANT_READ) return set_interest(w, c, EPOLLIN);
                    tls_error("SSL_write", c->ssl, k);
                    fail(w, c, now());
                    return;
                }
                r = k;
            } else {
                r = send(c->fd, p, n, MSG_NOSIGNAL);
                if (r < 0) {
                    if (errno == EAGAIN || errno == EINTR) return set_interest(w, c, EPOLLOUT);
                    note_error("send: %s", strerror(errno));
                    fail(w, c, now());
                    return;
                }
            }
            c->written += (size_t)r;
            if (c->written == g_request_len) {
                c->state = S_READING;
                c->have = 0;
            }
            break;
        }
        case S_READING: {
            ssize_t r;
            if (c->have >= BUF_SIZE) {
                note_error("response too large%s", "");
                fail(w, c, now());
                return;
            }
            if (c->ssl) {
                int k = SSL_read(c->ssl, c->buf + c->have, (int)(BUF_SIZE - c->have));
                if (k <= 0) {
                    int e = SSL_get_error(c->ssl, k);
                    if (e == SSL_ERROR_WANT_READ) return set_interest(w, c, EPOLLIN);
                    if (e == SSL_ERROR_WANT_WRITE) return set_interest(w, c, EPOLLOUT);
                    if (e == SSL_ERROR_ZERO_RETURN)
                        note_error("server closed the connection%s", "");
                    else
                        tls_error("SSL_read", c->ssl, k);
                    fail(w, c, now());
                    return;
                }
                r = k;
            } else {
                r = recv(c->fd, c->buf + c->have, BUF_SIZE - c->have, 0);
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) return set_interest(w, c, EPOLLIN);
                if (r <= 0) {
                    note_error("recv: %s", r == 0 ? "server closed the connection" : strerror(errno));
                    fail(w, c, now());
                    return;
                }
            }
            c->have += (size_t)r;
            t = now();
            c->last_progress = t;
            int status = 0, keep = 1;
            long len = parse_response(c->buf, c->have, &status, &keep);
            if (len < 0) {
                note_error("malformed or unsupported response%s", "");
                fail(w, c, t);
                return;
            }
            if (len == 0) break; /* need more */
            c->done++;
            w->done++;
            if (c->t0 >= g_t_measure && t <= g_t_end) {
                w->requests++;
                if (status != 200) w->non200++;
                record(w, t - c->t0);
            }
            if ((size_t)len != c->have) {
                note_error("unexpected bytes after a response%s", "");
                fail(w, c, t);
                return;
            }
            if (g_new_conn || !keep) conn_close(w, c);
            if (t >= g_t_end) {
                c->state = S_IDLE;
                return;
            }
            start_request(w, c, t);
            if (c->state == S_IDLE) return;
            break;
        }
        }
    }
}

static void *run_worker(void *arg) {
    struct worker *w = arg;
    struct epoll_event evs[256];
    pthread_barrier_wait(&g_barrier);
    double t = now();
    for (int i = 0; i < w->nconns; i++) {
        start_request(w, &w->conns[i], t);
        drive(w, &w->conns[i]);
    }
    double last_scan = t;
    for (;;) {
        t = now();
        if (t >= g_t_end) break;
        int active = 0;
        for (int i = 0; i < w->nconns; i++) active += !w->conns[i].finished;
        if (!active) break;
        int ms = (int)((g_t_end - t) * 1000) + 1;
        if (ms > 100) ms = 100;
        int n = epoll_wait(w->epfd, evs, 256, ms);
        for (int i = 0; i < n; i++) drive(w, evs[i].data.ptr);
        t = now();
        if (t - last_scan > 0.1) { /* stuck requests, failed connects */
            last_scan = t;
            for (int i = 0; i < w->nconns; i++) {
                struct conn *c = &w->conns[i];
                if (c->finished || t >= g_t_end) continue;
                if (c->state != S_IDLE && t - c->last_progress > g_io_timeout) {
                    note_error("no progress within the I/O timeout%s", "");
                    fail(w, c, t);
                }
                if (c->state == S_IDLE && c->fd < 0) {
                    start_request(w, c, t);
                    drive(w, c);
                }
            }
        }
    }
    for (int i = 0; i < w->nconns; i++) conn_close(w, &w->conns[i]);
    return NULL;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void usage(void) {
    fprintf(stderr,
            "usage: pingload [-c CONNS] [-T THREADS] [-d SECONDS] [-w WARMUP] [-n MAX_PER_CONN]\n"
            "                [-N [-R]] [-H 'Name: value']... [-p PATH] [-C CAFILE] [-t IO_TIMEOUT]\n"
            "                unix:/path | tcp:HOST:PORT | tls:HOST:PORT\n");
    exit(2);
}

int main(int argc, char **argv) {
    int conns = 1, threads = 0;
    double duration = 5.0, warmup = 1.0;
    const char *path = "/_ping";
    const char *cafile = NULL;
    char headers[8192] = "";
    int opt;
    signal(SIGPIPE, SIG_IGN);
    while ((opt = getopt(argc, argv, "c:T:d:w:n:NRH:p:C:t:")) != -1) {
        switch (opt) {
        case 'c': conns = atoi(optarg); break;
        case 'T': threads = atoi(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 'n': g_max_per_conn = atol(optarg); break;
        case 'N': g_new_conn = 1; break;
        case 'R': g_resume = 1; break;
        case 'H':
            if (strlen(headers) + strlen(optarg) + 3 >= sizeof headers) usage();
            strcat(headers, optarg);
            strcat(headers, "\r\n");
            break;
        case 'p': path = optarg; break;
        case 'C': cafile = optarg; break;
        case 't': g_io_timeout = atof(optarg); break;
        default: usage();
        }
    }
    if (threads <= 0) threads = conns < 2 ? conns : 2;
    if (threads > conns) threads = conns;
    if (optind != argc - 1 || conns < 1 || conns > 10000 || threads > 64 || duration <= 0 ||
        duration > 3600 || warmup < 0 || warmup > 600 || g_io_timeout <= 0)
        usage();
    const char *target = argv[optind];
    if (strncmp(target, "unix:", 5) == 0) {
        g_kind = K_UNIX;
        if (strlen(target + 5) >= sizeof g_unix_path) usage();
        strcpy(g_unix_path, target + 5);
        g_sun.sun_family = AF_UNIX;
        memcpy(g_sun.sun_path, g_unix_path, strlen(g_unix_path) + 1);
    } else if (strncmp(target, "tcp:", 4) == 0 || strncmp(target, "tls:", 4) == 0) {
        g_kind = target[1] == 'c' ? K_TCP : K_TLS;
        const char *hp = target + 4;
        const char *colon = strrchr(hp, ':');
        if (!colon || (size_t)(colon - hp) >= sizeof g_host) usage();
        memcpy(g_host, hp, (size_t)(colon - hp));
        g_host[colon - hp] = 0;
        g_port = atoi(colon + 1);
        g_sin.sin_family = AF_INET;
        g_sin.sin_port = htons((uint16_t)g_port);
        if (inet_pton(AF_INET, g_host, &g_sin.sin_addr) != 1 ||
            (ntohl(g_sin.sin_addr.s_addr) >> 24) != 127) {
            fprintf(stderr, "pingload: only loopback IPv4 targets (127.x.y.z) are allowed\n");
            return 2;
        }
    } else {
        usage();
    }
    if (g_kind == K_TLS) {
        g_ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_min_proto_version(g_ctx, TLS1_2_VERSION);
        SSL_CTX_set_session_cache_mode(g_ctx, SSL_SESS_CACHE_OFF);
        static const unsigned char alpn[] = "\x08http/1.1";
        SSL_CTX_set_alpn_protos(g_ctx, alpn, sizeof alpn - 1);
        SSL_CTX_set_mode(g_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE);
        if (cafile) {
            if (SSL_CTX_load_verify_locations(g_ctx, cafile, NULL) != 1) {
                fprintf(stderr, "pingload: cannot load CA file %s\n", cafile);
                return 2;
            }
            SSL_CTX_set_verify(g_ctx, SSL_VERIFY_PEER, NULL);
        }
    }
    size_t cap = strlen(path) + strlen(headers) + 64;
    g_request = malloc(cap);
    g_request_len = (size_t)snprintf(g_request, cap, "GET %s HTTP/1.1\r\nHost: docker\r\n%s\r\n", path, headers);

    struct worker *ws = calloc((size_t)threads, sizeof *ws);
    struct conn *all_conns = calloc((size_t)conns, sizeof *all_conns);
    if (!ws || !all_conns) return 1;
    for (int i = 0; i < conns; i++) all_conns[i].fd = -1;
    pthread_barrier_init(&g_barrier, NULL, (unsigned)threads + 1);
    int next = 0;
    for (int i = 0; i < threads; i++) {
        struct worker *w = &ws[i];
        w->nconns = conns / threads + (i < conns % threads);
        w->conns = all_conns + next;
        next += w->nconns;
        w->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (pthread_create(&w->tid, NULL, run_worker, w) != 0) {
            fprintf(stderr, "pingload: pthread_create failed\n");
            return 1;
        }
    }
    double t_start = now();
    g_t_measure = t_start + warmup;
    g_t_end = g_t_measure + duration;
    pthread_barrier_wait(&g_barrier);
    long requests = 0, errors = 0, non200 = 0, all_done = 0;
    size_t total = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(ws[i].tid, NULL);
        requests += ws[i].requests;
        errors += ws[i].errors;
        non200 += ws[i].non200;
        all_done += ws[i].done;
        total += ws[i].nlat;
    }
    double measured_end = now();
    if (measured_end > g_t_end) measured_end = g_t_end;
    double seconds = measured_end - g_t_measure;
    if (seconds <= 0) seconds = duration;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec * 1e-6;
    uint32_t *all = malloc((total ? total : 1) * sizeof *all);
    size_t k = 0;
    for (int i = 0; i < threads; i++) {
        if (ws[i].nlat) memcpy(all + k, ws[i].lat, ws[i].nlat * sizeof *all);
        k += ws[i].nlat;
        free(ws[i].lat);
    }
    qsort(all, total, sizeof *all, cmp_u32);
#define PCT(p) (total ? all[(size_t)((double)(p) / 100.0 * (double)(total - 1) + 0.5)] / 1e4 : -1.0)
    double sum = 0;
    for (size_t i = 0; i < total; i++) sum += all[i] / 1e4;
    printf("{\"target\": \"%s\", \"connections\": %d, \"threads\": %d, "
           "\"new_connection_per_request\": %s, \"requests\": %ld, \"errors\": %ld, "
           "\"non_200\": %ld, \"all_requests\": %ld, \"seconds\": %.3f, \"rps\": %.1f, \"mean_ms\": %.4f, "
           "\"p50_ms\": %.4f, \"p90_ms\": %.4f, \"p99_ms\": %.4f, \"max_ms\": %.4f, "
           "\"tls_version\": \"%s\", \"tls_cipher\": \"%s\", \"alpn\": \"%s\", "
           "\"client_cpu_seconds\": %.3f, \"client_cpu_us_per_request\": %.1f, "
           "\"resumed_handshakes\": %ld, \"first_error\": \"",
           target, conns, threads, g_new_conn ? "true" : "false", requests, errors, non200, all_done, seconds,
           requests / seconds, total ? sum / (double)total : -1.0, PCT(50), PCT(90), PCT(99),
           total ? all[total - 1] / 1e4 : -1.0, g_tls_version, g_tls_cipher, g_alpn, cpu,
           all_done ? cpu * 1e6 / (double)all_done : -1.0, g_resumed);
    for (const char *p = g_first_error; *p; p++) {
        if (*p == '"' || *p == '\\') putchar('\\');
        if ((unsigned char)*p >= 0x20) putchar(*p);
    }
    printf("\"}\n");
    free(all);
    return 0;
}
