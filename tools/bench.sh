#!/usr/bin/env bash
# Side-by-side benchmark in one go (issue 11): our 3-node cluster, real dqlite 1.11 (through
# go-dqlite's own client and through our driver), and sqlx-sqlite on a local file, for each
# BENCH.md workload and worker count. Writes the results section of docs/BENCHMARKS.md and the
# chart docs/benchmarks.png (tools/bench-report), and prints the largest node RSS of each run.
#
# usage: tools/bench.sh
# knobs (environment):
#   BENCH_SECS=10                 seconds per measurement (BENCH_SECS=2 for a smoke test)
#   BENCH_ROUNDS=1                runs of the whole matrix; each cell reports its median round
#   BENCH_WORKERS="1 8 32"        worker counts
#   BENCH_WORKLOADS="kvwrite kvreadwrite bank bulk scan"
#   BENCH_TARGETS="own real go sqlite"
#                                 own: dqlited nodes (workload_bench --launch own --nodes 3)
#                                 real: C dqlite 1.11 nodes, our driver (--launch real)
#                                 go: dqlite-anchor.sh (go-dqlite's dqlite-benchmark; kvwrite
#                                     and kvreadwrite only)
#                                 sqlite: sqlx-sqlite, local file, WAL, synchronous=FULL
#   BENCH_EXTRAS="embedded failover"
#                                 after the matrix: embedded (examples/embedded_bench: point
#                                 selects on an embedded leader in process vs sqlx-sqlite) and
#                                 failover (tests/failover_bench.rs: write unavailability after a
#                                 leader SIGKILL, ours vs real dqlite, FAILOVER_RUNS runs each)
#   BENCH_PROFILE=release         cargo profile of workload_bench and dqlited (dev: no release build)
#   BENCH_OUT=target/bench        raw results and logs
#   BENCH_DOC=docs/BENCHMARKS.md  BENCH_CHART=docs/benchmarks.png
#   DQLITE_ANCHOR=...             path of dqlite-anchor.sh (default: ../shared/tools/ from the repo)
# Every process a measurement starts runs in its own session and is killed when it ends (and on
# exit or interruption of this script): no node is left running.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SECS=${BENCH_SECS:-10}
ROUNDS=${BENCH_ROUNDS:-1}
WORKERS=${BENCH_WORKERS:-1 8 32}
WORKLOADS=${BENCH_WORKLOADS:-kvwrite kvreadwrite bank bulk scan}
TARGETS=${BENCH_TARGETS:-own real go sqlite}
PROFILE=${BENCH_PROFILE:-release}
EXTRAS=${BENCH_EXTRAS-embedded failover}
OUT=${BENCH_OUT:-$ROOT/target/bench}
DOC=${BENCH_DOC:-$ROOT/docs/BENCHMARKS.md}
CHART=${BENCH_CHART:-$ROOT/docs/benchmarks.png}
ANCHOR=${DQLITE_ANCHOR:-}
if [ -z "$ANCHOR" ]; then
  for a in "$ROOT/../shared/tools/dqlite-anchor.sh" "$ROOT/../../shared/tools/dqlite-anchor.sh"; do
    [ -x "$a" ] || [ -f "$a" ] && { ANCHOR=$a; break; }
  done
fi

# The command that reproduces this run (only the knobs that differ from the defaults).
CMD="tools/bench.sh"
[ "$SECS" != 10 ] && CMD="BENCH_SECS=$SECS $CMD"
[ "$ROUNDS" != 1 ] && CMD="BENCH_ROUNDS=$ROUNDS $CMD"
[ "$WORKERS" != "1 8 32" ] && CMD="BENCH_WORKERS=\"$WORKERS\" $CMD"
[ "$WORKLOADS" != "kvwrite kvreadwrite bank bulk scan" ] && CMD="BENCH_WORKLOADS=\"$WORKLOADS\" $CMD"
[ "$TARGETS" != "own real go sqlite" ] && CMD="BENCH_TARGETS=\"$TARGETS\" $CMD"
[ "$PROFILE" != release ] && CMD="BENCH_PROFILE=$PROFILE $CMD"
[ "$EXTRAS" != "embedded failover" ] && CMD="BENCH_EXTRAS=\"$EXTRAS\" $CMD"

case "$PROFILE" in
  release) BIN_DIR=$ROOT/target/release ;;
  dev | debug) PROFILE=dev; BIN_DIR=$ROOT/target/debug ;;
  *) echo "BENCH_PROFILE must be release or dev" >&2; exit 2 ;;
esac

sessions=()
cleanup() {
  for s in "${sessions[@]:-}"; do
    [ -n "$s" ] && kill -KILL -- "-$s" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== building (profile $PROFILE)" >&2
cargo build --profile "$PROFILE" --example workload_bench --example embedded_bench --bin dqlited >&2
case " $EXTRAS " in *" failover "*) cargo test --profile "$PROFILE" -p dqlite --test failover_bench --no-run >&2 ;; esac
cargo build --manifest-path tools/bench-report/Cargo.toml --target-dir "$ROOT/target" >&2
WB=$BIN_DIR/examples/workload_bench
export DQLITED_BIN=$BIN_DIR/dqlited
REPORT=$ROOT/target/debug/bench-report

case " $TARGETS " in *" go "*)
  [ -n "$ANCHOR" ] || { echo "dqlite-anchor.sh not found: set DQLITE_ANCHOR or drop go from BENCH_TARGETS" >&2; exit 2; }
  command -v dqlite-benchmark >/dev/null || { echo "dqlite-benchmark (Debian go-dqlite) missing: drop go from BENCH_TARGETS" >&2; exit 2; }
esac

mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
failures=()

# Largest VmHWM (peak RSS, MiB) over the dqlited processes of session $1, sampled until the
# session leader $1 exits; written to $2.
sample_rss() {
  local sid=$1 file=$2 peak=0 kb
  while kill -0 "$sid" 2>/dev/null; do
    for p in $(ps -o pid= -s "$sid" 2>/dev/null); do
      [ "$(cat /proc/$p/comm 2>/dev/null)" = dqlited ] || continue
      kb=$(awk '/^VmHWM:/ {print $2}' /proc/$p/status 2>/dev/null || echo 0)
      [ -n "$kb" ] && [ "$kb" -gt "$peak" ] && peak=$kb
    done
    echo "$peak" >"$file"
    sleep 0.5
  done
}

# run NAME LOG CMD...: runs CMD in a session of its own with a time bound, kills what is left.
run() {
  local name=$1 log=$2 sid rc=0
  shift 2
  setsid "$@" >"$log.out" 2>"$log.err" &
  sid=$!
  sessions+=("$sid")
  if [ "$name" = own ]; then
    sample_rss "$sid" "$log.rss" &
  fi
  local bound=${RUN_BOUND:-$((SECS * 3 + 180))} waited=0
  while kill -0 "$sid" 2>/dev/null; do
    if [ "$waited" -ge "$bound" ]; then
      echo "   timed out after ${bound}s" >&2
      kill -KILL -- "-$sid" 2>/dev/null || true
      rc=124
      break
    fi
    sleep 1
    waited=$((waited + 1))
  done
  if [ "$rc" = 0 ]; then
    wait "$sid" || rc=$?
  fi
  kill -KILL -- "-$sid" 2>/dev/null || true
  wait 2>/dev/null || true
  return "$rc"
}

for round in $(seq 1 "$ROUNDS"); do
 [ "$ROUNDS" = 1 ] || echo "== round $round of $ROUNDS" >&2
 for wl in $WORKLOADS; do
  for w in $WORKERS; do
    for t in $TARGETS; do
      log=$OUT/$wl-$w-$t
      case $t in
        own) args=(--launch own --nodes 3) ;;
        real) args=(--launch real --nodes 3) ;;
        sqlite)
          rm -f "$OUT/$wl-$w.sqlite" "$OUT/$wl-$w.sqlite-wal" "$OUT/$wl-$w.sqlite-shm"
          args=(--sqlite "$OUT/$wl-$w.sqlite") ;;
        go)
          case $wl in kvwrite | kvreadwrite) ;; *) continue ;; esac ;;
        *) echo "unknown target $t" >&2; exit 2 ;;
      esac
      echo "== $wl, $w workers, $t" >&2
      if [ "$t" = go ]; then
        if run go "$log" bash "$ANCHOR" 3 "$w" "$wl" "$SECS"; then
          # "dqlite1.11 nodes=3 workers=W WL exec: n=N ops/s=X p50=Yms p99=Zms errors=E"
          python3 - "$log.out" "$wl" "$w" >>"$RESULTS" <<'PY'
import json, re, sys
path, wl, w = sys.argv[1], sys.argv[2], int(sys.argv[3])
for line in open(path):
    m = re.search(r' (exec|query): n=(\d+) ops/s=([\d.]+) p50=([\d.]+)ms p99=([\d.]+)ms errors=(\d+)', line)
    if m:
        print(json.dumps({"label": "go", "workload": wl, "workers": w,
                          "kind": "write" if m[1] == "exec" else "read", "n": int(m[2]),
                          "ops_per_s": float(m[3]), "p50_ms": float(m[4]), "p99_ms": float(m[5]),
                          "errors": int(m[6])}))
PY
          cat "$log.out" >&2
        else
          failures+=("$wl/$w/$t")
          tail -5 "$log.err" >&2 || true
        fi
        continue
      fi
      if run "$t" "$log" "$WB" "${args[@]}" --workload "$wl" --workers "$w" --duration "$SECS" --label "$t" --json; then
        grep '^{' "$log.out" >>"$RESULTS" || true
        grep -v '^{' "$log.out" >&2 || true
      else
        failures+=("$wl/$w/$t")
        tail -5 "$log.err" >&2 || true
      fi
      if [ "$t" = own ] && [ -s "$log.rss" ]; then
        kb=$(cat "$log.rss")
        mib=$(awk -v k="$kb" 'BEGIN {printf "%.1f", k / 1024}')
        echo "   largest dqlited peak RSS: $mib MiB" >&2
        echo "{\"rss\":\"own\",\"workload\":\"$wl\",\"workers\":$w,\"peak_mib\":$mib}" >>"$RESULTS"
      fi
    done
  done
 done
done

for x in $EXTRAS; do
  log=$OUT/extra-$x
  case $x in
    embedded)
      echo "== embedded leader, point selects in process vs sqlx-sqlite" >&2
      cmd=("$BIN_DIR/examples/embedded_bench" 20000) ;;
    failover)
      echo "== failover: write unavailability after a leader SIGKILL, ours vs real dqlite" >&2
      cmd=(cargo test --profile "$PROFILE" -p dqlite --test failover_bench -- --ignored --nocapture) ;;
    *) echo "unknown extra $x" >&2; exit 2 ;;
  esac
  if ! RUN_BOUND=900 run "$x" "$log" "${cmd[@]}"; then
    failures+=("extra/$x")
    tail -5 "$log.err" >&2 || true
    continue
  fi
  # embedded_bench prints its result on stdout, failover_bench on stderr.
  cat "$log.out" >&2
  grep -E "median write unavailability|failover medians" "$log.err" >&2 || true
  python3 - "$x" "$log.out" "$log.err" >>"$RESULTS" <<'PY' || failures+=("extra/$x (output not understood)")
import json, re, sys
kind, text = sys.argv[1], open(sys.argv[2]).read() + open(sys.argv[3]).read()
if kind == "embedded":
    # "  sqlx-sqlite (local file, ...):  S ops/s" and "  dqlite-rs embedded leader, in process:  E ops/s ..."
    s = re.search(r'sqlx-sqlite \(local file.*?:\s+([\d.]+) ops/s', text)
    e = re.search(r'embedded leader, in process:\s+([\d.]+) ops/s', text)
    row = s and e and {"extra": kind, "sqlite_ops": float(s[1]), "embedded_ops": float(e[1])}
else:
    # "failover medians: own X ms, real dqlite Y ms (ratio ...)"
    m = re.search(r'failover medians: own (\d+) ms, real dqlite (\d+) ms', text)
    row = m and {"extra": kind, "own_ms": float(m[1]), "real_ms": float(m[2])}
if not row:
    sys.exit(f"{kind}: output not understood")
print(json.dumps(row))
PY
done

echo "== report" >&2
"$REPORT" --results "$RESULTS" --doc "$DOC" --chart "$CHART" --command "$CMD" --secs "$SECS" --profile "$PROFILE" --rounds "$ROUNDS"
if [ "${#failures[@]}" -gt 0 ]; then
  echo "failed measurements (logs in $OUT): ${failures[*]}" >&2
  exit 1
fi
