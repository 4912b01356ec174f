/* Tiny test harness shared by the C programs: counted checks, string views, request
 * builders. Every check failure is printed; main() returns non-zero if any failed. */
#ifndef MCP_OAUTH2_FFI_TESTS_CHECK_H
#define MCP_OAUTH2_FFI_TESTS_CHECK_H

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mcp_oauth2.h"

static atomic_int checks;
static atomic_int failures;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        atomic_fetch_add(&checks, 1);                                                 \
        if (!(cond)) {                                                                \
            atomic_fetch_add(&failures, 1);                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);  \
        }                                                                             \
    } while (0)

/* Checks the result of a call and names both values when they differ. */
#define CHECK_RES(expr, want)                                                         \
    do {                                                                              \
        mcp_oauth2_result got_ = (expr);                                              \
        atomic_fetch_add(&checks, 1);                                                 \
        if (got_ != (mcp_oauth2_result)(want)) {                                      \
            atomic_fetch_add(&failures, 1);                                           \
            fprintf(stderr, "%s:%d: %s returned %s, want %s\n", __FILE__, __LINE__,   \
                    #expr, result_name(got_), result_name(want));                     \
        }                                                                             \
    } while (0)

static inline const char *result_name(mcp_oauth2_result r) {
    static const char *const names[] = {"OK", "NULL_PARAMETER", "PANIC", "INVALID_CONFIG",
                                        "UNSUPPORTED", "INVALID_ARGUMENT", "ABSENT",
                                        "OUT_OF_RANGE", "ALREADY_RESUMED", "WRONG_STATE"};
    return r < sizeof names / sizeof names[0] ? names[r] : "UNKNOWN";
}

/* The host's clock: time is passed in, the library never reads it (C11 timespec_get). */
static inline uint64_t now_ms(void) {
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The state of a pending, or 0 when it cannot be read. */
static inline uint32_t state_of(const mcp_oauth2_pending *p) {
    mcp_oauth2_pending_state s = 0;
    if (mcp_oauth2_pending_get_state(p, &s) != MCP_OAUTH2_RESULT_OK) return 0;
    return s;
}

/* A C string as the (ptr, len) pair of the API. */
#define S(s) (const uint8_t *)(s), strlen(s)

static inline int str_eq(mcp_oauth2_str s, const char *c) {
    return s.ptr != NULL && s.len == strlen(c) && memcmp(s.ptr, c, s.len) == 0;
}

static inline int bytes_contains(const uint8_t *hay, size_t hay_len, const char *needle) {
    size_t n = strlen(needle);
    if (hay == NULL) return 0;
    for (size_t i = 0; n <= hay_len && i <= hay_len - n; i++) {
        if (memcmp(hay + i, needle, n) == 0) return 1;
    }
    return 0;
}

static inline int str_contains(mcp_oauth2_str s, const char *needle) {
    return bytes_contains((const uint8_t *)s.ptr, s.len, needle);
}

static inline mcp_oauth2_header hdr(const char *name, const char *value) {
    mcp_oauth2_header h = {(const uint8_t *)name, strlen(name), (const uint8_t *)value, strlen(value)};
    return h;
}

static inline mcp_oauth2_request req(const char *method, const char *path, const mcp_oauth2_header *headers,
                              size_t headers_len) {
    mcp_oauth2_request r;
    memset(&r, 0, sizeof r);
    r.method = (const uint8_t *)method;
    r.method_len = strlen(method);
    r.path = (const uint8_t *)path;
    r.path_len = strlen(path);
    r.headers = headers;
    r.headers_len = headers_len;
    return r;
}

static inline mcp_oauth2_validator *new_validator(const char *json) {
    mcp_oauth2_validator *v = NULL;
    mcp_oauth2_error *err = NULL;
    mcp_oauth2_result r = mcp_oauth2_validator_new(S(json), &v, &err);
    if (r != MCP_OAUTH2_RESULT_OK) {
        mcp_oauth2_str msg = {"?", 1};
        mcp_oauth2_error_message(err, &msg);
        fprintf(stderr, "mcp_oauth2_validator_new: %s: %.*s\n", result_name(r), (int)msg.len, msg.ptr);
        mcp_oauth2_error_free(&err);
        exit(2);
    }
    return v;
}

/* The value of a response header of a decision, or "" when absent. */
static inline mcp_oauth2_str response_header(const mcp_oauth2_decision *d, const char *name) {
    mcp_oauth2_str v = {"", 0};
    if (mcp_oauth2_decision_response_header_value(d, S(name), &v) != MCP_OAUTH2_RESULT_OK) {
        v.ptr = "";
        v.len = 0;
    }
    return v;
}

static inline unsigned status_of(const mcp_oauth2_decision *d) {
    uint16_t s = 0;
    if (mcp_oauth2_decision_status(d, &s) != MCP_OAUTH2_RESULT_OK) return 0;
    return s;
}

static inline int reason_is(const mcp_oauth2_decision *d, const char *want) {
    mcp_oauth2_str r = {NULL, 0};
    if (mcp_oauth2_decision_reason(d, &r) != MCP_OAUTH2_RESULT_OK) return 0;
    if (!str_eq(r, want)) {
        fprintf(stderr, "  reason is %.*s, want %s\n", (int)r.len, r.ptr, want);
        return 0;
    }
    return 1;
}

static inline int finish(const char *name) {
    int c = atomic_load(&checks), f = atomic_load(&failures);
    printf("%s: %d checks, %d failed\n", name, c, f);
    return f == 0 && c > 0 ? 0 : 1;
}

#endif
