#!/bin/bash
# experiments/redis-latency.yaml and experiments/redis-kill.yaml for real, against Debian's
# redis-server: two network namespaces of this test (fl-rds-cli-PID with 10.77.17.1, where
# faultline runs with --local; fl-rds-srv-PID with redis-server on 10.77.17.2:6379, under a
# supervisor loop that starts it again 2 s after it exits).
#   1. redis-latency: the SLO holds before the fault and is violated under 50 ms of delay on the
#      server's side; redis-benchmark, run from the same namespace while the delay is on, sees it
#      too (its p50 at least 50 ms); faultline's p99 under the fault is checked against it.
#   2. redis-kill: SIGKILL to redis-server; the run's time to recover (step.recovered) is checked
#      against the supervisor's own log: the time from redis-server's exit until it answered again.
# Needs root (exits 77 without). Without redis-server or redis-benchmark: fails on CI (CI=true),
# else skipped (77).
set -euo pipefail
build=${1:?usage: redis_example.sh BUILD_DIR}
cd "$(dirname "$0")/../.."
faultline=$(realpath "$build/controller/faultline")
fail() { echo "redis example: FAIL: $*" >&2; exit 1; }
skip() {
  [[ ${CI:-} == true ]] && fail "$* (CI=true: scripts/deps installs redis-server and redis-tools)"
  echo "redis example: skipped: $*"
  exit 77
}
((EUID == 0)) || { echo "redis example: skipped: needs root (network namespaces)"; exit 77; }
command -v redis-server >/dev/null || skip "no redis-server"
command -v redis-benchmark >/dev/null || skip "no redis-benchmark"
command -v redis-cli >/dev/null || skip "no redis-cli"

run=$$
a=fl-rds-cli-$run
b=fl-rds-srv-$run
work=$(mktemp -d)
supervisor=
cleanup() {
  if [[ -n $supervisor ]]; then
    kill -- -"$supervisor" 2>/dev/null || true # the supervisor loop and its redis-server
    wait "$supervisor" 2>/dev/null || true
  fi
  ip netns del "$a" 2>/dev/null || true
  ip netns del "$b" 2>/dev/null || true
  rm -rf -- "$work"
}
trap cleanup EXIT

source tests/e2e/example_netns.sh
example_netns "$a" "$b" fl-rds0 fl-rds1 10.77.17

# The supervisor: starts redis-server, and 2 s after it exits starts it again. Its log has the
# wall-clock time of each exit and start.
cat >"$work/supervise.sh" <<EOF
while :; do
  echo "start \$(date +%s.%N)"
  redis-server --bind 10.77.17.2 --port 6379 --save '' --appendonly no --dir '$work' \
    --logfile '$work/redis.log' --protected-mode no
  echo "exit \$(date +%s.%N) \$?"
  sleep 2
done
EOF
set -m # the supervisor gets its own process group, so cleanup ends it with its redis-server
ip netns exec "$b" bash "$work/supervise.sh" >"$work/supervisor.log" 2>&1 &
supervisor=$!
set +m
cli() { ip netns exec "$a" redis-cli -h 10.77.17.2 -p 6379 "$@"; }
for _ in $(seq 50); do
  [[ $(cli ping 2>/dev/null) == PONG ]] && break
  sleep 0.1
done
[[ $(cli ping 2>/dev/null) == PONG ]] || fail "redis-server did not answer: $(cat "$work/redis.log" "$work/supervisor.log")"

# redis-benchmark's PING figures (one connection kept, so its latency is one round trip): "p50 rps".
bench() {
  ip netns exec "$a" redis-benchmark -h 10.77.17.2 -p 6379 -t ping -n "$1" -c 1 --csv |
    awk -F'"' '/^"PING_MBULK"/ { print $12, $4 }'
}
# The samples of PROBE in PHASE in a run's journal JSON: "ok failed first-detail".
samples() {
  python3 - "$1" "$2" "$3" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
s = [x for x in j["samples"] if x["probe"] == sys.argv[2] and x["phase"] == sys.argv[3]]
print(sum(x["ok"] for x in s), sum(not x["ok"] for x in s), s[0]["detail"] if s else "-")
PY
}
# Runs FILE (a fault alone) in the background and waits until its fault is applied.
fault_alone() {
  ip netns exec "$a" "$faultline" run --local "$1" --db "$work/run.db" --state-dir "$work/state" >"$1.txt" 2>&1 &
  fault_pid=$!
  for _ in $(seq 200); do
    grep -q fault.applied "$1.txt" && return 0
    sleep 0.05
  done
  wait "$fault_pid" || true
  fail "the fault of $1 was not applied: $(cat "$1.txt")"
}

# --- 1. redis-latency: held before, violated under the delay.
status=0
ip netns exec "$a" "$faultline" run --local experiments/redis-latency.yaml --var RUN="$run" --db "$work/run.db" \
  --state-dir "$work/state" --journal "$work/latency.json" >"$work/latency.txt" 2>&1 || status=$?
out=$(<"$work/latency.txt")
echo "$out"
((status == 1)) || fail "redis-latency: faultline run exited $status, expected 1 (violated)"
grep -q "^verdict: violated" <<<"$out" || fail "redis-latency: no 'verdict: violated'"
read -r ok_before failed_before detail_before <<<"$(samples "$work/latency.json" redis-ping before)"
((ok_before >= 5 && failed_before == 0)) ||
  fail "redis-latency: before the fault $ok_before sample(s) ok, $failed_before failed (at least 5 ok, none failed expected)"
[[ $detail_before == "'PONG' in "* ]] || fail "redis-latency: the first sample's detail is '$detail_before', not PONG"
# The first failed check of the SLO under the fault: its p99, in ms.
violation=$(grep -m1 -E "slo.violated .*redis-fast.*p99 [0-9.]+ms \(< 20ms\) FAILED" <<<"$out") ||
  fail "redis-latency: no check of redis-fast failing on p99"
faultline_p99=$(sed -nE 's/.*p99 ([0-9.]+)ms \(< 20ms\) FAILED.*/\1/p' <<<"$violation")

# redis-benchmark without the delay, then under the same delay held by a fault alone.
bench_clean=$(bench 2000)
[[ -n $bench_clean ]] || fail "no figures from redis-benchmark"
cat >"$work/delay.yaml" <<EOF
apiVersion: faultline/v1
kind: Experiment
metadata: {name: delay-for-redis-benchmark}
method:
  - fault: {type: network.delay, duration: 5s, target: {interface: fl-rds1, netns: /var/run/netns/$b}, delay: 50ms}
EOF
fault_alone "$work/delay.yaml"
bench_delay=$(bench 40)
wait "$fault_pid" || fail "the delay run failed: $(cat "$work/delay.yaml.txt")"
read -r bench_clean_p50 bench_clean_rps <<<"$bench_clean"
read -r bench_delay_p50 bench_delay_rps <<<"$bench_delay"
echo "redis example: PING under 50 ms of delay on redis-server's side:"
echo "  faultline redis probe (a fresh connection per sample: connect, PING): p99 ${faultline_p99} ms under the fault (SLO p99 < 20ms violated)"
echo "  redis-benchmark (1 connection kept): p50 ${bench_delay_p50} ms, ${bench_delay_rps}/s; without the delay p50 ${bench_clean_p50} ms, ${bench_clean_rps}/s"
echo "  /proc/loadavg: $(cat /proc/loadavg)"
awk -v p="$bench_delay_p50" 'BEGIN { exit !(p >= 50) }' || fail "redis-benchmark saw no delay: p50 $bench_delay_p50 ms"
awk -v p="$bench_clean_p50" 'BEGIN { exit !(p < 20) }' || fail "redis-benchmark was slow without the delay: p50 $bench_clean_p50 ms"
# The probe's sample is two round trips (the connect's SYN-ACK and the PING's reply are both
# delayed), redis-benchmark's one: at least 1.8 times redis-benchmark's, at most twice plus 100 ms.
awk -v f="$faultline_p99" -v b="$bench_delay_p50" 'BEGIN { exit !(f >= 1.8 * b && f <= 2 * b + 100) }' ||
  fail "faultline's p99 $faultline_p99 ms does not agree with redis-benchmark's p50 $bench_delay_p50 ms (one round trip)"

# --- 2. redis-kill: SIGKILL, restarted by the supervisor 2 s later; time to recover.
status=0
ip netns exec "$a" "$faultline" run --local experiments/redis-kill.yaml --var RUN="$run" --db "$work/run.db" \
  --state-dir "$work/state" --journal "$work/kill.json" >"$work/kill.txt" 2>&1 || status=$?
out=$(<"$work/kill.txt")
echo "$out"
((status == 0)) || fail "redis-kill: faultline run exited $status, expected 0 (held after the restart)"
grep -q "^verdict: held" <<<"$out" || fail "redis-kill: no 'verdict: held'"
recovered=$(grep -m1 "step.recovered" <<<"$out") || fail "redis-kill: no step.recovered"
ttr=$(sed -nE 's/.*recovered ([0-9.]+)(m?s) after its revert.*/\1 \2/p' <<<"$recovered")
[[ -n $ttr ]] || fail "redis-kill: cannot read the time to recover in: $recovered"
ttr_s=$(awk -v v="${ttr% *}" -v u="${ttr#* }" 'BEGIN { printf "%.3f", u == "ms" ? v / 1000 : v }')
# What the supervisor saw: redis-server exited at E and was started again at S; it answered
# (the probe's first good sample) a few ms after S.
exit_at=$(awk '$1 == "exit" { print $2; exit }' "$work/supervisor.log")
start_at=$(awk -v e="$exit_at" '$1 == "start" && $2 > e { print $2; exit }' "$work/supervisor.log")
[[ -n $exit_at && -n $start_at ]] || fail "the supervisor saw no exit and start: $(cat "$work/supervisor.log")"
down=$(awk -v e="$exit_at" -v s="$start_at" 'BEGIN { printf "%.3f", s - e }')
echo "redis example: redis-server killed (SIGKILL) and started again by its supervisor:"
echo "  faultline: $recovered"
echo "  supervisor: exited at $exit_at, started again at $start_at: down ${down} s"
echo "  /proc/loadavg: $(cat /proc/loadavg)"
# The time to recover counts from the revert, 100 ms after the kill, until the first sample that
# makes the SLO hold (the probe samples every 100 ms): down - 0.1 s, within a few samples.
awk -v t="$ttr_s" -v d="$down" 'BEGIN { exit !(t >= d - 0.4 && t <= d + 0.6) }' ||
  fail "time to recover ${ttr_s} s does not agree with the supervisor's ${down} s down"
echo "redis example: OK"
