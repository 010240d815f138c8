#!/bin/sh
# Before/after of one bench_listener.py mode, alternating in one run: the code of
# commit BASE and of commit NEW (default HEAD) exported to temporary directories and
# run by the same interpreter, ROUNDS times each, base first.
#
#   bench/ab_listener.sh BASE [NEW] [ROUNDS] [MODE ARGS...]
#   bench/ab_listener.sh e6ed2a2 HEAD 6 giveup --trials 40
#
# Prints each run's table rows (not the header rows), headed
# "== round N base|new TIME load L".
set -eu
base=$1; new=${2:-HEAD}; rounds=${3:-6}
shift $(( $# < 3 ? $# : 3 ))
[ $# -gt 0 ] || set -- giveup --trials 40
python=${PYTHON:-/opt/unitgen/bin/python}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/unitgen-ab-XXXXXX)
trap 'rm -rf "$work"' EXIT
for side in base new; do
    if [ $side = base ]; then rev=$base; else rev=$new; fi
    mkdir "$work/$side"
    git -C "$repo" archive "$rev" | tar -x -C "$work/$side"
done
round=1
while [ $round -le "$rounds" ]; do
    for side in base new; do
        echo "== round $round $side $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)"
        "$python" "$work/$side/bench/bench_listener.py" "$@" 2>&1 \
            | grep -E '^\| |listener stats' | grep -vE '^\|( *-+ *\|| measure | path )' || true
    done
    round=$((round + 1))
done
