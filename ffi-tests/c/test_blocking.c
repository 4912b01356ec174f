/* The blocking flow (mcp_oauth2_validator_authorize, built-in ureq transport) against the
 * real oidc-provider authorization server of tests/node, started by scripts/test-ffi.sh.
 *
 * Environment: AS_URL (issuer), RESOURCE (the resource the tokens were issued for),
 * TOKEN, TOKEN_THREADS, TOKEN_SLOW (valid opaque tokens for RESOURCE, scope
 * "mcp:read mcp:write", client "app"), TOKEN_NO_AUD (issued without a resource),
 * JWT_RESOURCE and TOKEN_JWT, TOKEN_JWT2 (RFC 9068 JWTs the AS issued for JWT_RESOURCE). */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdint.h>

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

/* Performs a pending GET (AS metadata or JWKS) with curl; returns the body (malloc'd). */
static char *perform_get(const mcp_oauth2_pending *p, size_t *len) {
    mcp_oauth2_str method, url;
    CHECK_RES(mcp_oauth2_pending_method(p, &method), MCP_OAUTH2_RESULT_OK);
    CHECK(str_eq(method, "GET"));
    CHECK_RES(mcp_oauth2_pending_url(p, &url), MCP_OAUTH2_RESULT_OK);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "curl -sf '%.*s'", (int)url.len, (const char *)url.ptr);
    FILE *f = popen(cmd, "r");
    CHECK(f != NULL);
    size_t cap = 1 << 16, n = 0;
    char *body = malloc(cap);
    CHECK(body != NULL);
    size_t got;
    while (body != NULL && (got = fread(body + n, 1, cap - n, f)) > 0) n += got;
    pclose(f);
    *len = n;
    return body;
}

/* The sans-I/O flow in JWT mode: each NULL decision from resume means one more request
 * (metadata, then keys); the host loops until the decision. Returns the decision. */
static mcp_oauth2_decision *jwt_sans_io(const mcp_oauth2_validator *v, const char *token, int *steps) {
    char auth[4096];
    snprintf(auth, sizeof auth, "Bearer %s", token);
    mcp_oauth2_header h[1] = {hdr("Authorization", auth)};
    mcp_oauth2_request r = req("GET", "/jwt/mcp", h, 1);
    mcp_oauth2_decision *d = NULL;
    mcp_oauth2_pending *p = NULL;
    CHECK_RES(mcp_oauth2_validator_begin(v, &r, &d, &p), MCP_OAUTH2_RESULT_OK);
    *steps = 0;
    while (d == NULL && p != NULL && *steps < 10) {
        size_t len = 0;
        char *body = perform_get(p, &len);
        mcp_oauth2_header ct[1] = {hdr("Content-Type", "application/json")};
        CHECK_RES(mcp_oauth2_pending_resume(p, 200, ct, 1, (const uint8_t *)body, len, &d), MCP_OAUTH2_RESULT_OK);
        free(body);
        (*steps)++;
    }
    mcp_oauth2_pending_free(&p);
    CHECK(d != NULL);
    return d;
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

    mcp_oauth2_validator_free(&v);

    /* Local JWT validation, sans-I/O: begin asks for the AS metadata, resume asks for the
     * keys (NULL decision), the next resume decides. No introspection is made. */
    long intro = as_stat("introspections");
    mcp_oauth2_validator *jv = jwt_validator();
    int steps = 0;
    d = jwt_sans_io(jv, env("TOKEN_JWT"), &steps);
    CHECK(allowed(d));
    CHECK(steps >= 2);
    CHECK_RES(mcp_oauth2_decision_set_header(d, 0, &s, &s2), MCP_OAUTH2_RESULT_OK);
    CHECK(str_eq(s, "X-Client-Id") && str_eq(s2, "app"));
    mcp_oauth2_decision_free(&d);
    /* Keys are cached in the validator: a second JWT is decided by begin alone. */
    d = jwt_sans_io(jv, env("TOKEN_JWT2"), &steps);
    CHECK(allowed(d));
    CHECK(steps == 0);
    mcp_oauth2_decision_free(&d);
    /* A tampered JWT: 401 invalid_token (never 503). */
    char bad[4096];
    snprintf(bad, sizeof bad, "%sx", env("TOKEN_JWT"));
    d = jwt_sans_io(jv, bad, &steps);
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
