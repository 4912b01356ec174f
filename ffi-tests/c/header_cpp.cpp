// The header is usable from C++ (cbindgen cpp_compat): the enums keep their uint32_t type
// and the functions have C linkage.
#include <cstdio>
#include <cstring>
#include <type_traits>

#include "mcp_oauth2.h"

static_assert(std::is_same<std::underlying_type<mcp_oauth2_result>::type, uint32_t>::value,
              "mcp_oauth2_result is a uint32_t");

int main() {
    mcp_oauth2_str name = {nullptr, 0};
    if (mcp_oauth2_result_name(MCP_OAUTH2_RESULT_ALREADY_RESUMED, &name) != MCP_OAUTH2_RESULT_OK) return 1;
    if (name.len != std::strlen("already_resumed") || std::memcmp(name.ptr, "already_resumed", name.len) != 0) return 1;
    std::printf("header_cpp: ok\n");
    return 0;
}
