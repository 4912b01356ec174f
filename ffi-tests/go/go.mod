module mcp-oauth2/ffi-tests/go

go 1.19
