/* The C ABI without a network: lifecycle and double frees, NULL for every pointer
 * parameter, outputs untouched on failure, invalid configurations, the sans-I/O flow fed
 * canned authorization-server responses for every row of the response table
 * (docs/configuration.md, 7.2), and one validator shared by 8 threads. Single flight, the
 * pending states and the policy accessors are in test_flow.c. Runs under ASan+UBSan and
 * under valgrind (scripts/test-ffi.sh). */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include "check.h"

static const char *CONFIG =
    "{\"resource\": \"https://mcp.example.com/mcp\","
    " \"authorization_servers\": [\"https://as.example.com\"],"
    " \"introspection_endpoint\": \"https://as.example.com/introspect\","
    " \"client_id\": \"gateway\", \"client_secret\": \"gateway-secret\","
    " \"scopes_required\": [\"mcp:read\"],"
    " \"claim_to_header\": [{\"claim\": \"sub\", \"header\": \"X-User-Id\"}]}";

static const char *METADATA_URL = "https://mcp.example.com/mcp/.well-known/oauth-protected-resource";

/* A sentinel that no function may write on failure. */
#define SENTINEL ((void *)(uintptr_t)0x5e17)

static mcp_oauth2_pending *begin_pending(const mcp_oauth2_validator *v, const char *authorization) {
    mcp_oauth2_header h = hdr("Authorization", authorization);
    mcp_oauth2_request r = req("POST", "/mcp", &h, 1);
    mcp_oauth2_decision *d = SENTINEL;
    mcp_oauth2_pending *p = SENTINEL;
    CHECK_RES(mcp_oauth2_validator_begin(v, &r, now_ms(), &d, &p), MCP_OAUTH2_RESULT_OK);
    CHECK(d == NULL);
    CHECK(p != NULL && p != SENTINEL);
    return p == SENTINEL ? NULL : p;
}

/* Begins with a bearer token and resumes with a canned JSON answer. */
static mcp_oauth2_decision *introspected(const mcp_oauth2_validator *v, const char *token, unsigned status,
                                         const char *content_type, const char *body) {
    char auth[256];
    snprintf(auth, sizeof auth, "Bearer %s", token);
    mcp_oauth2_pending *p = begin_pending(v, auth);
    mcp_oauth2_header ct = hdr("Content-Type", content_type);
    mcp_oauth2_decision *d = NULL;
    CHECK_RES(mcp_oauth2_pending_resume(p, now_ms(), (uint16_t)status, &ct, 1, S(body), &d), MCP_OAUTH2_RESULT_OK);
    CHECK(d != NULL);
    mcp_oauth2_pending_free(&p);
    return d;
}

static mcp_oauth2_decision *decided_at_begin(const mcp_oauth2_validator *v, const mcp_oauth2_request *r) {
    mcp_oauth2_decision *d = NULL;
    mcp_oauth2_pending *p = NULL;
    CHECK_RES(mcp_oauth2_validator_begin(v, r, now_ms(), &d, &p), MCP_OAUTH2_RESULT_OK);
    CHECK(p == NULL);
    CHECK(d != NULL);
    mcp_oauth2_pending_free(&p);
    return d;
}

static int challenge_is(const mcp_oauth2_decision *d, const char *want) {
    mcp_oauth2_str c = response_header(d, "WWW-Authenticate");
    if (!str_eq(c, want)) {
        fprintf(stderr, "  WWW-Authenticate: %.*s\n  want:             %s\n", (int)c.len, c.ptr, want);
        return 0;
    }
    return 1;
}

static int no_challenge(const mcp_oauth2_decision *d) {
    mcp_oauth2_str c;
    return mcp_oauth2_decision_response_header_value(d, S("WWW-Authenticate"), &c) == MCP_OAUTH2_RESULT_ABSENT;
}

static void test_result_names(void) {
    mcp_oauth2_str s = {NULL, 0};
    CHECK_RES(mcp_oauth2_result_name(MCP_OAUTH2_RESULT_OK, &s), MCP_OAUTH2_RESULT_OK);
    CHECK(str_eq(s, "ok"));
    CHECK_RES(mcp_oauth2_result_name(MCP_OAUTH2_RESULT_PANIC, &s), MCP_OAUTH2_RESULT_OK);
    CHECK(str_eq(s, "panic"));
    CHECK_RES(mcp_oauth2_result_name(MCP_OAUTH2_RESULT_ALREADY_RESUMED, &s), MCP_OAUTH2_RESULT_OK);
    CHECK(str_eq(s, "already_resumed"));
    CHECK_RES(mcp_oauth2_result_name(MCP_OAUTH2_RESULT_WRONG_STATE, &s), MCP_OAUTH2_RESULT_OK);
    CHECK(str_eq(s, "wrong_state"));
    CHECK_RES(mcp_oauth2_result_name(999, &s), MCP_OAUTH2_RESULT_OUT_OF_RANGE);
    CHECK_RES(mcp_oauth2_result_name(0, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    /* The numbers are part of the ABI. */
    CHECK(MCP_OAUTH2_RESULT_OK == 0 && MCP_OAUTH2_RESULT_NULL_PARAMETER == 1 && MCP_OAUTH2_RESULT_PANIC == 2 &&
          MCP_OAUTH2_RESULT_INVALID_CONFIG == 3 && MCP_OAUTH2_RESULT_UNSUPPORTED == 4 &&
          MCP_OAUTH2_RESULT_INVALID_ARGUMENT == 5 && MCP_OAUTH2_RESULT_ABSENT == 6 &&
          MCP_OAUTH2_RESULT_OUT_OF_RANGE == 7 && MCP_OAUTH2_RESULT_ALREADY_RESUMED == 8 &&
          MCP_OAUTH2_RESULT_WRONG_STATE == 9);
    CHECK(MCP_OAUTH2_PENDING_STATE_HTTP == 1 && MCP_OAUTH2_PENDING_STATE_WAIT == 2 &&
          MCP_OAUTH2_PENDING_STATE_DONE == 3);
    CHECK(MCP_OAUTH2_REFUSAL_CONSUMER_NOT_FOUND == 1 && MCP_OAUTH2_REFUSAL_CONSUMER_GROUPS_NOT_FOUND == 2 &&
          MCP_OAUTH2_REFUSAL_CONSUMER_LOOKUP_FAILED == 3);
    CHECK(MCP_OAUTH2_READS_BODY == 1 && MCP_OAUTH2_READS_FORWARDED == 2 && MCP_OAUTH2_READS_ORIGIN == 4);
}

/* Expects validator_new to refuse `json` with `want`, an error naming `field` (NULL: no
 * field) and a message containing `message`. */
static void expect_config_error(const char *json, size_t len, mcp_oauth2_result want, const char *field,
                                const char *message) {
    mcp_oauth2_validator *v = SENTINEL;
    mcp_oauth2_error *err = NULL;
    CHECK_RES(mcp_oauth2_validator_new((const uint8_t *)json, len, &v, &err), want);
    CHECK(v == SENTINEL);
    CHECK(err != NULL);
    mcp_oauth2_str f = {NULL, 0}, m = {NULL, 0};
    if (field == NULL) {
        CHECK_RES(mcp_oauth2_error_field(err, &f), MCP_OAUTH2_RESULT_ABSENT);
    } else {
        CHECK_RES(mcp_oauth2_error_field(err, &f), MCP_OAUTH2_RESULT_OK);
        CHECK(str_eq(f, field));
    }
    CHECK_RES(mcp_oauth2_error_message(err, &m), MCP_OAUTH2_RESULT_OK);
    if (!str_contains(m, message)) {
        fprintf(stderr, "  error message: %.*s (want it to contain %s)\n", (int)m.len, m.ptr, message);
        CHECK(0);
    }
    if (field != NULL) CHECK(m.len > f.len && memcmp(m.ptr, f.ptr, f.len) == 0); /* "field: message" */
    /* Secrets never appear in errors. */
    CHECK(!str_contains(m, "gateway-secret"));
    mcp_oauth2_error_free(&err);
    CHECK(err == NULL);
    mcp_oauth2_error_free(&err); /* second free through the same variable: no-op */
    /* error_out is optional. */
    v = SENTINEL;
    CHECK_RES(mcp_oauth2_validator_new((const uint8_t *)json, len, &v, NULL), want);
    CHECK(v == SENTINEL);
}

static void test_invalid_config(void) {
    const char *bad_json = "{\"resource\": ";
    expect_config_error(bad_json, strlen(bad_json), MCP_OAUTH2_RESULT_INVALID_CONFIG, NULL, "invalid JSON");
    const char *unknown =
        "{\"resource\": \"https://mcp.example.com/mcp\", \"authorization_servers\": [\"https://as.example.com\"],"
        " \"introspection_endpoint\": \"https://as.example.com/i\", \"client_secret\": \"gateway-secret\","
        " \"introspection_endpiont\": \"x\"}";
    expect_config_error(unknown, strlen(unknown), MCP_OAUTH2_RESULT_INVALID_CONFIG, "introspection_endpiont",
                        "unknown field");
    const char *bad_header =
        "{\"resource\": \"https://mcp.example.com/mcp\", \"authorization_servers\": [\"https://as.example.com\"],"
        " \"introspection_endpoint\": \"https://as.example.com/i\","
        " \"claim_to_header\": [{\"claim\": \"sub\", \"header\": \"Bad Header\"}]}";
    expect_config_error(bad_header, strlen(bad_header), MCP_OAUTH2_RESULT_INVALID_CONFIG,
                        "claim_to_header[0].header", "");
    const char *bad_url = "{\"resource\": \"not a url\", \"authorization_servers\": [\"https://as.example.com\"]}";
    expect_config_error(bad_url, strlen(bad_url), MCP_OAUTH2_RESULT_INVALID_CONFIG, "resource", "");
    const char *missing = "{\"authorization_servers\": [\"https://as.example.com\"]}";
    expect_config_error(missing, strlen(missing), MCP_OAUTH2_RESULT_INVALID_CONFIG, NULL, "resource");
    /* Every client_auth is implemented now: a bad certificate is an invalid configuration. */
    const char *bad_cert =
        "{\"resource\": \"https://mcp.example.com/mcp\", \"authorization_servers\": [\"https://as.example.com\"],"
        " \"introspection_endpoint\": \"https://as.example.com/i\", \"client_id\": \"gw\","
        " \"client_auth\": \"tls_client_auth\", \"tls_client_auth_cert\": \"x\", \"tls_client_auth_key\": \"y\"}";
    expect_config_error(bad_cert, strlen(bad_cert), MCP_OAUTH2_RESULT_INVALID_CONFIG, "tls_client_auth_cert",
                        "no PEM certificate");
    const char not_utf8[] = "{\"resource\": \"\xff\"}";
    expect_config_error(not_utf8, sizeof not_utf8 - 1, MCP_OAUTH2_RESULT_INVALID_CONFIG, NULL, "UTF-8");
    const char *not_object = "[1, 2]";
    expect_config_error(not_object, strlen(not_object), MCP_OAUTH2_RESULT_INVALID_CONFIG, NULL, "object");
    /* An empty configuration (NULL with length 0 is an empty string). */
    expect_config_error(NULL, 0, MCP_OAUTH2_RESULT_INVALID_CONFIG, NULL, "invalid JSON");
}

/* Every pointer parameter of every function, NULL in turn: NULL_PARAMETER, nothing written. */
static void test_null_parameters(const mcp_oauth2_validator *v) {
    mcp_oauth2_header h = hdr("Authorization", "Bearer null-test");
    mcp_oauth2_request r = req("POST", "/mcp", &h, 1);
    mcp_oauth2_decision *d = SENTINEL;
    mcp_oauth2_pending *p = SENTINEL;
    mcp_oauth2_validator *nv = SENTINEL;
    mcp_oauth2_str s = {SENTINEL, 7};
    mcp_oauth2_str s2 = {SENTINEL, 7};
    mcp_oauth2_bytes b = {SENTINEL, 7};
    size_t n = 77;
    bool flag = true;
    uint16_t status = 77;
    int64_t until = 77;
    uint64_t ms = 77;

    CHECK_RES(mcp_oauth2_validator_new(NULL, 5, &nv, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_validator_new(S(CONFIG), NULL, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK(nv == SENTINEL);

    CHECK_RES(mcp_oauth2_validator_begin(NULL, &r, now_ms(), &d, &p), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_validator_begin(v, NULL, now_ms(), &d, &p), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_validator_begin(v, &r, now_ms(), NULL, &p), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_validator_begin(v, &r, now_ms(), &d, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_validator_authorize(NULL, &r, &d), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_validator_authorize(v, NULL, &d), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_validator_authorize(v, &r, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK(d == SENTINEL && p == SENTINEL);

    /* NULL pointers with non-zero lengths inside the request. */
    mcp_oauth2_request bad = r;
    bad.method = NULL;
    CHECK_RES(mcp_oauth2_validator_begin(v, &bad, now_ms(), &d, &p), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    bad = r;
    bad.path = NULL;
    CHECK_RES(mcp_oauth2_validator_begin(v, &bad, now_ms(), &d, &p), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    bad = r;
    bad.headers = NULL;
    CHECK_RES(mcp_oauth2_validator_begin(v, &bad, now_ms(), &d, &p), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    mcp_oauth2_header nh = h;
    nh.name = NULL;
    bad = req("POST", "/mcp", &nh, 1);
    CHECK_RES(mcp_oauth2_validator_begin(v, &bad, now_ms(), &d, &p), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    nh = h;
    nh.value = NULL;
    bad = req("POST", "/mcp", &nh, 1);
    CHECK_RES(mcp_oauth2_validator_begin(v, &bad, now_ms(), &d, &p), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    bad = r;
    bad.body = NULL;
    bad.body_len = 3; /* NULL body means "no body": the length is ignored */
    mcp_oauth2_decision *d2 = NULL;
    mcp_oauth2_pending *p2 = NULL;
    CHECK_RES(mcp_oauth2_validator_begin(v, &bad, now_ms(), &d2, &p2), MCP_OAUTH2_RESULT_OK);
    mcp_oauth2_decision_free(&d2);
    mcp_oauth2_pending_free(&p2);
    CHECK(d == SENTINEL && p == SENTINEL);

    CHECK_RES(mcp_oauth2_validator_evict(NULL, S("t"), &flag), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_validator_evict(v, NULL, 1, &flag), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK(flag == true);
    CHECK_RES(mcp_oauth2_validator_evict(v, S("t"), NULL), MCP_OAUTH2_RESULT_OK); /* evicted_out optional */
    CHECK_RES(mcp_oauth2_validator_metadata_document(NULL, &b), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_validator_metadata_document(v, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK(b.ptr == SENTINEL);
    uint32_t reads = 77;
    CHECK_RES(mcp_oauth2_validator_reads(NULL, &reads), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_validator_reads(v, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_validator_max_request_body_size(NULL, &ms), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_validator_max_request_body_size(v, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_validator_remove_header_count(NULL, &n), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_validator_remove_header_count(v, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_validator_remove_header(NULL, 0, &s), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_validator_remove_header(v, 0, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_validator_claim_header_count(NULL, &n), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_validator_claim_header_count(v, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_validator_claim_header(NULL, 0, &s), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_validator_claim_header(v, 0, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    uint8_t key[64];
    memset(key, 'z', sizeof key);
    CHECK_RES(mcp_oauth2_validator_token_cache_key(NULL, S("t"), key), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_validator_token_cache_key(v, NULL, 1, key), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_validator_token_cache_key(v, S("t"), NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK(reads == 77 && ms == 77 && n == 77 && s.ptr == SENTINEL && key[0] == 'z' && key[63] == 'z');

    /* Pending: every getter and both continuations. */
    mcp_oauth2_pending *live = begin_pending(v, "Bearer null-test");
    mcp_oauth2_header ct = hdr("Content-Type", "application/json");
    CHECK_RES(mcp_oauth2_pending_method(NULL, &s), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_method(live, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_url(NULL, &s), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_url(live, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_header_count(NULL, &n), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_header_count(live, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_header(NULL, 0, &s, &s2), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_header(live, 0, NULL, &s2), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_header(live, 0, &s, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_body(NULL, &b), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_body(live, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_timeout_ms(NULL, &ms), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_timeout_ms(live, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_cache_key(NULL, &s), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_cache_key(live, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_resume(NULL, now_ms(), 200, &ct, 1, S("{}"), &d), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_resume(live, now_ms(), 200, NULL, 1, S("{}"), &d), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_resume(live, now_ms(), 200, &ct, 1, NULL, 2, &d), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_resume(live, now_ms(), 200, &ct, 1, S("{}"), NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    mcp_oauth2_header nct = ct;
    nct.value = NULL;
    CHECK_RES(mcp_oauth2_pending_resume(live, now_ms(), 200, &nct, 1, S("{}"), &d), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_fail(NULL, now_ms(), MCP_OAUTH2_TRANSPORT_ERROR_CONNECT, S("x"), &d),
              MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_fail(live, now_ms(), MCP_OAUTH2_TRANSPORT_ERROR_CONNECT, NULL, 1, &d),
              MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_fail(live, now_ms(), MCP_OAUTH2_TRANSPORT_ERROR_CONNECT, S("x"), NULL),
              MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_resume_cached(NULL, now_ms(), now_ms(), 200, &ct, 1, S("{}"), &d),
              MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_resume_cached(live, now_ms(), now_ms(), 200, NULL, 1, S("{}"), &d),
              MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_resume_cached(live, now_ms(), now_ms(), 200, &ct, 1, NULL, 2, &d),
              MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_resume_cached(live, now_ms(), now_ms(), 200, &ct, 1, S("{}"), NULL),
              MCP_OAUTH2_RESULT_NULL_PARAMETER);
    mcp_oauth2_pending_state state = 77;
    CHECK_RES(mcp_oauth2_pending_get_state(NULL, &state), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_get_state(live, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK(state == 77);
    /* The wait functions, on a request waiting for `live` (same token). */
    mcp_oauth2_pending *waiter = begin_pending(v, "Bearer null-test");
    CHECK(state_of(waiter) == MCP_OAUTH2_PENDING_STATE_WAIT);
    CHECK_RES(mcp_oauth2_pending_is_ready(NULL, &flag), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_is_ready(waiter, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_wait(NULL, 0, &flag), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_wait(waiter, 0, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_max_wait_ms(NULL, &ms), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_max_wait_ms(waiter, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_on_ready(NULL, NULL, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_on_ready(waiter, NULL, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_continue(NULL, now_ms(), &d), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_pending_continue(waiter, now_ms(), NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK(flag == true && ms == 77 && d == SENTINEL);
    CHECK(state_of(waiter) == MCP_OAUTH2_PENDING_STATE_WAIT); /* unchanged by the failures */
    CHECK(s.ptr == SENTINEL && s2.ptr == SENTINEL && b.ptr == SENTINEL && n == 77 && ms == 77 && d == SENTINEL);
    /* None of the failures above consumed the pending. */
    CHECK_RES(mcp_oauth2_pending_fail(live, now_ms(), MCP_OAUTH2_TRANSPORT_ERROR_CONNECT, NULL, 0, &d), MCP_OAUTH2_RESULT_OK);
    CHECK(d != SENTINEL && d != NULL);
    CHECK(status_of(d) == 503);
    /* The waiter follows the leader: the AS failure is its answer too (503, never 401). */
    mcp_oauth2_decision *followed = NULL;
    CHECK_RES(mcp_oauth2_pending_continue(waiter, now_ms(), &followed), MCP_OAUTH2_RESULT_OK);
    CHECK(status_of(followed) == 503);
    mcp_oauth2_decision_free(&followed);
    mcp_oauth2_pending_free(&waiter);

    /* Decision: every accessor. */
    CHECK_RES(mcp_oauth2_decision_allowed(NULL, &flag), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_allowed(d, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_reason(NULL, &s), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_reason(d, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_detail(NULL, &s), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_detail(d, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_status(NULL, &status), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_status(d, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_response_header_count(NULL, &n), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_response_header_count(d, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_response_header(NULL, 0, &s, &s2), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_response_header(d, 0, NULL, &s2), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_response_header(d, 0, &s, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_response_header_value(NULL, S("Content-Type"), &s), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_response_header_value(d, NULL, 3, &s), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_response_header_value(d, S("Content-Type"), NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_body(NULL, &b), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_body(d, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_remove_header_count(NULL, &n), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_remove_header_count(d, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_remove_header(NULL, 0, &s), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_remove_header(d, 0, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_set_header_count(NULL, &n), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_set_header_count(d, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_set_header(NULL, 0, &s, &s2), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_set_header(d, 0, NULL, &s2), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_set_header(d, 0, &s, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_valid_until(NULL, &until), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_valid_until(d, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_subject(NULL, &s), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_subject(d, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_client_id(NULL, &s), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_client_id(d, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_scope(NULL, &s), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_scope(d, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_consumer(NULL, &s), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_consumer(d, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_credential(NULL, &s), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_credential(d, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_consumer_group_count(NULL, &n), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_consumer_group_count(d, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_consumer_group(NULL, 0, &s), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_consumer_group(d, 0, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_recheck_at(NULL, &ms), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_recheck_at(d, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_cache_ttl_ms(NULL, &ms), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_cache_ttl_ms(d, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_must_remove(NULL, S("X-User-Id"), &flag), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_must_remove(d, NULL, 3, &flag), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_must_remove(d, S("X-User-Id"), NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_claim_header_value(NULL, 0, &s), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_claim_header_value(d, 0, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    mcp_oauth2_decision *refused = SENTINEL;
    CHECK_RES(mcp_oauth2_decision_refuse(NULL, MCP_OAUTH2_REFUSAL_CONSUMER_NOT_FOUND, &refused),
              MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_refuse(d, MCP_OAUTH2_REFUSAL_CONSUMER_NOT_FOUND, NULL),
              MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_decision_internal_error(NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK(refused == SENTINEL && flag == true);
    CHECK(s.ptr == SENTINEL && s2.ptr == SENTINEL && b.ptr == SENTINEL && n == 77 && status == 77 && until == 77 &&
          ms == 77);

    /* Error object accessors. */
    mcp_oauth2_error *err = NULL;
    CHECK_RES(mcp_oauth2_validator_new(S("{}"), &nv, &err), MCP_OAUTH2_RESULT_INVALID_CONFIG);
    CHECK_RES(mcp_oauth2_error_message(NULL, &s), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_error_message(err, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_error_field(NULL, &s), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK_RES(mcp_oauth2_error_field(err, NULL), MCP_OAUTH2_RESULT_NULL_PARAMETER);
    CHECK(s.ptr == SENTINEL);

    /* Every _free accepts NULL and a variable holding NULL. */
    mcp_oauth2_validator_free(NULL);
    mcp_oauth2_pending_free(NULL);
    mcp_oauth2_decision_free(NULL);
    mcp_oauth2_error_free(NULL);
    mcp_oauth2_validator *vn = NULL;
    mcp_oauth2_pending *pn = NULL;
    mcp_oauth2_decision *dn = NULL;
    mcp_oauth2_error *en = NULL;
    mcp_oauth2_validator_free(&vn);
    mcp_oauth2_pending_free(&pn);
    mcp_oauth2_decision_free(&dn);
    mcp_oauth2_error_free(&en);

    mcp_oauth2_error_free(&err);
    mcp_oauth2_decision_free(&d);
    mcp_oauth2_pending_free(&live);
}

static void test_invalid_arguments(const mcp_oauth2_validator *v) {
    mcp_oauth2_decision *d = SENTINEL;
    mcp_oauth2_pending *p = SENTINEL;
    mcp_oauth2_header h = hdr("Authorization", "Bearer x");
    mcp_oauth2_request r = req("P\xffST", "/mcp", &h, 1);
    CHECK_RES(mcp_oauth2_validator_begin(v, &r, now_ms(), &d, &p), MCP_OAUTH2_RESULT_INVALID_ARGUMENT);
    r = req("POST", "/m\xff", &h, 1);
    CHECK_RES(mcp_oauth2_validator_begin(v, &r, now_ms(), &d, &p), MCP_OAUTH2_RESULT_INVALID_ARGUMENT);
    mcp_oauth2_header bad_name = hdr("Auth\xfe", "Bearer x");
    r = req("POST", "/mcp", &bad_name, 1);
    CHECK_RES(mcp_oauth2_validator_begin(v, &r, now_ms(), &d, &p), MCP_OAUTH2_RESULT_INVALID_ARGUMENT);
    r = req("POST", "/mcp", &h, 1);
    r.peer_addr = (const uint8_t *)"not-an-address";
    r.peer_addr_len = strlen("not-an-address");
    CHECK_RES(mcp_oauth2_validator_begin(v, &r, now_ms(), &d, &p), MCP_OAUTH2_RESULT_INVALID_ARGUMENT);
    CHECK(d == SENTINEL && p == SENTINEL);
    /* Valid peer addresses, with and without a port. */
    const char *addrs[] = {"192.0.2.1", "2001:db8::1", "192.0.2.1:5000", "[2001:db8::1]:443"};
    for (size_t i = 0; i < 4; i++) {
        mcp_oauth2_request ok = req("GET", "/mcp", NULL, 0);
        ok.peer_addr = (const uint8_t *)addrs[i];
        ok.peer_addr_len = strlen(addrs[i]);
        mcp_oauth2_decision *dd = decided_at_begin(v, &ok);
        CHECK(status_of(dd) == 401);
        mcp_oauth2_decision_free(&dd);
    }
    bool evicted = true;
    CHECK_RES(mcp_oauth2_validator_evict(v, S("\xff\xfe"), &evicted), MCP_OAUTH2_RESULT_INVALID_ARGUMENT);
    CHECK(evicted == true);

    /* An unknown transport error kind leaves the pending usable. */
    p = begin_pending(v, "Bearer bad-kind");
    CHECK_RES(mcp_oauth2_pending_fail(p, now_ms(), 0, S("x"), &d), MCP_OAUTH2_RESULT_INVALID_ARGUMENT);
    CHECK_RES(mcp_oauth2_pending_fail(p, now_ms(), 6, S("x"), &d), MCP_OAUTH2_RESULT_INVALID_ARGUMENT);
    CHECK(d == SENTINEL);
    mcp_oauth2_str url;
    CHECK_RES(mcp_oauth2_pending_url(p, &url), MCP_OAUTH2_RESULT_OK);
    CHECK_RES(mcp_oauth2_pending_fail(p, now_ms(), MCP_OAUTH2_TRANSPORT_ERROR_OTHER, S("\xff invalid utf-8 is replaced"), &d),
              MCP_OAUTH2_RESULT_OK);
    CHECK(status_of(d) == 503);
    mcp_oauth2_decision_free(&d);
    mcp_oauth2_pending_free(&p);
}

/* Objects outlive each other in any order; freeing twice through one variable is safe. */
static void test_lifecycle(void) {
    mcp_oauth2_validator *v = new_validator(CONFIG);
    mcp_oauth2_validator *v2 = v;
    mcp_oauth2_pending *p = begin_pending(v, "Bearer lifecycle");
    mcp_oauth2_request r = req("GET", "/mcp", NULL, 0);
    mcp_oauth2_decision *early = decided_at_begin(v, &r);

    /* The validator goes first: the pending and the decision keep working. */
    mcp_oauth2_validator_free(&v);
    CHECK(v == NULL);
    mcp_oauth2_validator_free(&v); /* no-op */
    (void)v2;                      /* (freeing through the copy v2 would be a real double free) */
    CHECK(status_of(early) == 401);

    mcp_oauth2_str key1 = {NULL, 0}, key2 = {NULL, 0};
    CHECK_RES(mcp_oauth2_pending_cache_key(p, &key1), MCP_OAUTH2_RESULT_OK);
    CHECK(key1.len == 64);
    CHECK(!str_contains(key1, "lifecycle"));
    mcp_oauth2_header ct = hdr("Content-Type", "application/json");
    const char *active = "{\"active\": true, \"sub\": \"alice\", \"aud\": \"https://mcp.example.com/mcp\","
                         " \"scope\": \"mcp:read\"}";
    mcp_oauth2_decision *d = NULL;
    uint64_t resumed_at = now_ms();
    CHECK_RES(mcp_oauth2_pending_resume(p, resumed_at, 200, &ct, 1, S(active), &d), MCP_OAUTH2_RESULT_OK);
    bool allowed = false;
    CHECK_RES(mcp_oauth2_decision_allowed(d, &allowed), MCP_OAUTH2_RESULT_OK);
    CHECK(allowed);
    /* The answer has no exp: valid_until is the token's exp, so there is none; the cached
     * answer ages out after cache_ttl_max (3600 s) from the resume's clock reading. */
    int64_t until = 77;
    CHECK_RES(mcp_oauth2_decision_valid_until(d, &until), MCP_OAUTH2_RESULT_ABSENT);
    CHECK(until == 77);
    uint64_t recheck = 0, ttl = 0;
    CHECK_RES(mcp_oauth2_decision_recheck_at(d, &recheck), MCP_OAUTH2_RESULT_OK);
    CHECK(recheck == resumed_at + 3600u * 1000u);
    CHECK_RES(mcp_oauth2_decision_cache_ttl_ms(d, &ttl), MCP_OAUTH2_RESULT_OK);
    CHECK(ttl == 3600u * 1000u);

    /* The pending is spent: a second resume is an error, never a second decision. */
    mcp_oauth2_decision *again = SENTINEL;
    CHECK_RES(mcp_oauth2_pending_resume(p, now_ms(), 200, &ct, 1, S(active), &again), MCP_OAUTH2_RESULT_ALREADY_RESUMED);
    CHECK_RES(mcp_oauth2_pending_fail(p, now_ms(), MCP_OAUTH2_TRANSPORT_ERROR_TIMEOUT, NULL, 0, &again),
              MCP_OAUTH2_RESULT_ALREADY_RESUMED);
    CHECK(again == SENTINEL);
    mcp_oauth2_str s;
    mcp_oauth2_bytes b;
    size_t n;
    uint64_t ms;
    CHECK_RES(mcp_oauth2_pending_method(p, &s), MCP_OAUTH2_RESULT_ALREADY_RESUMED);
    CHECK_RES(mcp_oauth2_pending_url(p, &s), MCP_OAUTH2_RESULT_ALREADY_RESUMED);
    CHECK_RES(mcp_oauth2_pending_header_count(p, &n), MCP_OAUTH2_RESULT_ALREADY_RESUMED);
    CHECK_RES(mcp_oauth2_pending_header(p, 0, &s, &s), MCP_OAUTH2_RESULT_ALREADY_RESUMED);
    CHECK_RES(mcp_oauth2_pending_body(p, &b), MCP_OAUTH2_RESULT_ALREADY_RESUMED);
    CHECK_RES(mcp_oauth2_pending_timeout_ms(p, &ms), MCP_OAUTH2_RESULT_ALREADY_RESUMED);
    CHECK_RES(mcp_oauth2_pending_cache_key(p, &key2), MCP_OAUTH2_RESULT_OK);
    CHECK(key2.len == 64 && memcmp(key1.ptr, key2.ptr, 64) == 0);
    CHECK(state_of(p) == MCP_OAUTH2_PENDING_STATE_DONE);
    bool ready = false;
    CHECK_RES(mcp_oauth2_pending_continue(p, now_ms(), &again), MCP_OAUTH2_RESULT_ALREADY_RESUMED);
    CHECK_RES(mcp_oauth2_pending_is_ready(p, &ready), MCP_OAUTH2_RESULT_ALREADY_RESUMED);
    CHECK_RES(mcp_oauth2_pending_wait(p, 0, &ready), MCP_OAUTH2_RESULT_ALREADY_RESUMED);
    CHECK_RES(mcp_oauth2_pending_max_wait_ms(p, &ms), MCP_OAUTH2_RESULT_ALREADY_RESUMED);
    CHECK(again == SENTINEL && !ready);

    mcp_oauth2_pending_free(&p);
    CHECK(p == NULL);
    mcp_oauth2_pending_free(&p);
    /* The decision does not depend on the pending or the validator. */
    mcp_oauth2_str subject;
    CHECK_RES(mcp_oauth2_decision_subject(d, &subject), MCP_OAUTH2_RESULT_OK);
    CHECK(str_eq(subject, "alice"));
    mcp_oauth2_decision_free(&d);
    CHECK(d == NULL);
    mcp_oauth2_decision_free(&d);
    mcp_oauth2_decision_free(&early);
    mcp_oauth2_decision_free(&early);

    /* An abandoned pending (never resumed) frees cleanly. */
    v = new_validator(CONFIG);
    p = begin_pending(v, "Bearer abandoned");
    mcp_oauth2_validator_free(&v);
    mcp_oauth2_pending_free(&p);
    mcp_oauth2_pending_free(&p);
}

/* What the host must send to the authorization server. */
static void test_pending_request(const mcp_oauth2_validator *v) {
    mcp_oauth2_pending *p = begin_pending(v, "Bearer tok-123");
    mcp_oauth2_str method, url, name, value;
    CHECK_RES(mcp_oauth2_pending_method(p, &method), MCP_OAUTH2_RESULT_OK);
    CHECK(str_eq(method, "POST"));
    CHECK_RES(mcp_oauth2_pending_url(p, &url), MCP_OAUTH2_RESULT_OK);
    CHECK(str_eq(url, "https://as.example.com/introspect"));
    size_t n = 0;
    CHECK_RES(mcp_oauth2_pending_header_count(p, &n), MCP_OAUTH2_RESULT_OK);
    CHECK(n >= 3);
    int saw_basic = 0, saw_form = 0;
    for (size_t i = 0; i < n; i++) {
        CHECK_RES(mcp_oauth2_pending_header(p, i, &name, &value), MCP_OAUTH2_RESULT_OK);
        /* base64("gateway:gateway-secret") */
        if (str_eq(name, "Authorization") && str_eq(value, "Basic Z2F0ZXdheTpnYXRld2F5LXNlY3JldA==")) saw_basic = 1;
        if (str_eq(name, "Content-Type") && str_contains(value, "application/x-www-form-urlencoded")) saw_form = 1;
    }
    CHECK(saw_basic && saw_form);
    mcp_oauth2_str untouched = {SENTINEL, 1};
    CHECK_RES(mcp_oauth2_pending_header(p, n, &untouched, &value), MCP_OAUTH2_RESULT_OUT_OF_RANGE);
    CHECK(untouched.ptr == SENTINEL);
    mcp_oauth2_bytes body;
    CHECK_RES(mcp_oauth2_pending_body(p, &body), MCP_OAUTH2_RESULT_OK);
    CHECK(bytes_contains(body.ptr, body.len, "token=tok-123"));
    CHECK(bytes_contains(body.ptr, body.len, "token_type_hint=access_token"));
    CHECK(!bytes_contains(body.ptr, body.len, "gateway-secret")); /* basic: never also in the body */
    uint64_t ms = 0;
    CHECK_RES(mcp_oauth2_pending_timeout_ms(p, &ms), MCP_OAUTH2_RESULT_OK);
    CHECK(ms == 10000);
    mcp_oauth2_pending_free(&p);
}

/* The metadata document and the response table (docs/configuration.md, 3 and 7.2), row by row. */
static void test_decisions(const mcp_oauth2_validator *v) {
    mcp_oauth2_decision *d;
    mcp_oauth2_bytes body;
    mcp_oauth2_str s, s2;
    size_t n;
    bool allowed = true;
    int64_t until;
    char want[512];

    /* PRM document: 200 JSON, without a token. */
    mcp_oauth2_request prm = req("GET", "/mcp/.well-known/oauth-protected-resource", NULL, 0);
    d = decided_at_begin(v, &prm);
    CHECK(status_of(d) == 200);
    CHECK(reason_is(d, "metadata"));
    CHECK(str_contains(response_header(d, "Content-Type"), "application/json"));
    CHECK_RES(mcp_oauth2_decision_body(d, &body), MCP_OAUTH2_RESULT_OK);
    CHECK(bytes_contains(body.ptr, body.len, "\"resource\":\"https://mcp.example.com/mcp\""));
    mcp_oauth2_bytes doc;
    CHECK_RES(mcp_oauth2_validator_metadata_document(v, &doc), MCP_OAUTH2_RESULT_OK);
    CHECK(doc.len == body.len && memcmp(doc.ptr, body.ptr, doc.len) == 0);
    CHECK_RES(mcp_oauth2_decision_remove_header_count(d, &n), MCP_OAUTH2_RESULT_ABSENT);
    mcp_oauth2_decision_free(&d);
    prm = req("POST", "/mcp/.well-known/oauth-protected-resource", NULL, 0);
    d = decided_at_begin(v, &prm);
    CHECK(status_of(d) == 405);
    CHECK(str_eq(response_header(d, "Allow"), "GET, HEAD"));
    mcp_oauth2_decision_free(&d);

    /* No credentials: 401, no error, scope of the operation. */
    mcp_oauth2_header basic = hdr("Authorization", "Basic dXNlcjpwYXNz");
    mcp_oauth2_request r = req("POST", "/mcp", &basic, 1);
    d = decided_at_begin(v, &r);
    CHECK(status_of(d) == 401);
    CHECK(reason_is(d, "no_credentials"));
    snprintf(want, sizeof want, "Bearer resource_metadata=\"%s\", scope=\"mcp:read\"", METADATA_URL);
    CHECK(challenge_is(d, want));
    CHECK_RES(mcp_oauth2_decision_allowed(d, &allowed), MCP_OAUTH2_RESULT_OK);
    CHECK(!allowed);
    CHECK_RES(mcp_oauth2_decision_response_header_count(d, &n), MCP_OAUTH2_RESULT_OK);
    CHECK(n >= 2);
    int saw = 0;
    for (size_t i = 0; i < n; i++) {
        CHECK_RES(mcp_oauth2_decision_response_header(d, i, &s, &s2), MCP_OAUTH2_RESULT_OK);
        if (str_eq(s, "WWW-Authenticate")) saw = 1;
    }
    CHECK(saw);
    CHECK_RES(mcp_oauth2_decision_response_header(d, n, &s, &s2), MCP_OAUTH2_RESULT_OUT_OF_RANGE);
    CHECK_RES(mcp_oauth2_decision_body(d, &body), MCP_OAUTH2_RESULT_OK);
    CHECK(bytes_contains(body.ptr, body.len, "\"error\""));
    /* Forwarding accessors do not apply to a denial; there was no token to cache. */
    CHECK_RES(mcp_oauth2_decision_valid_until(d, &until), MCP_OAUTH2_RESULT_ABSENT);
    uint64_t ms = 0;
    CHECK_RES(mcp_oauth2_decision_recheck_at(d, &ms), MCP_OAUTH2_RESULT_ABSENT);
    CHECK_RES(mcp_oauth2_decision_cache_ttl_ms(d, &ms), MCP_OAUTH2_RESULT_ABSENT);
    CHECK_RES(mcp_oauth2_decision_must_remove(d, S("Authorization"), &allowed), MCP_OAUTH2_RESULT_ABSENT);
    CHECK_RES(mcp_oauth2_decision_claim_header_value(d, 0, &s), MCP_OAUTH2_RESULT_ABSENT);
    mcp_oauth2_decision *refused = NULL;
    CHECK_RES(mcp_oauth2_decision_refuse(d, MCP_OAUTH2_REFUSAL_CONSUMER_NOT_FOUND, &refused), MCP_OAUTH2_RESULT_ABSENT);
    CHECK(refused == NULL);
    CHECK_RES(mcp_oauth2_decision_set_header_count(d, &n), MCP_OAUTH2_RESULT_ABSENT);
    CHECK_RES(mcp_oauth2_decision_subject(d, &s), MCP_OAUTH2_RESULT_ABSENT);
    mcp_oauth2_decision_free(&d);

    /* Malformed: two Authorization headers, an empty bearer token: 400 invalid_request. */
    mcp_oauth2_header two[2] = {hdr("Authorization", "Bearer a"), hdr("authorization", "Bearer b")};
    r = req("POST", "/mcp", two, 2);
    d = decided_at_begin(v, &r);
    CHECK(status_of(d) == 400);
    snprintf(want, sizeof want, "Bearer error=\"invalid_request\", resource_metadata=\"%s\"", METADATA_URL);
    CHECK(challenge_is(d, want));
    mcp_oauth2_decision_free(&d);
    mcp_oauth2_header empty = hdr("Authorization", "Bearer ");
    r = req("POST", "/mcp", &empty, 1);
    d = decided_at_begin(v, &r);
    CHECK(status_of(d) == 400);
    CHECK(reason_is(d, "invalid_request"));
    mcp_oauth2_decision_free(&d);

    /* A token over 16 KiB: 401 invalid_token without asking the AS. */
    static char long_auth[17 * 1024 + 8];
    memcpy(long_auth, "Bearer ", 7);
    memset(long_auth + 7, 'a', 17 * 1024);
    long_auth[7 + 17 * 1024] = '\0';
    mcp_oauth2_header long_h = hdr("Authorization", long_auth);
    r = req("POST", "/mcp", &long_h, 1);
    d = decided_at_begin(v, &r);
    CHECK(status_of(d) == 401);
    CHECK(reason_is(d, "token_too_long"));
    CHECK(str_contains(response_header(d, "WWW-Authenticate"), "error=\"invalid_token\""));
    mcp_oauth2_decision_free(&d);

    /* Inactive: 401 invalid_token with a generic description. */
    d = introspected(v, "tok-inactive", 200, "application/json", "{\"active\": false}");
    CHECK(status_of(d) == 401);
    CHECK(reason_is(d, "token_inactive"));
    /* A rejection is cached for cache_ttl_negative (5 s): shared caches may keep it that long. */
    CHECK_RES(mcp_oauth2_decision_cache_ttl_ms(d, &ms), MCP_OAUTH2_RESULT_OK);
    CHECK(ms > 0 && ms <= 5000);
    snprintf(want, sizeof want,
             "Bearer error=\"invalid_token\", error_description=\"The access token is not active\","
             " resource_metadata=\"%s\"",
             METADATA_URL);
    CHECK(challenge_is(d, want));
    CHECK_RES(mcp_oauth2_decision_body(d, &body), MCP_OAUTH2_RESULT_OK);
    CHECK(!bytes_contains(body.ptr, body.len, "tok-inactive"));
    mcp_oauth2_decision_free(&d);
    /* "active": "true" (a string) is not active. */
    d = introspected(v, "tok-string-true", 200, "application/json",
                     "{\"active\": \"true\", \"aud\": \"https://mcp.example.com/mcp\", \"scope\": \"mcp:read\"}");
    CHECK(status_of(d) == 401);
    mcp_oauth2_decision_free(&d);

    /* Expired. */
    d = introspected(v, "tok-expired", 200, "application/json",
                     "{\"active\": true, \"exp\": 1000, \"aud\": \"https://mcp.example.com/mcp\","
                     " \"scope\": \"mcp:read\"}");
    CHECK(status_of(d) == 401);
    CHECK(reason_is(d, "token_expired"));
    CHECK(str_contains(response_header(d, "WWW-Authenticate"), "The access token has expired"));
    mcp_oauth2_decision_free(&d);

    /* Wrong audience, and no audience. */
    d = introspected(v, "tok-other-aud", 200, "application/json",
                     "{\"active\": true, \"aud\": \"https://other.example.com/mcp\", \"scope\": \"mcp:read\"}");
    CHECK(status_of(d) == 401);
    CHECK(reason_is(d, "audience_mismatch"));
    mcp_oauth2_decision_free(&d);
    d = introspected(v, "tok-no-aud", 200, "application/json", "{\"active\": true, \"scope\": \"mcp:read\"}");
    CHECK(status_of(d) == 401);
    CHECK(reason_is(d, "audience_mismatch"));
    mcp_oauth2_decision_free(&d);

    /* Valid but lacking scopes_required: 403 insufficient_scope naming the scope. */
    d = introspected(v, "tok-no-scope", 200, "application/json",
                     "{\"active\": true, \"aud\": \"https://mcp.example.com/mcp\", \"scope\": \"mcp:write\"}");
    CHECK(status_of(d) == 403);
    CHECK(reason_is(d, "insufficient_scope"));
    snprintf(want, sizeof want,
             "Bearer error=\"insufficient_scope\", scope=\"mcp:read\", resource_metadata=\"%s\"", METADATA_URL);
    CHECK(challenge_is(d, want));
    mcp_oauth2_decision_free(&d);

    /* AS failures: 503 without a challenge (never 401). */
    const char *big_prefix = "{\"active\": true, \"pad\": \"";
    size_t big_len = 1024 * 1024 + 64;
    char *big = malloc(big_len + 1);
    CHECK(big != NULL);
    memset(big, 'x', big_len);
    memcpy(big, big_prefix, strlen(big_prefix));
    memcpy(big + big_len - 2, "\"}", 2);
    big[big_len] = '\0';
    struct {
        unsigned status;
        const char *content_type;
        const char *body;
    } failures_rows[] = {
        {500, "application/json", "{\"error\": \"server_error\"}"},
        {502, "text/html", "<html>bad gateway</html>"},
        {401, "application/json", "{\"error\": \"invalid_client\"}"},
        {200, "text/html", "<html>login</html>"},
        {200, "application/json", "not json"},
        {200, "application/json", "[true]"},
        {200, "application/json", big},
    };
    for (size_t i = 0; i < sizeof failures_rows / sizeof failures_rows[0]; i++) {
        char token[32];
        snprintf(token, sizeof token, "tok-as-fail-%u", (unsigned)i);
        d = introspected(v, token, failures_rows[i].status, failures_rows[i].content_type, failures_rows[i].body);
        CHECK(status_of(d) == 503);
        CHECK(reason_is(d, "authorization_server_unavailable"));
        CHECK(no_challenge(d));
        CHECK_RES(mcp_oauth2_decision_cache_ttl_ms(d, &ms), MCP_OAUTH2_RESULT_ABSENT); /* never cached */
        CHECK_RES(mcp_oauth2_decision_detail(d, &s), MCP_OAUTH2_RESULT_OK);
        CHECK(!str_contains(s, "server_error") && !str_contains(s, "login")); /* never AS text */
        mcp_oauth2_decision_free(&d);
    }
    free(big);
    const uint32_t kinds[] = {MCP_OAUTH2_TRANSPORT_ERROR_CONNECT, MCP_OAUTH2_TRANSPORT_ERROR_TIMEOUT,
                              MCP_OAUTH2_TRANSPORT_ERROR_TLS, MCP_OAUTH2_TRANSPORT_ERROR_BODY_TOO_LARGE,
                              MCP_OAUTH2_TRANSPORT_ERROR_OTHER};
    for (size_t i = 0; i < 5; i++) {
        mcp_oauth2_pending *p = begin_pending(v, "Bearer tok-transport");
        d = NULL;
        CHECK_RES(mcp_oauth2_pending_fail(p, now_ms(), kinds[i], S("connection refused"), &d), MCP_OAUTH2_RESULT_OK);
        CHECK(status_of(d) == 503);
        CHECK(no_challenge(d));
        mcp_oauth2_decision_free(&d);
        mcp_oauth2_pending_free(&p);
    }
    /* AS failures are not cached: the same token asks the AS again. */
    mcp_oauth2_pending *p = begin_pending(v, "Bearer tok-transport");
    mcp_oauth2_pending_free(&p);

    /* Allowed. */
    long long exp = (long long)time(NULL) + 600;
    char active[512];
    snprintf(active, sizeof active,
             "{\"active\": true, \"sub\": \"alice\", \"client_id\": \"app\", \"scope\": \"mcp:read mcp:write\","
             " \"aud\": [\"https://mcp.example.com/mcp\"], \"exp\": %lld}",
             exp);
    d = introspected(v, "tok-valid", 200, "application/json; charset=utf-8", active);
    CHECK_RES(mcp_oauth2_decision_allowed(d, &allowed), MCP_OAUTH2_RESULT_OK);
    CHECK(allowed);
    CHECK(reason_is(d, "allowed"));
    uint16_t status = 77;
    CHECK_RES(mcp_oauth2_decision_status(d, &status), MCP_OAUTH2_RESULT_ABSENT);
    CHECK(status == 77);
    CHECK_RES(mcp_oauth2_decision_body(d, &body), MCP_OAUTH2_RESULT_ABSENT);
    CHECK_RES(mcp_oauth2_decision_response_header_count(d, &n), MCP_OAUTH2_RESULT_ABSENT);
    CHECK_RES(mcp_oauth2_decision_response_header_value(d, S("WWW-Authenticate"), &s), MCP_OAUTH2_RESULT_ABSENT);
    CHECK_RES(mcp_oauth2_decision_detail(d, &s), MCP_OAUTH2_RESULT_ABSENT);
    CHECK_RES(mcp_oauth2_decision_remove_header_count(d, &n), MCP_OAUTH2_RESULT_OK);
    CHECK(n == 2);
    CHECK_RES(mcp_oauth2_decision_remove_header(d, 0, &s), MCP_OAUTH2_RESULT_OK);
    CHECK(str_eq(s, "Authorization"));
    CHECK_RES(mcp_oauth2_decision_remove_header(d, 1, &s), MCP_OAUTH2_RESULT_OK);
    CHECK(str_eq(s, "X-User-Id"));
    CHECK_RES(mcp_oauth2_decision_remove_header(d, 2, &s), MCP_OAUTH2_RESULT_OUT_OF_RANGE);
    CHECK_RES(mcp_oauth2_decision_set_header_count(d, &n), MCP_OAUTH2_RESULT_OK);
    CHECK(n == 1);
    CHECK_RES(mcp_oauth2_decision_set_header(d, 0, &s, &s2), MCP_OAUTH2_RESULT_OK);
    CHECK(str_eq(s, "X-User-Id") && str_eq(s2, "alice"));
    CHECK_RES(mcp_oauth2_decision_set_header(d, 1, &s, &s2), MCP_OAUTH2_RESULT_OUT_OF_RANGE);
    CHECK_RES(mcp_oauth2_decision_subject(d, &s), MCP_OAUTH2_RESULT_OK);
    CHECK(str_eq(s, "alice"));
    CHECK_RES(mcp_oauth2_decision_client_id(d, &s), MCP_OAUTH2_RESULT_OK);
    CHECK(str_eq(s, "app"));
    CHECK_RES(mcp_oauth2_decision_scope(d, &s), MCP_OAUTH2_RESULT_OK);
    CHECK(str_eq(s, "mcp:read mcp:write"));
    CHECK_RES(mcp_oauth2_decision_credential(d, &s), MCP_OAUTH2_RESULT_OK);
    CHECK(str_eq(s, "alice"));
    CHECK_RES(mcp_oauth2_decision_consumer(d, &s), MCP_OAUTH2_RESULT_ABSENT);
    CHECK_RES(mcp_oauth2_decision_consumer_group_count(d, &n), MCP_OAUTH2_RESULT_ABSENT);
    /* valid_until is the token's exp; the cached answer ages out at that exp too (it is
     * sooner than cache_ttl_max), and shared caches may keep it until then. */
    CHECK_RES(mcp_oauth2_decision_valid_until(d, &until), MCP_OAUTH2_RESULT_OK);
    CHECK(until == exp);
    CHECK_RES(mcp_oauth2_decision_recheck_at(d, &ms), MCP_OAUTH2_RESULT_OK);
    CHECK(ms == (uint64_t)exp * 1000u);
    uint64_t ttl = 0;
    CHECK_RES(mcp_oauth2_decision_cache_ttl_ms(d, &ttl), MCP_OAUTH2_RESULT_OK);
    CHECK(ttl > 0 && ttl <= 600u * 1000u);
    mcp_oauth2_decision_free(&d);

    /* Cache hit: decided at begin, no AS call. Evict: the AS is asked again. */
    mcp_oauth2_header valid = hdr("Authorization", "Bearer tok-valid");
    r = req("POST", "/mcp", &valid, 1);
    d = decided_at_begin(v, &r);
    CHECK_RES(mcp_oauth2_decision_allowed(d, &allowed), MCP_OAUTH2_RESULT_OK);
    CHECK(allowed);
    mcp_oauth2_decision_free(&d);
    bool evicted = false;
    CHECK_RES(mcp_oauth2_validator_evict(v, S("tok-valid"), &evicted), MCP_OAUTH2_RESULT_OK);
    CHECK(evicted);
    CHECK_RES(mcp_oauth2_validator_evict(v, S("tok-valid"), &evicted), MCP_OAUTH2_RESULT_OK);
    CHECK(!evicted);
    p = begin_pending(v, "Bearer tok-valid");
    mcp_oauth2_pending_free(&p);

    /* A claim value with a CR LF is never sent upstream: 403. */
    d = introspected(v, "tok-crlf", 200, "application/json",
                     "{\"active\": true, \"sub\": \"eve\\r\\nX-Admin: 1\", \"aud\": \"https://mcp.example.com/mcp\","
                     " \"scope\": \"mcp:read\"}");
    CHECK(status_of(d) == 403);
    CHECK(reason_is(d, "claim_header_invalid"));
    mcp_oauth2_decision_free(&d);
}

/* Response table row: consumer mapping failed and not optional: 403 without a challenge. */
static void test_consumer_rows(void) {
    mcp_oauth2_validator *v = new_validator(
        "{\"resource\": \"https://mcp.example.com/mcp\", \"authorization_servers\": [\"https://as.example.com\"],"
        " \"introspection_endpoint\": \"https://as.example.com/introspect\", \"client_id\": \"gateway\","
        " \"client_secret\": \"gateway-secret\", \"consumer_claim\": [\"username\"],"
        " \"consumer_groups_claim\": [\"groups\"], \"consumer_groups_optional\": true}");
    mcp_oauth2_decision *d =
        introspected(v, "tok-no-consumer", 200, "application/json",
                     "{\"active\": true, \"sub\": \"bob\", \"aud\": \"https://mcp.example.com/mcp\"}");
    CHECK(status_of(d) == 403);
    CHECK(reason_is(d, "consumer_missing"));
    CHECK(no_challenge(d));
    mcp_oauth2_decision_free(&d);

    d = introspected(v, "tok-consumer", 200, "application/json",
                     "{\"active\": true, \"sub\": \"bob\", \"username\": \"bob-consumer\","
                     " \"groups\": [\"admins\", \"devs\"], \"aud\": \"https://mcp.example.com/mcp\"}");
    bool allowed = false;
    CHECK_RES(mcp_oauth2_decision_allowed(d, &allowed), MCP_OAUTH2_RESULT_OK);
    CHECK(allowed);
    mcp_oauth2_str s = {NULL, 0};
    CHECK_RES(mcp_oauth2_decision_consumer(d, &s), MCP_OAUTH2_RESULT_OK);
    CHECK(str_eq(s, "bob-consumer"));
    size_t n = 0;
    CHECK_RES(mcp_oauth2_decision_consumer_group_count(d, &n), MCP_OAUTH2_RESULT_OK);
    CHECK(n == 2);
    CHECK_RES(mcp_oauth2_decision_consumer_group(d, 1, &s), MCP_OAUTH2_RESULT_OK);
    CHECK(str_eq(s, "devs"));
    CHECK_RES(mcp_oauth2_decision_consumer_group(d, 2, &s), MCP_OAUTH2_RESULT_OUT_OF_RANGE);
    /* No client_id claim and no scope in this token. */
    CHECK_RES(mcp_oauth2_decision_client_id(d, &s), MCP_OAUTH2_RESULT_ABSENT);
    CHECK_RES(mcp_oauth2_decision_scope(d, &s), MCP_OAUTH2_RESULT_ABSENT);
    /* No claim headers configured: only Authorization is removed. */
    CHECK_RES(mcp_oauth2_decision_remove_header_count(d, &n), MCP_OAUTH2_RESULT_OK);
    CHECK(n == 1);
    CHECK_RES(mcp_oauth2_decision_set_header_count(d, &n), MCP_OAUTH2_RESULT_OK);
    CHECK(n == 0);
    mcp_oauth2_decision_free(&d);
    mcp_oauth2_validator_free(&v);
}

/* One validator shared by 8 threads: each validates its own tokens (misses, resumes, cache
 * hits, evictions) and reads decisions concurrently. */
#define THREADS 8
#define ROUNDS 40

struct worker {
    const mcp_oauth2_validator *v;
    int id;
    int allowed;
};

static void *work(void *arg) {
    struct worker *w = arg;
    char token[64], auth[80], active[256];
    long long exp = (long long)time(NULL) + 600;
    for (int i = 0; i < ROUNDS; i++) {
        snprintf(token, sizeof token, "thread-%d-token-%d", w->id, i % 5);
        snprintf(auth, sizeof auth, "Bearer %s", token);
        mcp_oauth2_header h = hdr("Authorization", auth);
        mcp_oauth2_request r = req("POST", "/mcp", &h, 1);
        mcp_oauth2_decision *d = NULL;
        mcp_oauth2_pending *p = NULL;
        CHECK_RES(mcp_oauth2_validator_begin(w->v, &r, now_ms(), &d, &p), MCP_OAUTH2_RESULT_OK);
        if (p != NULL) {
            snprintf(active, sizeof active,
                     "{\"active\": true, \"sub\": \"%s\", \"aud\": \"https://mcp.example.com/mcp\","
                     " \"scope\": \"mcp:read\", \"exp\": %lld}",
                     token, exp);
            mcp_oauth2_header ct = hdr("Content-Type", "application/json");
            CHECK_RES(mcp_oauth2_pending_resume(p, now_ms(), 200, &ct, 1, S(active), &d), MCP_OAUTH2_RESULT_OK);
            mcp_oauth2_pending_free(&p);
        }
        bool allowed = false;
        CHECK_RES(mcp_oauth2_decision_allowed(d, &allowed), MCP_OAUTH2_RESULT_OK);
        mcp_oauth2_str sub = {NULL, 0};
        CHECK_RES(mcp_oauth2_decision_subject(d, &sub), MCP_OAUTH2_RESULT_OK);
        CHECK(str_eq(sub, token)); /* never another thread's identity */
        w->allowed += allowed;
        mcp_oauth2_decision_free(&d);
        if (i % 7 == 6) CHECK_RES(mcp_oauth2_validator_evict(w->v, S(token), NULL), MCP_OAUTH2_RESULT_OK);
    }
    return NULL;
}

/* One decision read by every thread at once (decisions are immutable). */
static void *read_shared(void *arg) {
    const mcp_oauth2_decision *d = arg;
    for (int i = 0; i < ROUNDS; i++) {
        mcp_oauth2_str name, value;
        size_t n = 0;
        CHECK_RES(mcp_oauth2_decision_set_header_count(d, &n), MCP_OAUTH2_RESULT_OK);
        CHECK(n == 1);
        CHECK_RES(mcp_oauth2_decision_set_header(d, 0, &name, &value), MCP_OAUTH2_RESULT_OK);
        CHECK(str_eq(value, "shared"));
        CHECK_RES(mcp_oauth2_decision_subject(d, &value), MCP_OAUTH2_RESULT_OK);
    }
    return NULL;
}

static void test_threads(void) {
    mcp_oauth2_validator *v = new_validator(CONFIG);
    mcp_oauth2_decision *shared =
        introspected(v, "tok-shared", 200, "application/json",
                     "{\"active\": true, \"sub\": \"shared\", \"aud\": \"https://mcp.example.com/mcp\","
                     " \"scope\": \"mcp:read\"}");
    pthread_t readers[THREADS];
    for (int i = 0; i < THREADS; i++) CHECK(pthread_create(&readers[i], NULL, read_shared, shared) == 0);
    for (int i = 0; i < THREADS; i++) CHECK(pthread_join(readers[i], NULL) == 0);
    mcp_oauth2_decision_free(&shared);

    pthread_t threads[THREADS];
    struct worker workers[THREADS];
    for (int i = 0; i < THREADS; i++) {
        workers[i].v = v;
        workers[i].id = i;
        workers[i].allowed = 0;
        CHECK(pthread_create(&threads[i], NULL, work, &workers[i]) == 0);
    }
    int allowed = 0;
    for (int i = 0; i < THREADS; i++) {
        CHECK(pthread_join(threads[i], NULL) == 0);
        allowed += workers[i].allowed;
    }
    CHECK(allowed == THREADS * ROUNDS);
    mcp_oauth2_validator_free(&v);
}

/* A Kong user's plugin config, pasted as is (the fixture in tests/testdata; run from the
 * repository root). */
static void test_kong_fixture(void) {
    FILE *f = fopen("tests/testdata/kong-config.json", "rb");
    CHECK(f != NULL);
    if (f == NULL) return;
    static char json[64 * 1024];
    size_t n = fread(json, 1, sizeof json, f);
    fclose(f);
    mcp_oauth2_validator *v = NULL;
    CHECK_RES(mcp_oauth2_validator_new((const uint8_t *)json, n, &v, NULL), MCP_OAUTH2_RESULT_OK);
    mcp_oauth2_request r = req("GET", "/mcp", NULL, 0);
    mcp_oauth2_decision *d = decided_at_begin(v, &r);
    CHECK(status_of(d) == 401);
    CHECK(challenge_is(d, "Bearer resource_metadata=\"http://127.0.0.1:8080/mcp/.well-known/oauth-protected-resource\""));
    mcp_oauth2_decision_free(&d);
    mcp_oauth2_validator_free(&v);
}

int main(void) {
    test_kong_fixture();
    test_result_names();
    test_invalid_config();
    mcp_oauth2_validator *v = new_validator(CONFIG);
    test_null_parameters(v);
    test_invalid_arguments(v);
    test_pending_request(v);
    test_decisions(v);
    mcp_oauth2_validator_free(&v);
    test_lifecycle();
    test_consumer_rows();
    test_threads();
    return finish("test_api");
}
