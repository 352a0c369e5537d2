#!/bin/bash
# Runs scripts/quickstart on this machine (no sch_netem here: delay and loss go through the
# userspace driver), twice at the same time (two users, or CI and a user), and checks that each
# ends with a recorded run and a verdict, killed its own demo service only, and leaves no
# namespace, process or undo journal behind; and that it builds only the executables it runs.
# Usage: quickstart.sh BUILD_DIR (absolute).
set -euo pipefail
build=${1:?usage: quickstart.sh BUILD_DIR}
cd "$(dirname "$0")/../.."
fail() { echo "quickstart test: FAIL: $*" >&2; exit 1; }

# The quickstart builds only its targets: each must be a ninja target that makes the executable it
# runs ($build_dir/controller/faultline, $build_dir/demo/faultline-demo).
targets=$(sed -n 's/^quickstart_targets=(\(.*\))$/\1/p' scripts/quickstart)
[[ $targets == "controller/faultline demo/faultline-demo" ]] || fail "scripts/quickstart builds '$targets'"
grep -q '"$build_dir/controller/faultline" run --local' scripts/quickstart || fail "the quickstart runs another faultline"
grep -q '^demo=$build_dir/demo/faultline-demo$' scripts/quickstart || fail "the quickstart runs another demo"
for target in $targets; do
  ninja -C "$build" -t query "$target" >/dev/null || fail "scripts/quickstart builds $target, which ninja does not know"
done

outputs=$(mktemp -d)
trap 'rm -rf -- "$outputs"' EXIT
BUILD_DIR=$build FAULTLINE_PREBUILT=1 scripts/quickstart >"$outputs/a" 2>&1 &
first=$!
sleep 1  # the second starts while the first runs: its start must not remove the first's namespaces
BUILD_DIR=$build FAULTLINE_PREBUILT=1 scripts/quickstart >"$outputs/b" 2>&1 &
second=$!
status_a=0
status_b=0
wait "$first" || status_a=$?
wait "$second" || status_b=$?

check() {  # check NAME STATUS: the checks of one quickstart's output
  local name=$1 status=$2 out
  out=$(<"$outputs/$name")
  echo "== quickstart $name"
  echo "$out" | grep -v probe.ok
  ((status == 0)) || fail "scripts/quickstart ($name) exited $status"
  # Its own names: the namespace and the demo's name carry the script's PID.
  local svc demo pid
  svc=$(sed -n 's/^== network: \(fl-qs-svc-[0-9]*\) .*/\1/p' <<<"$out")
  demo=$(sed -n 's/^== demo service: \(faultline-demo-[0-9]*\) .*/\1/p' <<<"$out")
  pid=${svc#fl-qs-svc-}
  [[ -n $svc && -n $demo && $pid == "${demo#faultline-demo-}" ]] \
    || fail "$name: no per-run namespace and demo name printed (svc '$svc', demo '$demo')"
  grep -Eq "fault.applied +[^ ]+ +tbf rate 1000000bit/s" <<<"$out" || fail "$name: no bandwidth limit applied"
  grep -Eq "fault.applied +[^ ]+ +delay 100ms jitter 10ms on fl-qs-svc0" <<<"$out" || fail "$name: no delay applied"
  grep -Eq "fault.applied +[^ ]+ +loss 10% on fl-qs-svc0" <<<"$out" || fail "$name: no loss applied"
  grep -Eq "fault.applied +[^ ]+ +SIGKILL sent to pid [0-9]+ .*$demo" <<<"$out" || fail "$name: $demo not killed"
  local others
  others=$(grep -E "fault.applied +[^ ]+ +SIGKILL sent" <<<"$out" | grep -Eo "faultline-demo[-0-9]*" | grep -vx "$demo" || true)
  [[ -z $others ]] || fail "$name: killed another quickstart's demo service ($others)"
  grep -Eq "^verdict: (held|violated) " <<<"$out" || fail "$name: no verdict"
  local run_id
  run_id=$(sed -n 's/^timeline: faultline show \([^ ]*\) .*/\1/p' <<<"$out")
  [[ -n $run_id ]] || fail "$name: no run id printed"
  "$build/controller/faultline" show "$run_id" --db "$build/quickstart/faultline.db" | grep -q "^run  *$run_id" \
    || fail "$name: run $run_id not recorded"
  ip netns list | grep -Eq "^fl-qs-(svc|cli)-$pid( |$)" && fail "$name: namespaces left: $(ip netns list)"
  pgrep -f "^$demo --listen" >/dev/null && fail "$name: demo service $demo left running"
  [[ -e $build/quickstart/run-$pid ]] && fail "$name: undo journal directory left"
  echo "quickstart test: $name OK (run $run_id)"
}
check a "$status_a"
check b "$status_b"
echo "quickstart test: OK"
