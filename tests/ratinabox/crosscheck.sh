#!/usr/bin/env bash
# Cross-check our RatInABox port against the real ratinabox 1.15.3 from PyPI. Not run in CI.
#
# Usage (from anywhere in the repository):
#   tests/ratinabox/crosscheck.sh [crosscheck.py flags]
#
# What it does:
#   1. makes a throwaway Python venv at $RIAB_VENV (default ${TMPDIR:-/tmp}/dsm-riab-venv) and
#      `pip install ratinabox==1.15.3 numpy scipy` into it; a venv that already has
#      ratinabox 1.15.3 is reused as is;
#   2. builds our simulator: `cargo build --release -p actor` (skip with RIAB_NO_BUILD=1, e.g. when
#      the binary is fresh; then target/release/actor must exist);
#   3. runs tests/ratinabox/crosscheck.py with the venv's Python: both simulators on the thesis
#      recipes (thigmotaxis 0, 0.2, 0.5, 1 and the walls recipe), several seeds each, and prints a
#      markdown table comparing them. By default it also rewrites the generated section of
#      docs/validation.md (pass --write OTHER.md to write elsewhere, or RIAB_NO_WRITE=1 to only print).
#
# Environment variables:
#   RIAB_VENV      venv directory (default ${TMPDIR:-/tmp}/dsm-riab-venv). Point it at an existing
#                  venv with ratinabox 1.15.3 to skip the install.
#   RIAB_PYTHON    Python used to create the venv (default python3; needs 3.9+ and the venv module).
#   RIAB_NO_BUILD  set to 1 to skip the cargo build.
#   RIAB_NO_WRITE  set to 1 to not pass --write docs/validation.md.
#
# crosscheck.py flags (all optional):
#   --seeds N        seeds per recipe and simulator (default 5)
#   --seed-base S    first seed (default 0)
#   --steps N        steps per run (default 24000, 20 minutes at dt = 0.05 s)
#   --thin K         keep every K-th step for the KS tests (default 20)
#   --alpha A        mark rows with p < A as disagreements (default 0.01)
#   --recipes LIST   subset, e.g. thig0,thig0.2,thig0.5,thig1,walls (default all)
#   --jobs J         RatInABox runs in parallel (default 1; each takes ~20-30 s on one core)
#   --cache DIR      keep RatInABox runs in DIR and reuse them on the next call
#   --write FILE     markdown file to rewrite (default docs/validation.md, see above)
#   --actor PATH     our actor binary (default target/release/actor)
#
# It takes about 10-15 minutes with the defaults on 2 cores (RatInABox runs ~1,000 steps/s;
# ours takes well under a second per run). It exits non-zero with one line on stderr on failure.

set -euo pipefail

die() {
    echo "crosscheck.sh: $*" >&2
    exit 1
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${RIAB_VENV:-${TMPDIR:-/tmp}/dsm-riab-venv}"
py="${RIAB_PYTHON:-python3}"

has_riab() {
    [ -x "$venv/bin/python" ] &&
        "$venv/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("ratinabox") != "1.15.3")' \
            >/dev/null 2>&1 &&
        "$venv/bin/python" -c 'import numpy, scipy' >/dev/null 2>&1
}

if ! has_riab; then
    command -v "$py" >/dev/null 2>&1 || die "no $py on PATH to make the venv (set RIAB_PYTHON)"
    echo "crosscheck.sh: installing ratinabox==1.15.3 into $venv" >&2
    "$py" -m venv "$venv" >/dev/null 2>&1 || die "could not create a venv at $venv with $py -m venv"
    log="$venv/pip-install.log"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'ratinabox==1.15.3' numpy scipy \
        >"$log" 2>&1 || die "pip install ratinabox==1.15.3 numpy scipy failed (see $log)"
    has_riab || die "ratinabox 1.15.3 is still not importable from $venv"
fi

if [ "${RIAB_NO_BUILD:-0}" != 1 ]; then
    echo "crosscheck.sh: cargo build --release -p actor" >&2
    blog="${TMPDIR:-/tmp}/dsm-crosscheck-build.log"
    (cd "$repo" && cargo build --release -p actor) >"$blog" 2>&1 ||
        die "cargo build --release -p actor failed (see $blog)"
fi
[ -x "$repo/target/release/actor" ] || die "no $repo/target/release/actor (unset RIAB_NO_BUILD to build it)"

args=("$@")
if [ "${RIAB_NO_WRITE:-0}" != 1 ]; then
    write_given=0
    for a in "$@"; do
        case "$a" in --write | --write=*) write_given=1 ;; esac
    done
    [ "$write_given" = 1 ] || args+=(--write "$repo/docs/validation.md")
fi

cd "$repo"
export MPLBACKEND=Agg
exec "$venv/bin/python" "$here/crosscheck.py" --actor "$repo/target/release/actor" "${args[@]}"
