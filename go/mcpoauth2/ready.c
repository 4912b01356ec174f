// The completion callback of mcp_oauth2_pending_on_ready, forwarded to Go (ready.go).
#include <stdint.h>

#include "_cgo_export.h"
#include "mcp_oauth2.h"

static void mcpoauth2_ready_trampoline(void *user_data) { mcpoauth2GoReady((uintptr_t)user_data); }

mcp_oauth2_result mcpoauth2_on_ready(const mcp_oauth2_pending *pending, uintptr_t handle) {
    return mcp_oauth2_pending_on_ready(pending, mcpoauth2_ready_trampoline, (void *)handle);
}
