/* The blocking flow (mcp_oauth2_validator_authorize, built-in ureq transport) against the
 * real oidc-provider authorization server of tests/node, started by scripts/test-ffi.sh.
 *
 * Environment: AS_URL (issuer), RESOURCE (the resource the tokens were issued for),
 * TOKEN, TOKEN_THREADS, TOKEN_SLOW, TOKEN_SANS_IO (valid opaque tokens for RESOURCE, scope
 * "mcp:read mcp:write", client "app"), TOKEN_NO_AUD (issued without a resource),
 * JWT_RESOURCE and TOKEN_JWT, TOKEN_JWT2 (RFC 9068 JWTs the AS issued for JWT_RESOURCE). */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdint.h>
#include <unistd.h>

#include "check.h"

static const char *env(const char *name) {
    const char *v = getenv(name);
    if (v == NULL || *v == '\0') {
        fprintf(stderr, "test_blocking: %s is not set\n", name);
        exit(2);
    }
    return v;
}

/* One number from the AS's /__test/stats counters (via curl). */
static long as_stat(const char *field) {
    char cmd[512], out[512];
    snprintf(cmd, sizeof cmd, "curl -sf '%s/__test/stats'", env("AS_URL"));
    FILE *f = popen(cmd, "r");
    if (f == NULL) return -1;
    size_t n = fread(out, 1, sizeof out - 1, f);
    pclose(f);
    out[n] = '\0';
    char key[64];
    snprintf(key, sizeof key, "\"%s\":", field);
    const char *at = strstr(out, key);
    return at == NULL ? -1 : strtol(at + strlen(key), NULL, 10);
}

static void as_post(const char *path) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "curl -sf -X POST '%s%s' > /dev/null", env("AS_URL"), path);
    CHECK(system(cmd) == 0);
}

static mcp_oauth2_validator *validator_for(const char *endpoint, unsigned timeout_ms) {
    char config[1024];
    snprintf(config, sizeof config,
             "{\"resource\": \"%s\", \"authorization_servers\": [\"%s\"],"
             " \"introspection_endpoint\": \"%s\", \"client_id\": \"gateway\","
             " \"client_secret\": \"gateway-secret\", \"timeout\": %u, \"scopes_required\": [\"mcp:read\"],"
             " \"claim_to_header\": [{\"claim\": \"client_id\", \"header\": \"X-Client-Id\"}]}",
             env("RESOURCE"), env("AS_URL"), endpoint, timeout_ms);
    return new_validator(config);
}

static mcp_oauth2_decision *authorize(const mcp_oauth2_validator *v, const char *token) {
    char auth[4096];
    snprintf(auth, sizeof auth, "Bearer %s", token);
    mcp_oauth2_header h[2] = {hdr("Authorization", auth), hdr("X-Client-Id", "spoofed")};
    mcp_oauth2_request r = req("POST", "/mcp", h, 2);
    mcp_oauth2_decision *d = NULL;
    CHECK_RES(mcp_oauth2_validator_authorize(v, &r, &d), MCP_OAUTH2_RESULT_OK);
    CHECK(d != NULL);
    return d;
}

static int allowed(const mcp_oauth2_decision *d) {
    bool a = false;
    return mcp_oauth2_decision_allowed(d, &a) == MCP_OAUTH2_RESULT_OK && a;
}

#define THREADS 8
#define ROUNDS 25

struct worker {
    const mcp_oauth2_validator *v;
    pthread_barrier_t *start;
    int allowed;
};

static void *work(void *arg) {
    struct worker *w = arg;
    pthread_barrier_wait(w->start);
    for (int i = 0; i < ROUNDS; i++) {
        mcp_oauth2_decision *d = authorize(w->v, env("TOKEN_THREADS"));
        mcp_oauth2_str name, value;
        if (allowed(d) && mcp_oauth2_decision_set_header(d, 0, &name, &value) == MCP_OAUTH2_RESULT_OK &&
            str_eq(value, "app")) {
            w->allowed++;
        }
        mcp_oauth2_decision_free(&d);
    }
    return NULL;
}

/* A JWT-mode validator: no introspection endpoint, keys found by discovery from AS_URL. */
static mcp_oauth2_validator *jwt_validator(void) {
    char config[1024];
    snprintf(config, sizeof config,
             "{\"resource\": \"%s\", \"authorization_servers\": [\"%s\"],"
             " \"claim_to_header\": [{\"claim\": \"client_id\", \"header\": \"X-Client-Id\"}]}",
             env("JWT_RESOURCE"), env("AS_URL"));
    return new_validator(config);
}

/* The host's own HTTP client (curl here): performs the request a pending describes and
 * resumes it with the answer, or fails it when there is none. Returns resume's result. */
static mcp_oauth2_result perform(mcp_oauth2_pending *p, mcp_oauth2_decision **d) {
    mcp_oauth2_str method, url, name, value;
    mcp_oauth2_bytes body;
    size_t n = 0;
    uint64_t timeout_ms = 0;
    CHECK_RES(mcp_oauth2_pending_method(p, &method), MCP_OAUTH2_RESULT_OK);
    CHECK_RES(mcp_oauth2_pending_url(p, &url), MCP_OAUTH2_RESULT_OK);
    CHECK_RES(mcp_oauth2_pending_header_count(p, &n), MCP_OAUTH2_RESULT_OK);
    CHECK_RES(mcp_oauth2_pending_body(p, &body), MCP_OAUTH2_RESULT_OK);
    CHECK_RES(mcp_oauth2_pending_timeout_ms(p, &timeout_ms), MCP_OAUTH2_RESULT_OK);
    char body_file[] = "/tmp/mcp-oauth2-body-XXXXXX";
    int fd = mkstemp(body_file);
    CHECK(fd >= 0);
    if (fd >= 0) {
        CHECK(write(fd, body.ptr, body.len) == (ssize_t)body.len);
        close(fd);
    }
    char cmd[8192];
    int at = snprintf(cmd, sizeof cmd, "curl -s -X %.*s --max-time %.3f", (int)method.len, method.ptr,
                      (double)timeout_ms / 1000.0);
    for (size_t i = 0; i < n; i++) {
        CHECK_RES(mcp_oauth2_pending_header(p, i, &name, &value), MCP_OAUTH2_RESULT_OK);
        CHECK(!str_contains(name, "'") && !str_contains(value, "'")); /* quoted for the shell below */
        at += snprintf(cmd + at, sizeof cmd - (size_t)at, " -H '%.*s: %.*s'", (int)name.len, name.ptr,
                       (int)value.len, value.ptr);
    }
    if (body.len > 0) at += snprintf(cmd + at, sizeof cmd - (size_t)at, " --data-binary @%s", body_file);
    snprintf(cmd + at, sizeof cmd - (size_t)at, " -w '\\n%%{content_type}\\n%%{http_code}' '%.*s'", (int)url.len,
             url.ptr);
    FILE *f = popen(cmd, "r");
    CHECK(f != NULL);
    size_t cap = 1 << 20, len = 0, got;
    char *out = malloc(cap + 1);
    CHECK(out != NULL);
    while (f != NULL && out != NULL && len < cap && (got = fread(out + len, 1, cap - len, f)) > 0) len += got;
    int exit_status = f != NULL ? pclose(f) : -1;
    unlink(body_file);
    mcp_oauth2_result r;
    /* The output ends with "\n<content type>\n<status>": split from the end. */
    char *status_at = NULL, *type_at = NULL;
    if (out != NULL) {
        out[len] = '\0';
        status_at = strrchr(out, '\n');
        if (status_at != NULL) {
            *status_at = '\0';
            type_at = strrchr(out, '\n');
        }
    }
    long status = status_at != NULL ? strtol(status_at + 1, NULL, 10) : 0;
    if (exit_status != 0 || type_at == NULL || status < 100 || status > 599) {
        r = mcp_oauth2_pending_fail(p, now_ms(), MCP_OAUTH2_TRANSPORT_ERROR_OTHER, S("curl failed"), d);
    } else {
        *type_at = '\0';
        mcp_oauth2_header ct = hdr("Content-Type", type_at + 1);
        r = mcp_oauth2_pending_resume(p, now_ms(), (uint16_t)status, &ct, 1, (const uint8_t *)out, strlen(out), d);
    }
    free(out);
    return r;
}

/* A C host driving the sans-I/O flow to a decision: it performs the requests it leads
 * (HTTP), waits for those another request leads (WAIT), and reads the state again after
 * every NULL decision. `calls` counts the HTTP requests it performed. */
static mcp_oauth2_decision *sans_io(const mcp_oauth2_validator *v, const char *path, const char *token, int *calls) {
    char auth[4096];
    snprintf(auth, sizeof auth, "Bearer %s", token);
    mcp_oauth2_header h[1] = {hdr("Authorization", auth)};
    mcp_oauth2_request r = req("GET", path, h, 1);
    mcp_oauth2_decision *d = NULL;
    mcp_oauth2_pending *p = NULL;
    mcp_oauth2_result res = mcp_oauth2_validator_begin(v, &r, now_ms(), &d, &p);
    CHECK_RES(res, MCP_OAUTH2_RESULT_OK);
    *calls = 0;
    for (int steps = 0; res == MCP_OAUTH2_RESULT_OK && d == NULL && steps < 10; steps++) {
        if (state_of(p) == MCP_OAUTH2_PENDING_STATE_HTTP) {
            res = perform(p, &d);
            (*calls)++;
        } else {
            CHECK(state_of(p) == MCP_OAUTH2_PENDING_STATE_WAIT);
            uint64_t max_wait = 0;
            bool ready = false;
            CHECK_RES(mcp_oauth2_pending_max_wait_ms(p, &max_wait), MCP_OAUTH2_RESULT_OK);
            CHECK_RES(mcp_oauth2_pending_wait(p, max_wait, &ready), MCP_OAUTH2_RESULT_OK);
            CHECK(ready);
            res = mcp_oauth2_pending_continue(p, now_ms(), &d);
        }
        CHECK_RES(res, MCP_OAUTH2_RESULT_OK);
    }
    mcp_oauth2_pending_free(&p);
    CHECK(d != NULL);
    return d;
}

/* 8 threads, each a request of a C host doing its own I/O, one new token at once. */
struct sans_io_worker {
    const mcp_oauth2_validator *v;
    pthread_barrier_t *start;
    int calls;
    int allowed;
};

static void *sans_io_work(void *arg) {
    struct sans_io_worker *w = arg;
    pthread_barrier_wait(w->start);
    mcp_oauth2_decision *d = sans_io(w->v, "/mcp", env("TOKEN_SANS_IO"), &w->calls);
    w->allowed = allowed(d);
    mcp_oauth2_decision_free(&d);
    return NULL;
}

int main(void) {
    char endpoint[512];
    snprintf(endpoint, sizeof endpoint, "%s/token/introspection", env("AS_URL"));
    mcp_oauth2_validator *v = validator_for(endpoint, 5000);
    mcp_oauth2_str s, s2;
    size_t n;

    /* A valid token: allowed, the client's spoofed header removed, the real one set. */
    long before = as_stat("introspections");
    mcp_oauth2_decision *d = authorize(v, env("TOKEN"));
    CHECK(allowed(d));
    CHECK_RES(mcp_oauth2_decision_remove_header_count(d, &n), MCP_OAUTH2_RESULT_OK);
    CHECK(n == 2);
    CHECK_RES(mcp_oauth2_decision_remove_header(d, 1, &s), MCP_OAUTH2_RESULT_OK);
    CHECK(str_eq(s, "X-Client-Id"));
    CHECK_RES(mcp_oauth2_decision_set_header(d, 0, &s, &s2), MCP_OAUTH2_RESULT_OK);
    CHECK(str_eq(s, "X-Client-Id") && str_eq(s2, "app"));
    CHECK_RES(mcp_oauth2_decision_client_id(d, &s), MCP_OAUTH2_RESULT_OK);
    CHECK(str_eq(s, "app"));
    CHECK_RES(mcp_oauth2_decision_scope(d, &s), MCP_OAUTH2_RESULT_OK);
    CHECK(str_eq(s, "mcp:read mcp:write"));
    int64_t until = 0;
    CHECK_RES(mcp_oauth2_decision_valid_until(d, &until), MCP_OAUTH2_RESULT_OK);
    CHECK(until > 0);
    mcp_oauth2_decision_free(&d);
    CHECK(as_stat("introspections") == before + 1);

    /* Again: a cache hit, no second introspection. */
    d = authorize(v, env("TOKEN"));
    CHECK(allowed(d));
    mcp_oauth2_decision_free(&d);
    CHECK(as_stat("introspections") == before + 1);

    /* Evict (after a revocation): the AS is asked again. */
    bool evicted = false;
    CHECK_RES(mcp_oauth2_validator_evict(v, S(env("TOKEN")), &evicted), MCP_OAUTH2_RESULT_OK);
    CHECK(evicted);
    d = authorize(v, env("TOKEN"));
    CHECK(allowed(d));
    mcp_oauth2_decision_free(&d);
    CHECK(as_stat("introspections") == before + 2);

    /* A token without an audience: 401 invalid_token. An unknown token: inactive. */
    d = authorize(v, env("TOKEN_NO_AUD"));
    CHECK(status_of(d) == 401);
    CHECK(reason_is(d, "audience_mismatch"));
    CHECK(str_contains(response_header(d, "WWW-Authenticate"), "error=\"invalid_token\""));
    mcp_oauth2_decision_free(&d);
    d = authorize(v, "not-a-token-the-as-issued");
    CHECK(status_of(d) == 401);
    CHECK(reason_is(d, "token_inactive"));
    mcp_oauth2_decision_free(&d);

    /* One validator, 8 threads, one new token at the same moment: every thread is allowed
     * and the AS sees exactly one introspection (single flight, then the cache). */
    before = as_stat("introspections");
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, THREADS);
    pthread_t threads[THREADS];
    struct worker workers[THREADS];
    for (int i = 0; i < THREADS; i++) {
        workers[i].v = v;
        workers[i].start = &start;
        workers[i].allowed = 0;
        CHECK(pthread_create(&threads[i], NULL, work, &workers[i]) == 0);
    }
    int total = 0;
    for (int i = 0; i < THREADS; i++) {
        CHECK(pthread_join(threads[i], NULL) == 0);
        total += workers[i].allowed;
    }
    pthread_barrier_destroy(&start);
    CHECK(total == THREADS * ROUNDS);
    long after = as_stat("introspections");
    if (after != before + 1) fprintf(stderr, "  introspections: %ld -> %ld\n", before, after);
    CHECK(after == before + 1);

    /* A slow AS: past the configured timeout the answer is 503, never 401. */
    /* (1 s: ample for a local call even under valgrind, so the retry below cannot time out.) */
    mcp_oauth2_validator *fast = validator_for(endpoint, 1000);
    as_post("/__test/delay?ms=2500");
    d = authorize(fast, env("TOKEN_SLOW"));
    as_post("/__test/delay?ms=0");
    CHECK(status_of(d) == 503);
    CHECK(reason_is(d, "authorization_server_unavailable"));
    CHECK_RES(mcp_oauth2_decision_detail(d, &s), MCP_OAUTH2_RESULT_OK);
    CHECK(str_contains(s, "timed out"));
    CHECK_RES(mcp_oauth2_decision_response_header_value(d, S("WWW-Authenticate"), &s), MCP_OAUTH2_RESULT_ABSENT);
    mcp_oauth2_decision_free(&d);
    /* Not cached: with the AS fast again the same token is allowed. */
    d = authorize(fast, env("TOKEN_SLOW"));
    CHECK(allowed(d));
    mcp_oauth2_decision_free(&d);
    mcp_oauth2_validator_free(&fast);

    /* Nothing listens on port 1: 503. */
    mcp_oauth2_validator *down = validator_for("http://127.0.0.1:1/introspect", 2000);
    d = authorize(down, env("TOKEN"));
    CHECK(status_of(d) == 503);
    CHECK_RES(mcp_oauth2_decision_detail(d, &s), MCP_OAUTH2_RESULT_OK);
    CHECK(str_contains(s, "connection failed"));
    mcp_oauth2_decision_free(&d);
    mcp_oauth2_validator_free(&down);

    /* A C host doing its own I/O (curl) with 8 threads and one new token: the threads
     * that begin while the leader's introspection is in flight wait for it, the others hit
     * the cache. One introspection at the AS, one HTTP request performed in all. */
    before = as_stat("introspections");
    pthread_barrier_init(&start, NULL, THREADS);
    struct sans_io_worker sans[THREADS];
    for (int i = 0; i < THREADS; i++) {
        sans[i].v = v;
        sans[i].start = &start;
        sans[i].calls = 0;
        sans[i].allowed = 0;
        CHECK(pthread_create(&threads[i], NULL, sans_io_work, &sans[i]) == 0);
    }
    int performed = 0, sans_allowed = 0;
    for (int i = 0; i < THREADS; i++) {
        CHECK(pthread_join(threads[i], NULL) == 0);
        performed += sans[i].calls;
        sans_allowed += sans[i].allowed;
    }
    pthread_barrier_destroy(&start);
    CHECK(sans_allowed == THREADS);
    CHECK(performed == 1);
    after = as_stat("introspections");
    if (after != before + 1) fprintf(stderr, "  sans-I/O introspections: %ld -> %ld\n", before, after);
    CHECK(after == before + 1);

    mcp_oauth2_validator_free(&v);

    /* Local JWT validation, sans-I/O: begin asks for the AS metadata, resume asks for the
     * keys (NULL decision), the next resume decides. No introspection is made. */
    long intro = as_stat("introspections");
    long discovery = as_stat("discovery"), jwks = as_stat("jwks");
    mcp_oauth2_validator *jv = jwt_validator();
    int steps = 0;
    d = sans_io(jv, "/jwt/mcp", env("TOKEN_JWT"), &steps);
    CHECK(allowed(d));
    CHECK(steps >= 2);
    CHECK(as_stat("discovery") >= discovery + 1 && as_stat("jwks") == jwks + 1);
    CHECK_RES(mcp_oauth2_decision_set_header(d, 0, &s, &s2), MCP_OAUTH2_RESULT_OK);
    CHECK(str_eq(s, "X-Client-Id") && str_eq(s2, "app"));
    mcp_oauth2_decision_free(&d);
    /* Keys are cached in the validator: a second JWT is decided by begin alone. */
    d = sans_io(jv, "/jwt/mcp", env("TOKEN_JWT2"), &steps);
    CHECK(allowed(d));
    CHECK(steps == 0);
    mcp_oauth2_decision_free(&d);
    /* A tampered JWT: 401 invalid_token (never 503). */
    char bad[4096];
    snprintf(bad, sizeof bad, "%sx", env("TOKEN_JWT"));
    d = sans_io(jv, "/jwt/mcp", bad, &steps);
    CHECK(status_of(d) == 401);
    mcp_oauth2_decision_free(&d);
    mcp_oauth2_validator_free(&jv);
    /* The blocking flow in JWT mode, on a fresh validator (its own discovery). */
    jv = jwt_validator();
    d = authorize(jv, env("TOKEN_JWT"));
    CHECK(allowed(d));
    mcp_oauth2_decision_free(&d);
    mcp_oauth2_validator_free(&jv);
    CHECK(as_stat("introspections") == intro);

    return finish("test_blocking");
}
