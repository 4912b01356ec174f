#!/usr/bin/env bash
# Builds the C library and installs it the way C and Go users expect:
#   PREFIX/lib/libmcp_oauth2.so, PREFIX/lib/libmcp_oauth2.a,
#   PREFIX/include/mcp_oauth2.h, PREFIX/lib/pkgconfig/mcp_oauth2.pc
# (what cargo-c would install, without building cargo-c; see docs/c-and-go.md).
#
# Usage: scripts/install-c.sh [--prefix DIR] [--libdir DIR] [--debug]
#   --prefix DIR   default /usr/local
#   --libdir DIR   default PREFIX/lib (e.g. PREFIX/lib/x86_64-linux-gnu)
#   --debug        install the debug build (target/debug) instead of the release build
# DESTDIR is honoured for staged installs: files go to DESTDIR/PREFIX/..., while the .pc
# file names PREFIX.
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=/usr/local
LIBDIR=
PROFILE=release
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
        --prefix=*) PREFIX=${1#--prefix=}; shift ;;
        --libdir) LIBDIR=${2:?--libdir needs a directory}; shift 2 ;;
        --libdir=*) LIBDIR=${1#--libdir=}; shift ;;
        --debug) PROFILE=debug; shift ;;
        -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "install-c.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$PREFIX" in /*) ;; *) PREFIX=$PWD/$PREFIX ;; esac
PREFIX=${PREFIX%/}
LIBDIR=${LIBDIR:-$PREFIX/lib}
case "$LIBDIR" in /*) ;; *) LIBDIR=$PWD/$LIBDIR ;; esac
INCLUDEDIR=$PREFIX/include
DEST=${DESTDIR:-}

if [ "$PROFILE" = release ]; then
    cargo build --release --lib --quiet
else
    cargo build --lib --quiet
fi
BUILT=target/$PROFILE
for f in libmcp_oauth2.so libmcp_oauth2.a; do
    [ -f "$BUILT/$f" ] || { echo "install-c.sh: $BUILT/$f was not built" >&2; exit 1; }
done
VERSION=$(awk -F'"' '/^\[package\]/ {p = 1} p && /^version *=/ {print $2; exit}' Cargo.toml)

install -d "$DEST$LIBDIR/pkgconfig" "$DEST$INCLUDEDIR"
install -m 755 "$BUILT/libmcp_oauth2.so" "$DEST$LIBDIR/libmcp_oauth2.so"
install -m 644 "$BUILT/libmcp_oauth2.a" "$DEST$LIBDIR/libmcp_oauth2.a"
install -m 644 include/mcp_oauth2.h "$DEST$INCLUDEDIR/mcp_oauth2.h"
# Libs.private: what the Rust standard library needs from libc when linking the .a.
PC_LIBDIR=$LIBDIR
case "$LIBDIR" in "$PREFIX"/*) PC_LIBDIR=\${prefix}${LIBDIR#"$PREFIX"} ;; esac
cat > "$DEST$LIBDIR/pkgconfig/mcp_oauth2.pc" <<EOF
prefix=$PREFIX
libdir=$PC_LIBDIR
includedir=\${prefix}/include

Name: mcp_oauth2
Description: OAuth 2 resource server for MCP gateways (C ABI)
Version: $VERSION
Libs: -L\${libdir} -lmcp_oauth2
Libs.private: -lpthread -ldl -lm
Cflags: -I\${includedir}
EOF
chmod 644 "$DEST$LIBDIR/pkgconfig/mcp_oauth2.pc"
echo "installed mcp_oauth2 $VERSION ($PROFILE) into $DEST$PREFIX"
echo "  pkg-config: PKG_CONFIG_PATH=$LIBDIR/pkgconfig pkg-config --cflags --libs mcp_oauth2"
