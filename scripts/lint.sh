#!/usr/bin/env bash
# The lint gate, the test command's first step (and runnable alone): formatting, clippy with
# warnings as errors on every target, the console's scripts parsed by node, and shellcheck on every
# tracked shell script.
#
#   scripts/lint.sh
#
# Prints one `lint: <step> ok|FAILED` line per step and `lint: N failed` last; exits non-zero when
# any step failed.
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$LOGPIPE_ROOT" || exit 1

command -v shellcheck >/dev/null || apt_install shellcheck
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

failed=0
step() {
    local name=$1
    shift
    if "$@"; then
        echo "lint: $name ok"
    else
        echo "lint: $name FAILED"
        failed=$((failed + 1))
    fi
}

step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy -D warnings" cargo clippy --workspace --all-targets --locked -- -D warnings
command -v node >/dev/null || apt_install nodejs
mapfile -t js < <(git ls-files 'gateway/console/*.js' 'integration-tests/*.mjs')
node_check() {
    local f
    for f in "$@"; do node --check "$f" || return 1; done
}
step "node --check (${#js[@]} console scripts)" node_check "${js[@]}"
mapfile -t scripts < <(git ls-files '*.sh' .ci/run)
step "shellcheck (${#scripts[@]} scripts)" shellcheck -x "${scripts[@]}"

echo "lint: $failed failed"
[ "$failed" -eq 0 ]
