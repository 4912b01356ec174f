module mcp-oauth2/go/mcpoauth2

go 1.19
