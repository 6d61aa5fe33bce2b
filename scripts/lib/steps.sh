# Sourced by the scripts: `step NAME CMD...` runs CMD, says what runs, says
# again every 10 s while it runs (a cold build takes minutes), and how long
# it took. Its exit status is CMD's.
step() {
    local name=$1
    shift
    local start=$SECONDS
    echo "==> $name" >&2
    (
        while sleep 10; do
            echo "    ... $name: $((SECONDS - start))s so far" >&2
        done
    ) &
    local ticker=$!
    local status=0
    "$@" || status=$?
    kill "$ticker" 2>/dev/null || true
    wait "$ticker" 2>/dev/null || true
    if [ "$status" -eq 0 ]; then
        echo "    $name: done in $((SECONDS - start))s" >&2
    else
        echo "    $name: FAILED (exit $status) after $((SECONDS - start))s" >&2
    fi
    return "$status"
}
