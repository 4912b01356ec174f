# Shared shell helpers for scripts/*.sh (sourced, not run).

# apt_install PKG...: installs the Debian packages that are missing; runs `apt-get update`
# once per invocation and only when something is missing. Uses sudo when not root.
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  if [ -z "${APT_UPDATED:-}" ]; then
    $sudo apt-get update -qq
    export APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# cargo_install_pinned CRATE VERSION BIN: installs a pinned cargo tool unless that version is there.
cargo_install_pinned() {
  local crate=$1 version=$2 bin=$3
  if command -v "$bin" >/dev/null 2>&1 && "$bin" --version 2>/dev/null | grep -q "$version"; then
    return 0
  fi
  echo "installing $crate $version"
  cargo install --locked --quiet "$crate" --version "$version"
}

# is_excerpt EXCERPT FULL: every line of EXCERPT (trimmed; blank lines and the elision
# markers `/* ... */`, `# ...`, `-- ...` skipped) is a line of FULL (trimmed), in the same
# order. How the README's short examples stay true to the complete, tested programs.
is_excerpt() {
  awk 'function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s); return s }
       NR == FNR { full[++n] = trim($0); next }
       {
         l = trim($0)
         if (l == "" || l == "/* ... */" || l == "# ..." || l == "-- ...") next
         found = 0
         while (i < n) { i++; if (full[i] == l) { found = 1; break } }
         if (!found) { print "not in the complete file (in this order): " l > "/dev/stderr"; bad = 1; exit }
       }
       END { exit bad }' "$2" "$1"
}
