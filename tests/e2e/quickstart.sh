#!/bin/bash
# Runs scripts/quickstart on this machine (no sch_netem here: delay and loss go through the
# userspace driver) and checks that it ends with a recorded run and a verdict, and leaves no
# namespace, qdisc or process behind.
# Usage: quickstart.sh BUILD_DIR (absolute).
set -euo pipefail
build=${1:?usage: quickstart.sh BUILD_DIR}
cd "$(dirname "$0")/../.."
fail() { echo "quickstart test: FAIL: $*" >&2; exit 1; }

status=0
out=$(BUILD_DIR=$build FAULTLINE_PREBUILT=1 scripts/quickstart 2>&1) || status=$?
echo "$out" | grep -v probe.ok
((status == 0)) || fail "scripts/quickstart exited $status"
grep -Eq "fault.applied +[^ ]+ +tbf rate 1000000bit/s" <<<"$out" || fail "no bandwidth limit applied"
grep -Eq "fault.applied +[^ ]+ +delay 100ms jitter 10ms on fl-qs-svc0" <<<"$out" || fail "no delay applied"
grep -Eq "fault.applied +[^ ]+ +loss 10% on fl-qs-svc0" <<<"$out" || fail "no loss applied"
grep -Eq "fault.applied +[^ ]+ +SIGKILL sent to pid [0-9]+ .*faultline-demo" <<<"$out" || fail "demo service not killed"
grep -Eq "^verdict: (held|violated) " <<<"$out" || fail "no verdict"
run_id=$(sed -n 's/^timeline: faultline show \([^ ]*\) .*/\1/p' <<<"$out")
[[ -n $run_id ]] || fail "no run id printed"
"$build/controller/faultline" show "$run_id" --db "$build/quickstart/faultline.db" | grep -q "^run  *$run_id" \
  || fail "run $run_id not recorded"
ip netns list | grep -q '^fl-qs-' && fail "namespaces left: $(ip netns list)"
pgrep -f 'faultline-demo --listen 10.77.0.1' >/dev/null && fail "demo service left running"
echo "quickstart test: OK (run $run_id)"
