/* A Rust panic inside an exported function is caught and reported as
 * MCP_OAUTH2_RESULT_PANIC; the host keeps running and the objects stay usable.
 *
 * Linked against a library built with the test-only `ffi-test-panic` feature, in which
 * functions taking strings panic on the input "mcp-oauth2-test-panic" (the normal build has
 * no such trigger: scripts/test-ffi.sh runs this program against it too and expects no
 * panic). Usage: test_panic expect-panic|expect-no-panic */
#include "check.h"

static const char *CONFIG =
    "{\"resource\": \"https://mcp.example.com/mcp\","
    " \"authorization_servers\": [\"https://as.example.com\"],"
    " \"introspection_endpoint\": \"https://as.example.com/introspect\"}";

#define SENTINEL ((void *)(uintptr_t)0x5e17)

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s expect-panic|expect-no-panic\n", argv[0]);
        return 2;
    }
    int expect_panic = strcmp(argv[1], "expect-panic") == 0;
    mcp_oauth2_result want = expect_panic ? MCP_OAUTH2_RESULT_PANIC : MCP_OAUTH2_RESULT_OK;
    mcp_oauth2_validator *v = new_validator(CONFIG);

    /* begin: the method triggers the panic. */
    mcp_oauth2_request r = req("mcp-oauth2-test-panic", "/mcp", NULL, 0);
    mcp_oauth2_decision *d = SENTINEL;
    mcp_oauth2_pending *p = SENTINEL;
    CHECK_RES(mcp_oauth2_validator_begin(v, &r, now_ms(), &d, &p), want);
    if (expect_panic) {
        CHECK(d == SENTINEL && p == SENTINEL); /* outputs untouched */
    } else {
        CHECK(d != SENTINEL && d != NULL && p == NULL);
        mcp_oauth2_decision_free(&d);
    }

    /* authorize runs the same conversion: also caught. */
    d = SENTINEL;
    CHECK_RES(mcp_oauth2_validator_authorize(v, &r, &d), want);
    if (expect_panic) {
        CHECK(d == SENTINEL);
    } else {
        mcp_oauth2_decision_free(&d);
    }

    /* evict: the token triggers it. */
    bool evicted = true;
    CHECK_RES(mcp_oauth2_validator_evict(v, S("mcp-oauth2-test-panic"), &evicted), want);
    CHECK(evicted == expect_panic); /* untouched on panic; not cached otherwise */

    /* The validator still works after the panics (no poisoned state). */
    for (int i = 0; i < 3; i++) {
        mcp_oauth2_request ok = req("GET", "/mcp", NULL, 0);
        d = NULL;
        p = NULL;
        CHECK_RES(mcp_oauth2_validator_begin(v, &ok, now_ms(), &d, &p), MCP_OAUTH2_RESULT_OK);
        CHECK(status_of(d) == 401);
        mcp_oauth2_decision_free(&d);
    }
    mcp_oauth2_validator_free(&v);
    return finish(expect_panic ? "test_panic (ffi-test-panic build)" : "test_panic (release features)");
}
