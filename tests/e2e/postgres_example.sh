#!/bin/bash
# experiments/postgres-latency.yaml for real, against Debian's PostgreSQL: a throwaway cluster
# (initdb and postgres run as an unprivileged user in a temporary folder, listening on
# 10.77.18.2:5432 and a socket in that folder only; the system's cluster is never touched) in a
# network namespace of this test (fl-pg-srv-PID), faultline with --local in another
# (fl-pg-cli-PID, 10.77.18.1). Checks that the probe's SLO holds before the fault and is violated
# under 200 ms of delay on the server's side, and that pgbench (select-only, one client, run from
# the same namespace under the same delay) sees it too; prints both tools' figures.
# Needs root (exits 77 without). Without PostgreSQL or pgbench: fails on CI (CI=true), else
# skipped (77).
set -euo pipefail
build=${1:?usage: postgres_example.sh BUILD_DIR}
cd "$(dirname "$0")/../.."
faultline=$(realpath "$build/controller/faultline")
fail() { echo "postgres example: FAIL: $*" >&2; exit 1; }
skip() {
  [[ ${CI:-} == true ]] && fail "$* (CI=true: scripts/deps installs postgresql)"
  echo "postgres example: skipped: $*"
  exit 77
}
((EUID == 0)) || { echo "postgres example: skipped: needs root (network namespaces)"; exit 77; }
bin=
for v in 17 16 15 14 13; do
  [[ -x /usr/lib/postgresql/$v/bin/postgres ]] && { bin=/usr/lib/postgresql/$v/bin; break; }
done
[[ -n $bin ]] || skip "no PostgreSQL in /usr/lib/postgresql"
[[ -x $bin/pgbench ]] || skip "no pgbench in $bin"
user=postgres
id -u "$user" >/dev/null 2>&1 || user=nobody
as_user() { setpriv --reuid="$(id -u "$user")" --regid="$(id -g "$user")" --clear-groups -- "$@"; }

run=$$
a=fl-pg-cli-$run
b=fl-pg-srv-$run
work=$(mktemp -d)
chmod 755 "$work"
postgres_pid=
cleanup() {
  if [[ -n $postgres_pid ]]; then
    kill -INT "$postgres_pid" 2>/dev/null || true # fast shutdown
    wait "$postgres_pid" 2>/dev/null || true
  fi
  ip netns del "$a" 2>/dev/null || true
  ip netns del "$b" 2>/dev/null || true
  rm -rf -- "$work"
}
trap cleanup EXIT

source tests/e2e/example_netns.sh
example_netns "$a" "$b" fl-pg0 fl-pg1 10.77.18

mkdir "$work/pg"
chown "$user:" "$work/pg"
# trust on the test's own link: the cluster lives for this test only, in namespaces of its own.
as_user "$bin/initdb" -D "$work/pg/data" -U probe --auth-local=trust --auth-host=trust --no-sync \
  --no-instructions >"$work/initdb.log" 2>&1 || fail "initdb: $(cat "$work/initdb.log")"
echo "host all all 10.77.18.0/24 trust" >>"$work/pg/data/pg_hba.conf" # the test's own link
ip netns exec "$b" setpriv --reuid="$(id -u "$user")" --regid="$(id -g "$user")" --clear-groups -- \
  "$bin/postgres" -D "$work/pg/data" -k "$work/pg" -p 5432 -c listen_addresses=10.77.18.2 -c fsync=off \
  >"$work/postgres.log" 2>&1 &
postgres_pid=$!
for _ in $(seq 100); do
  ip netns exec "$a" "$bin/pg_isready" -q -h 10.77.18.2 -p 5432 && break
  sleep 0.1
done
ip netns exec "$a" "$bin/pg_isready" -q -h 10.77.18.2 -p 5432 || fail "postgres did not listen: $(cat "$work/postgres.log")"

# pgbench's select-only figures over 2 s, one client, its connection kept: "latency_ms tps".
ip netns exec "$a" "$bin/pgbench" -i -s 1 -q -h 10.77.18.2 -p 5432 -U probe postgres >"$work/pgbench-init.log" 2>&1 ||
  fail "pgbench -i: $(cat "$work/pgbench-init.log")"
bench() {
  ip netns exec "$a" "$bin/pgbench" -S -c 1 -T 2 -h 10.77.18.2 -p 5432 -U probe postgres 2>&1 |
    awk '/^latency average/ { l = $4 } /^tps/ { t = $3 } END { print l, t }'
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

# The example: held before, violated under the delay.
status=0
ip netns exec "$a" "$faultline" run --local experiments/postgres-latency.yaml --var RUN="$run" --db "$work/run.db" \
  --state-dir "$work/state" --journal "$work/run.json" >"$work/run.txt" 2>&1 || status=$?
out=$(<"$work/run.txt")
echo "$out"
((status == 1)) || fail "faultline run exited $status, expected 1 (violated)"
grep -q "^verdict: violated" <<<"$out" || fail "no 'verdict: violated'"
read -r ok_before failed_before detail_before <<<"$(samples "$work/run.json" orders-db before)"
((ok_before >= 5 && failed_before == 0)) ||
  fail "before the fault $ok_before sample(s) ok, $failed_before failed (at least 5 ok, none failed expected)"
echo "postgres example: the first sample: $detail_before"
violation=$(grep -m1 -E "slo.violated .*db-fast.*p99 [0-9.]+ms \(< 300ms\) FAILED" <<<"$out") ||
  fail "no check of db-fast failing on p99"
faultline_p99=$(sed -nE 's/.*p99 ([0-9.]+)ms \(< 300ms\) FAILED.*/\1/p' <<<"$violation")

# pgbench without the delay, then under the same delay held by a fault alone.
read -r bench_clean_ms bench_clean_tps <<<"$(bench)"
[[ -n $bench_clean_ms ]] || fail "no figures from pgbench"
cat >"$work/delay.yaml" <<EOF
apiVersion: faultline/v1
kind: Experiment
metadata: {name: delay-for-pgbench}
method:
  - fault: {type: network.delay, duration: 5s, target: {interface: fl-pg1, netns: /var/run/netns/$b}, delay: 200ms}
EOF
ip netns exec "$a" "$faultline" run --local "$work/delay.yaml" --db "$work/run.db" --state-dir "$work/state" \
  >"$work/delay.txt" 2>&1 &
delay_pid=$!
for _ in $(seq 200); do
  grep -q fault.applied "$work/delay.txt" && break
  sleep 0.05
done
grep -q fault.applied "$work/delay.txt" || { wait "$delay_pid" || true; fail "the delay was not applied: $(cat "$work/delay.txt")"; }
read -r bench_delay_ms bench_delay_tps <<<"$(bench)"
wait "$delay_pid" || fail "the delay run failed: $(cat "$work/delay.txt")"
echo "postgres example: a query under 200 ms of delay on the server's side:"
echo "  faultline postgres probe (a fresh connection per sample): p99 ${faultline_p99} ms under the fault (SLO p99 < 300ms violated)"
echo "  pgbench -S (1 client, its connection kept): latency ${bench_delay_ms} ms, ${bench_delay_tps} tps; without the delay ${bench_clean_ms} ms, ${bench_clean_tps} tps"
echo "  /proc/loadavg: $(cat /proc/loadavg)"
awk -v l="$bench_delay_ms" 'BEGIN { exit !(l >= 200) }' || fail "pgbench saw no delay: $bench_delay_ms ms"
awk -v l="$bench_clean_ms" 'BEGIN { exit !(l < 50) }' || fail "pgbench was slow without the delay: $bench_clean_ms ms"
# A probe's sample is three delayed round trips at least (connect, startup and authentication,
# the query), pgbench's transaction one.
awk -v f="$faultline_p99" -v l="$bench_delay_ms" 'BEGIN { exit !(f >= 2.7 * l) }' ||
  fail "faultline's p99 $faultline_p99 ms is not the three round trips pgbench's $bench_delay_ms ms implies"
echo "postgres example: OK"
