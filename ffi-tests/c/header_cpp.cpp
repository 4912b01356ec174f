// The header is usable from C++ (cbindgen cpp_compat): the enums keep their uint32_t type
// and the functions have C linkage.
#include <cstdio>
#include <cstring>
#include <type_traits>

#include "mcp_oauth2.h"

static_assert(std::is_same<std::underlying_type<mcp_oauth2_result>::type, uint32_t>::value,
              "mcp_oauth2_result is a uint32_t");
static_assert(std::is_same<std::underlying_type<mcp_oauth2_pending_state>::type, uint32_t>::value,
              "mcp_oauth2_pending_state is a uint32_t");
static_assert(std::is_same<std::underlying_type<mcp_oauth2_refusal>::type, uint32_t>::value,
              "mcp_oauth2_refusal is a uint32_t");

int main() {
    mcp_oauth2_str name = {nullptr, 0};
    if (mcp_oauth2_result_name(MCP_OAUTH2_RESULT_WRONG_STATE, &name) != MCP_OAUTH2_RESULT_OK) return 1;
    if (name.len != std::strlen("wrong_state") || std::memcmp(name.ptr, "wrong_state", name.len) != 0) return 1;
    mcp_oauth2_pending_state state = MCP_OAUTH2_PENDING_STATE_DONE;
    if (mcp_oauth2_pending_get_state(nullptr, &state) != MCP_OAUTH2_RESULT_NULL_PARAMETER) return 1;
    if (state != MCP_OAUTH2_PENDING_STATE_DONE) return 1;
    std::printf("header_cpp: ok\n");
    return 0;
}
