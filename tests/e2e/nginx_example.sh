#!/bin/bash
# experiments/nginx-load.yaml for real, against Debian's nginx: two network namespaces of this test
# (fl-web0 with 10.77.2.1 in A, the probing side; nginx on 10.77.2.2:8080 in B), `faultline run
# --local` in A. Checks that the load probe's SLO holds before the fault and is violated under the
# 5 % loss, then measures wrk (a closed model: 16 connections kept alive) on the same link with and
# without the same loss, and prints both tools' numbers with /proc/loadavg.
# Needs root (exits 77 without). Without nginx or wrk: fails on CI (CI=true), else skipped (77).
set -euo pipefail
build=${1:?usage: nginx_example.sh BUILD_DIR}
cd "$(dirname "$0")/../.."
faultline=$build/controller/faultline
fail() { echo "nginx example: FAIL: $*" >&2; exit 1; }
skip() {
  [[ ${CI:-} == true ]] && fail "$* (CI=true: scripts/deps installs nginx and wrk)"
  echo "nginx example: skipped: $*"
  exit 77
}
((EUID == 0)) || { echo "nginx example: skipped: needs root (network namespaces)"; exit 77; }
PATH=$PATH:/usr/sbin
command -v nginx >/dev/null || skip "no nginx"
command -v wrk >/dev/null || skip "no wrk"

a=fl-ngx-a-$$
b=fl-ngx-b-$$
work=$(mktemp -d)
nginx_pid=
cleanup() {
  if [[ -n $nginx_pid ]]; then
    kill "$nginx_pid" 2>/dev/null || true
    wait "$nginx_pid" 2>/dev/null || true
  fi
  ip netns del "$a" 2>/dev/null || true
  ip netns del "$b" 2>/dev/null || true
  rm -rf -- "$work"
}
trap cleanup EXIT

source tests/e2e/example_netns.sh
example_netns "$a" "$b" fl-web0 fl-web1 10.77.2

mkdir -p "$work/state"
cat >"$work/nginx.conf" <<EOF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/error.log;
daemon off;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/body;
  proxy_temp_path $work/proxy;
  fastcgi_temp_path $work/fastcgi;
  uwsgi_temp_path $work/uwsgi;
  scgi_temp_path $work/scgi;
  server {
    listen 10.77.2.2:8080;
    location / { return 200 "ok\n"; }
  }
}
EOF
ip netns exec "$b" nginx -e "$work/error.log" -p "$work" -c "$work/nginx.conf" &
nginx_pid=$!
for _ in $(seq 50); do
  ip netns exec "$a" bash -c 'exec 3<>/dev/tcp/10.77.2.2/8080' 2>/dev/null && break
  sleep 0.1
done
ip netns exec "$a" bash -c 'exec 3<>/dev/tcp/10.77.2.2/8080' 2>/dev/null || fail "nginx did not listen: $(cat "$work/error.log")"

# wrk's requests per second over 3 s from A.
wrk_rate() {
  ip netns exec "$a" wrk -t2 -c16 -d3s http://10.77.2.2:8080/ | sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p'
}

wrk_clean=$(wrk_rate)

# The example itself: the SLO holds before the fault and is violated under the loss (exit 1).
status=0
ip netns exec "$a" "$faultline" run --local experiments/nginx-load.yaml --db "$work/run.db" \
  --state-dir "$work/state" --journal "$work/run.json" >"$work/run.txt" 2>&1 || status=$?
out=$(<"$work/run.txt")
echo "$out"
((status == 1)) || fail "faultline run exited $status, expected 1 (violated)"
grep -q "^verdict: violated" <<<"$out" || fail "no 'verdict: violated'"
grep -q "slo.violated .*web-under-load" <<<"$out" || fail "the SLO web-under-load is not the one violated"
# The first load sample of a phase, from the run's journal (samples are not printed by run).
sample() {
  python3 - "$work/run.json" "$1" <<'PY'
import json, sys
s = [x for x in json.load(open(sys.argv[1]))["samples"] if x["probe"] == "web" and x["phase"] == sys.argv[2]]
print(s[0]["detail"] if s else "")
PY
}
before=$(sample before)
grep -Eq "^1000 requests in 1s: [0-9]+ ok" <<<"$before" || fail "no load sample before the fault: '$before'"
during=$(sample during)
grep -Eq "^1000 requests in 1s: [0-9]+ ok \([0-9.]+/s\), [0-9]+ failed" <<<"$during" ||
  fail "no load sample during the fault: '$during'"
faultline_rate=$(sed -n 's/.* ok (\([0-9.]*\)\/s).*/\1/p' <<<"$during")

# wrk under the same loss: a fault alone, held while wrk runs.
cat >"$work/loss.yaml" <<EOF
apiVersion: faultline/v1
kind: Experiment
metadata: {name: loss-for-wrk}
method:
  - fault: {type: network.loss, duration: 6s, target: {interface: fl-web0}, percent: 5}
EOF
ip netns exec "$a" "$faultline" run --local "$work/loss.yaml" --db "$work/run.db" --state-dir "$work/state" \
  >"$work/loss.txt" 2>&1 &
loss_pid=$!
for _ in $(seq 100); do
  grep -q fault.applied "$work/loss.txt" && break
  sleep 0.05
done
grep -q fault.applied "$work/loss.txt" || { wait "$loss_pid" || true; fail "the loss was not applied: $(cat "$work/loss.txt")"; }
wrk_loss=$(wrk_rate)
wait "$loss_pid" || fail "the loss run failed: $(cat "$work/loss.txt")"

echo "nginx example: nginx under a 5 % loss on its link:"
echo "  faultline load probe (open model, 1000 requests/s offered, new connection each): $during"
echo "  wrk (closed model, 16 connections kept alive, 3 s): ${wrk_loss} requests/s; without the loss: ${wrk_clean}/s"
echo "  /proc/loadavg: $(cat /proc/loadavg)"
awk -v f="$faultline_rate" 'BEGIN { exit !(f < 950) }' || fail "the load probe saw no drop: $faultline_rate/s"
awk -v l="$wrk_loss" -v c="$wrk_clean" 'BEGIN { exit !(l < c * 0.9) }' || fail "wrk saw no drop: $wrk_loss/s of $wrk_clean/s"
echo "nginx example: OK"
