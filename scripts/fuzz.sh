#!/usr/bin/env bash
# Long fuzzing runs: every target of tests/fuzz/targets.py in turn, SECONDS_PER_TARGET each (default 300).
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET ...]
#
# Needs atheris (bash scripts/setup.sh --extras fuzz). Seeds are made again from real runs each time
# (tests/fuzz/seeds.py); each target's corpus grows in .fuzz/corpus/TARGET across runs. A finding (crash-*,
# timeout-*, oom-*) lands in .fuzz/findings/TARGET/ and ends that target's run (slow-unit-* there are inputs
# that took over 10 s, kept to look at, not findings). The table at the end gives each target's executions,
# coverage (libFuzzer's cov: edges of asynclog and PyYAML covered), corpus and the findings of this run; the
# script exits 1 when there is any. Full logs: .fuzz/logs/TARGET.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET ...]"
case "${1:-300}" in
    -h|--help) echo "$usage"; exit 0 ;;
    *[!0-9]*|0) echo "fuzz.sh: '$1' is not a number of seconds; $usage" >&2; exit 2 ;;
esac
seconds="${1:-300}"
shift || true
python=.venv/bin/python
work=.fuzz
if ! "$python" -c "import atheris" 2>/dev/null; then
    echo "fuzz.sh: atheris is not installed in .venv; run: bash scripts/setup.sh --extras fuzz" >&2
    exit 2
fi
scratch=$(mktemp -d -p /dev/shm asynclog-fuzz.XXXXXX 2>/dev/null || mktemp -d)  # inputs are written here as files
trap 'rm -rf "$scratch"' EXIT
export FUZZ_SCRATCH="$scratch"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cd tests/fuzz && "../../$python" -c "import targets; print('\n'.join(targets.TARGETS))")
fi

"$python" tests/fuzz/seeds.py "$work/seeds"
export FUZZ_SEEDS="$work/seeds"
found=0
printf '%-14s %10s %8s %8s %10s %s\n' target executions exec/s cov corpus findings > "$work/summary.txt"
for target in "${targets[@]}"; do
    mkdir -p "$work/corpus/$target" "$work/findings/$target" "$work/logs"
    cp -n "$work/seeds/corpus/$target/"* "$work/corpus/$target/" 2>/dev/null || true
    echo "fuzz.sh: $target for ${seconds}s" >&2
    touch "$work/logs/$target.start"  # findings of this run are the files newer than this
    status=0
    "$python" tests/fuzz/run.py "$target" -max_total_time="$seconds" -print_final_stats=1 \
        -artifact_prefix="$work/findings/$target/" "$work/corpus/$target" > "$work/logs/$target.txt" 2>&1 || status=$?
    log="$work/logs/$target.txt"
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    findings=$(find "$work/findings/$target" -type f -newer "$work/logs/$target.start" \
        \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
    printf '%-14s %10s %8s %8s %10s %s\n' "$target" "${execs:-?}" "${speed:-?}" "${cov:-?}" \
        "$(find "$work/corpus/$target" -type f | wc -l)" "$findings" >> "$work/summary.txt"
    if [ "$status" -ne 0 ] || [ "$findings" -ne 0 ]; then
        found=1
        echo "fuzz.sh: $target: finding (exit $status); see $log and $work/findings/$target/" >&2
    fi
done
cat "$work/summary.txt"
exit "$found"
