#!/usr/bin/env bash
# Tasker in ~15 seconds: a private taskerd, a mixed workload through taskerctl, then stats.
# Run by `make run`. Uses the repo's .venv when present, else taskerd/taskerctl on PATH.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$ROOT/.venv/bin/taskerd" ]]; then
    PATH="$ROOT/.venv/bin:$PATH"
fi
for tool in taskerd taskerctl; do
    command -v "$tool" >/dev/null || { echo "demo: $tool not found (run make install)" >&2; exit 1; }
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/tasker-demo.XXXXXX")"
export TASKER_SOCKET="$WORK/taskerd.sock"
DAEMON_PID=""

cleanup() {
    local status=$?
    if [[ -n "$DAEMON_PID" ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -TERM "$DAEMON_PID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$DAEMON_PID" 2>/dev/null || true
    fi
    if [[ $status -ne 0 && -f "$WORK/taskerd.log" ]]; then
        echo "--- taskerd log (last 20 lines) ---" >&2
        tail -n 20 "$WORK/taskerd.log" >&2
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

# `taskerctl submit` prints the new id; keep only the number.
submit() {
    local out
    out="$(taskerctl submit "$@")"
    grep -Eo '[0-9]+' <<<"$out" | tail -n 1
}

say "Starting taskerd (2 workers, no burst) on $TASKER_SOCKET"
# Tasks run in the daemon's working directory: the temp dir, so their files stay in it.
cd "$WORK"
taskerd --socket "$TASKER_SOCKET" --state-dir "$WORK/state" --workers 2 --max-workers 2 \
    --log-level info >"$WORK/taskerd.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 150); do
    if [[ -S "$TASKER_SOCKET" ]] && taskerctl stats >/dev/null 2>&1; then break; fi
    kill -0 "$DAEMON_PID" 2>/dev/null || { echo "demo: taskerd exited early" >&2; exit 1; }
    sleep 0.1
done
taskerctl stats >/dev/null || { echo "demo: taskerd did not answer within 15s" >&2; exit 1; }
echo "taskerd is up (pid $DAEMON_PID)"

say "Occupying both workers with two tasks that wait for a 'go' file"
gate1="$(submit --shell -- 'while [ ! -e go ]; do sleep 0.05; done')"
gate2="$(submit --shell -- 'while [ ! -e go ]; do sleep 0.05; done')"
echo "tasks $gate1 and $gate2: running, waiting for ./go"

say "Queueing one task per priority, lowest first"
by_priority=()
for p in low normal high critical; do
    id="$(submit -p "$p" --shell -- "echo $p >> order")"
    by_priority+=("$id")
    echo "task $id: priority $p"
done

say "Queueing a task that will time out: sleep 10 with --timeout 1s"
slow="$(submit -t 1s -- sleep 10)"
echo "task $slow: sleep 10, timeout 1s"

say "Queueing a critical task to cancel once it runs: sleep 30"
doomed="$(submit -p critical --shell -- 'touch doomed-running; exec sleep 30')"
echo "task $doomed: sleep 30"

say "Opening the gate: queued tasks now start, highest priority first"
touch go
for _ in $(seq 100); do [[ -e doomed-running ]] && break; sleep 0.1; done
echo "task $doomed is running; cancelling it (SIGTERM to its process group)"
taskerctl cancel "$doomed"

say "Running a task with live output (--follow)"
# shellcheck disable=SC2016 # $i is for the task's shell
taskerctl submit --follow --shell -- \
    'for i in 1 2 3; do echo "tick $i"; sleep 0.3; done; echo "done ticking" >&2'

say "Waiting for the tasks; the exit status is the task's (124 timed out, 125 cancelled)"
taskerctl wait "$gate1" "$gate2" "${by_priority[@]}"
echo "tasks $gate1 $gate2 ${by_priority[*]}: all succeeded"
echo "they started in this order: $(tr '\n' ' ' <order)"
for id in "$slow" "$doomed"; do
    status=0
    taskerctl wait "$id" || status=$?
    echo "task $id: exit $status"
done

say "taskerctl list"
taskerctl list

say "taskerctl stats"
taskerctl stats

say "Stopping the daemon (taskerctl daemon stop)"
taskerctl daemon stop
for _ in $(seq 200); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$DAEMON_PID" 2>/dev/null; then
    echo "demo: taskerd still running 20s after stop" >&2
    exit 1
fi
status=0
wait "$DAEMON_PID" || status=$?
if [[ $status -ne 0 ]]; then
    echo "demo: taskerd exited $status" >&2
    exit 1
fi
echo "taskerd exited cleanly"
DAEMON_PID=""
say "Done: the temporary socket and journal in $WORK are removed"
