#!/bin/bash
# units_test — the systemd units of deploy/systemd (as meson configured them for this prefix:
# build/deploy/), checked as systemd would load them.
# Usage: units_test.sh UNIT_DIR FAULTLINE_EXE FAULTLINE_AGENT_EXE
#
# 1. `systemd-analyze verify` on both units, in a throwaway root (--root) that holds the units,
#    the real binaries at their ExecStart paths and this machine's stock units (for
#    multi-user.target and friends): systemd need not be PID 1. Any output is a failure (verify
#    exits 0 on a setting it ignores).
# 2. `systemd-analyze security --offline=true`: the controller's exposure must be 2.0 or less;
#    the agent's figure is printed (it runs as root with the capabilities its drivers need).
set -euo pipefail
unit_dir=$1 faultline=$2 agent=$3
command -v systemd-analyze >/dev/null || { echo "units_test: no systemd-analyze; skipped"; exit 77; }

root=$(mktemp -d /tmp/faultline-units.XXXXXX)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
# The binaries where the units' ExecStart= looks for them (the prefix meson was configured with).
exec_path() { sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$unit_dir/$1"; }
install -D -m 0755 "$faultline" "$root$(exec_path faultline-controller.service)"
install -D -m 0755 "$agent" "$root$(exec_path faultline-agent.service)"
units=(faultline-controller.service faultline-agent.service)
for u in "${units[@]}"; do
  install -m 0644 "$unit_dir/$u" "$root/usr/lib/systemd/system/$u"
done

fail=0
echo "== systemd-analyze verify --root=$root --man=no ${units[*]}"
if ! out=$(systemd-analyze verify --root="$root" --man=no "${units[@]}" 2>&1); then
  echo "$out"
  echo "FAIL: verify exited non-zero"
  fail=1
elif [[ -n $out ]]; then
  echo "$out"
  echo "FAIL: verify printed warnings"
  fail=1
else
  echo "ok: both units verify cleanly"
fi

# The checker must notice a broken unit (else a silent verify proves nothing).
sed 's/^Type=notify$/Type=notify-typo/' "$unit_dir/faultline-agent.service" >"$root/usr/lib/systemd/system/broken.service"
if [[ -z $(systemd-analyze verify --root="$root" --man=no broken.service 2>&1) ]]; then
  echo "FAIL: verify said nothing about Type=notify-typo"
  fail=1
fi

exposure() {
  systemd-analyze security --offline=true "$unit_dir/$1" 2>&1 |
    sed -n 's/^→ Overall exposure level for [^:]*: \([0-9.]*\) .*/\1/p'
}
controller=$(exposure faultline-controller.service)
agent_figure=$(exposure faultline-agent.service)
echo "== systemd-analyze security --offline=true"
echo "faultline-controller.service exposure: ${controller:-?} (must be <= 2.0)"
echo "faultline-agent.service exposure: ${agent_figure:-?} (printed; root with CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_KILL, CAP_DAC_OVERRIDE)"
if [[ -z $controller || -z $agent_figure ]]; then
  echo "FAIL: no overall exposure figure in systemd-analyze security's output"
  fail=1
elif ! awk -v e="$controller" 'BEGIN { exit !(e <= 2.0) }'; then
  systemd-analyze security --offline=true "$unit_dir/faultline-controller.service" | grep '✗' || true
  echo "FAIL: the controller's exposure $controller is above 2.0"
  fail=1
fi
# The controller has no capabilities at all; the agent only those its drivers need.
if ! grep -qx 'CapabilityBoundingSet=' "$unit_dir/faultline-controller.service"; then
  echo "FAIL: faultline-controller.service must have an empty CapabilityBoundingSet="
  fail=1
fi
exit $fail
