#!/bin/bash
# debian_test — builds faultline's Debian packages from a copy of the tree, inspects them, runs
# lintian, then installs and purges them in a throwaway root. Never touches this machine's root.
# Usage: debian_test.sh SOURCE_DIR WORK_DIR VERSION
#
# SOURCE_DIR's files as a clone would have them (tracked and untracked-but-not-ignored files, so
# uncommitted work is tested too) are copied to WORK_DIR/faultline, where
# `dpkg-buildpackage -b -us -uc` builds them (DEB_BUILD_OPTIONS="nocheck noddebs parallel=2"). WORK_DIR
# is a fixed path (the meson build directory's), so ccache's hits make the second build fast:
# the first takes as long as a build of the binaries with Debian's flags.
#
# The throwaway root: a private mount namespace (unshare --mount), an overlay whose lower layer
# is / and whose upper layer is a tmpfs, and chroot. Everything dpkg and the maintainer scripts
# write lands in the tmpfs and goes when the namespace ends. After `dpkg --purge` the upper layer
# must hold no file named after faultline, and passwd/group no faultline entry.
# Needs root (unshare, mount, chroot); exits 77 (skipped) without it or without dpkg-buildpackage.
set -euo pipefail
src=$1 work=$2 version=$3
start=$SECONDS
if ((EUID != 0)); then echo "debian_test: needs root (unshare, mount, chroot); skipped"; exit 77; fi
for tool in dpkg-buildpackage dpkg-deb dh unshare chroot; do
  command -v "$tool" >/dev/null || { echo "debian_test: no $tool; skipped"; exit 77; }
done

fail=0
check() { # check DESCRIPTION COMMAND...
  local what=$1
  shift
  if "$@"; then echo "ok: $what"; else echo "FAIL: $what"; fail=1; fi
}
stamp() { echo "-- $1 ($((SECONDS - start)) s)"; }

rm -rf "$work"
mkdir -p "$work/faultline"
(cd "$src" && git ls-files -z --cached --others --exclude-standard) |
  while IFS= read -r -d '' f; do [[ -e $src/$f || -L $src/$f ]] && printf '%s\0' "$f"; done |
  (cd "$src" && tar --null -T - -cf -) | tar -xf - -C "$work/faultline"
stamp "copied the tree to $work/faultline"

# debhelper (compat 13) points HOME elsewhere: name ccache's cache and base directory outright.
if command -v ccache >/dev/null; then
  export CCACHE_DIR=${CCACHE_DIR:-$(ccache -k cache_dir)} CCACHE_BASEDIR=$work
fi
log=$work/dpkg-buildpackage.log
if ! (cd "$work/faultline" && DEB_BUILD_OPTIONS="nocheck noddebs parallel=2" dpkg-buildpackage -b -us -uc) >"$log" 2>&1; then
  tail -60 "$log"
  echo "FAIL: dpkg-buildpackage -b -us -uc (whole log: $log)"
  exit 1
fi
grep -m1 -E 'C\+\+ compiler for the host machine' "$log" || true
stamp "dpkg-buildpackage -b -us -uc"

arch=$(dpkg --print-architecture)
deb=$work/faultline_${version}_$arch.deb
agent_deb=$work/faultline-agent_${version}_$arch.deb
check "faultline_${version}_$arch.deb built" test -s "$deb"
check "faultline-agent_${version}_$arch.deb built" test -s "$agent_deb"
((fail == 0)) || exit 1

contents=$(dpkg-deb -c "$deb" | awk '{print $6}')
agent_contents=$(dpkg-deb -c "$agent_deb" | awk '{print $6}')
for f in ./usr/bin/faultline ./usr/bin/faultline-demo ./lib/systemd/system/faultline-controller.service \
  ./usr/lib/sysusers.d/faultline.conf ./usr/share/man/man1/faultline.1.gz ./usr/share/man/man1/faultline-demo.1.gz \
  ./usr/share/doc/faultline/README.md.gz ./usr/share/doc/faultline/copyright; do
  check "faultline holds $f" grep -qx -- "$f" <<<"$contents"
done
for f in ./usr/sbin/faultline-agent ./lib/systemd/system/faultline-agent.service \
  ./usr/share/man/man8/faultline-agent.8.gz ./usr/share/doc/faultline-agent/copyright; do
  check "faultline-agent holds $f" grep -qx -- "$f" <<<"$agent_contents"
done
check "faultline-agent is not in faultline" bash -c "! grep -q 'faultline-agent\$' <<<'$contents'"
check "faultline's Depends name libgrpc++ and libsqlite3" \
  bash -c "dpkg-deb -f '$deb' Depends | grep -q 'libgrpc++' && dpkg-deb -f '$deb' Depends | grep -q libsqlite3"
check "faultline-agent's Depends name libnl-route and libnftables" \
  bash -c "dpkg-deb -f '$agent_deb' Depends | grep -q libnl-route && dpkg-deb -f '$agent_deb' Depends | grep -q libnftables"
conffiles=$(dpkg-deb -I "$deb" conffiles 2>/dev/null || true)
agent_conffiles=$(dpkg-deb -I "$agent_deb" conffiles 2>/dev/null || true)
if [[ -f $src/deploy/config/controller.yaml ]]; then
  check "conffile /etc/faultline/controller.yaml" grep -qx /etc/faultline/controller.yaml <<<"$conffiles"
  check "conffile /etc/faultline/agent.yaml" grep -qx /etc/faultline/agent.yaml <<<"$agent_conffiles"
else
  echo "note: deploy/config/*.yaml not in this tree: no conffiles to check"
fi
check "faultline's postinst creates the user (systemd-sysusers) and enables the controller" \
  bash -c "dpkg-deb -I '$deb' postinst | grep -q systemd-sysusers && dpkg-deb -I '$deb' postinst | grep -q 'deb-systemd-helper'"
check "faultline-agent's prerm stops the agent at removal" \
  bash -c "dpkg-deb -I '$agent_deb' prerm | grep -q 'deb-systemd-invoke stop'"
echo "faultline: $(dpkg-deb -f "$deb" Depends)"
echo "faultline-agent: $(dpkg-deb -f "$agent_deb" Depends)"
stamp "dpkg-deb -c / -I"

if command -v lintian >/dev/null; then
  lintian_out=$(lintian --fail-on error --display-info "$work"/faultline_${version}_$arch.changes 2>&1) && lintian_rc=0 || lintian_rc=$?
  echo "lintian (exit $lintian_rc):"
  echo "${lintian_out:-  (no tags)}"
  check "lintian reports no error" test "$lintian_rc" -eq 0
  stamp "lintian"
fi

# Install, look, purge, look: in a throwaway root.
ovl=$(mktemp -d /tmp/faultline-root.XXXXXX)
trap 'rmdir "$ovl" 2>/dev/null || true' EXIT
inner=$(
  cat <<'INNER'
set -euo pipefail
ovl=$1 deb=$2 agent_deb=$3 version=$4
mount -t tmpfs -o size=512m tmpfs "$ovl"
mkdir "$ovl/upper" "$ovl/work" "$ovl/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$ovl/upper,workdir=$ovl/work" "$ovl/root"
mount -t proc proc "$ovl/root/proc"
mount --bind /dev "$ovl/root/dev"
mount -t tmpfs tmpfs "$ovl/root/run"
mount -t tmpfs tmpfs "$ovl/root/tmp"
cp "$deb" "$agent_deb" "$ovl/root/tmp/"
fail=0
check() { local what=$1; shift; if "$@"; then echo "ok: $what"; else echo "FAIL: $what"; fail=1; fi; }
in_root() { chroot "$ovl/root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 "$@"; }
check "dpkg -i both packages" in_root sh -c 'dpkg -i /tmp/*.deb >/tmp/dpkg-i.log 2>&1 || { cat /tmp/dpkg-i.log; exit 1; }'
check "faultline --version" in_root sh -c "faultline --version | grep -qx 'faultline $version'"
check "faultline-agent --version" in_root sh -c "faultline-agent --version | grep -qx 'faultline-agent $version'"
check "the system user faultline exists, home /var/lib/faultline" \
  in_root sh -c 'getent passwd faultline | grep -q ":/var/lib/faultline:"'
check "faultline-controller.service enabled" \
  test -L "$ovl/root/etc/systemd/system/multi-user.target.wants/faultline-controller.service"
check "faultline-agent.service not enabled" \
  test ! -e "$ovl/root/etc/systemd/system/multi-user.target.wants/faultline-agent.service"
check "man faultline" in_root sh -c 'man -w faultline | grep -q faultline.1'

# Start both services under a real systemd: PID 1 of a new PID namespace, chrooted into the
# throwaway root, in a network namespace of its own (only lo), so nothing reaches this host's
# interfaces or ports. It is killed (with everything it started) when this script ends.
sd=
trap '[ -z "$sd" ] || kill -9 "$sd" 2>/dev/null || true' EXIT
rm -f "$ovl/root/usr/sbin/policy-rc.d"                       # a container's "start nothing" guard
ln -sf /dev/null "$ovl/root/etc/systemd/system/tmp.mount"  # /tmp is already a tmpfs of ours
for unit in redis-server postgresql nginx; do # servers scripts/deps installs for other tests
  ln -sf /dev/null "$ovl/root/etc/systemd/system/$unit.service"
done
umount "$ovl/root/proc"
mount --rbind /sys "$ovl/root/sys"
unshare --pid --fork --net --mount-proc="$ovl/root/proc" chroot "$ovl/root" /usr/bin/env -i container=faultline-test \
  PATH=/usr/sbin:/usr/bin:/sbin:/bin sh -c 'ip link set lo up && exec /lib/systemd/systemd --system --unit=multi-user.target' \
  </dev/null >"$ovl/systemd-console.log" 2>&1 &
unshare_pid=$!
for _ in $(seq 1 50); do
  sd=$(pgrep -P "$unshare_pid" || true)
  [ -n "$sd" ] && [ "$(cat "/proc/$sd/comm" 2>/dev/null)" = systemd ] && break
  sd=; sleep 0.2
done
in_sd() { nsenter -t "$sd" -m -p -n -r -w /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 "$@"; }
booted() {
  for _ in $(seq 1 60); do
    case $(in_sd systemctl is-system-running 2>/dev/null) in running | degraded) return 0 ;; esac
    sleep 0.5
  done
  return 1
}
eventually() { # eventually SECONDS COMMAND...: true once COMMAND is
  local until=$((SECONDS + $1)); shift
  until "$@"; do ((SECONDS < until)) || return 1; sleep 0.5; done
}
check "systemd booted (PID 1 of its own PID namespace)" test -n "$sd"
if [ -n "$sd" ] && booted; then
  check "faultline-controller.service started at boot and is active (Type=notify: READY=1 arrived)" \
    eventually 20 in_sd systemctl is-active --quiet faultline-controller
  check "its status line says it listens" \
    sh -c "nsenter -t $sd -m -p -n -r systemctl show -p StatusText faultline-controller | grep -q 'StatusText=listening on'"
  check "the packaged controller runs as the user faultline" \
    sh -c "nsenter -t $sd -m -p -n -r ps -o user= -C faultline | grep -qx faultline"
  check "faultline-agent.service was not started at boot (not enabled)" \
    sh -c "! nsenter -t $sd -m -p -n -r systemctl is-active --quiet faultline-agent"
  check "systemctl start faultline-agent (its example config dials the controller's Unix socket)" \
    in_sd systemctl start faultline-agent
  check "the agent is active and registered with the controller" \
    eventually 20 sh -c "nsenter -t $sd -m -p -n -r faultline agents --controller unix:/run/faultline/controller.sock | grep -q ' $version '"
  in_sd faultline agents --controller unix:/run/faultline/controller.sock || true
  ((fail == 0)) || in_sd journalctl --no-pager -n 40 -u faultline-agent -u faultline-controller || true
  # A game day on a schedule, as the docs show it: every 3 s, and another always in a blackout.
  cat >"$ovl/root/tmp/packaged.yaml" <<'YAML'
apiVersion: faultline/v1
kind: Experiment
metadata: {name: packaged}
targets: {mode: all}
steadyState:
  every: 250ms
  probes:
    - {name: up, command: {shell: "true"}}
  slos:
    - {name: up, probe: up, objective: errors < 50%}
method:
  - wait: 1s
YAML
  ctl=--controller=unix:/run/faultline/controller.sock
  check "faultline schedule add (every 3 s)" \
    in_sd faultline schedule add /tmp/packaged.yaml --name pkg --cron '*/3 * * * * *' "$ctl"
  check "faultline schedule add (always in a blackout)" \
    in_sd faultline schedule add /tmp/packaged.yaml --name pkg-dark --cron '*/3 * * * * *' \
    --blackout 'daily 00:00 - 12:00' --blackout 'daily 12:00 - 00:00' "$ctl"
  # The scheduler starts 15 s after the controller (agents reconnect first).
  check "a scheduled run ended held (faultline runs --schedule pkg)" \
    eventually 60 sh -c "nsenter -t $sd -m -p -n -r faultline runs --schedule pkg $ctl | grep -q ' held '"
  check "the blacked-out schedule's fires are recorded skipped with their window" \
    eventually 20 sh -c "nsenter -t $sd -m -p -n -r faultline schedule show pkg-dark $ctl | sed -n '/last fires/,\$p' | grep -q \"skipped: in blackout window\""
  in_sd faultline schedule show pkg "$ctl" || true
  in_sd faultline schedule show pkg-dark "$ctl" | tail -4 || true
  check "systemctl stop faultline-controller: a clean exit (SIGTERM, exit 0)" \
    sh -c "nsenter -t $sd -m -p -n -r systemctl stop faultline-controller &&
      nsenter -t $sd -m -p -n -r systemctl show -p Result -p ExecMainStatus faultline-controller |
      tr '\\n' ' ' | grep -q 'Result=success ExecMainStatus=0'"
  check "systemctl restart faultline-controller" in_sd systemctl start faultline-controller
  check "dpkg --purge while both run: their units stop" \
    in_sd sh -c 'dpkg --purge faultline-agent faultline >/tmp/dpkg-p.log 2>&1 || { cat /tmp/dpkg-p.log; exit 1; }'
  check "no faultline process is left" sh -c "! nsenter -t $sd -m -p -n -r pgrep -a -f '^/usr/s?bin/faultline'"
  # Installed while systemd runs: the controller starts at once, the agent (not enabled) does not.
  cp "$deb" "$agent_deb" "$ovl/root/tmp/" # systemd-tmpfiles emptied /tmp at boot
  check "dpkg -i under a running systemd" \
    in_sd sh -c 'dpkg -i /tmp/*.deb >/tmp/dpkg-i2.log 2>&1 || { cat /tmp/dpkg-i2.log; exit 1; }'
  check "the controller started at install" eventually 20 in_sd systemctl is-active --quiet faultline-controller
  check "the agent was not started at install (not enabled: deb-systemd-invoke starts no disabled unit)" \
    sh -c "! nsenter -t $sd -m -p -n -r systemctl is-active --quiet faultline-agent"
  check "dpkg --purge again" \
    in_sd sh -c 'dpkg --purge faultline-agent faultline >/tmp/dpkg-p2.log 2>&1 || { cat /tmp/dpkg-p2.log; exit 1; }'
  check "no faultline process is left after it" sh -c "! nsenter -t $sd -m -p -n -r pgrep -a -f '^/usr/s?bin/faultline'"
else
  echo "FAIL: systemd did not boot; its console:"; tail -30 "$ovl/systemd-console.log" || true
  fail=1
fi
kill -9 "$sd" 2>/dev/null || true
sd=
check "dpkg --purge both (or purged under systemd above)" in_root sh -c 'dpkg --purge faultline-agent faultline >/tmp/dpkg-p.log 2>&1 || { cat /tmp/dpkg-p.log; exit 1; }'
check "neither package is known to dpkg" in_root sh -c '! dpkg -s faultline >/dev/null 2>&1 && ! dpkg -s faultline-agent >/dev/null 2>&1'
for db in passwd group shadow gshadow; do
  check "no faultline in /etc/$db" in_root sh -c "! grep -q '^faultline:' /etc/$db"
done
left=$(cd "$ovl/upper" && find . -iname '*faultline*' ! -type c | sort) # (a char device is a whiteout: a deletion)
check "nothing named faultline left in the root" test -z "$left"
[ -z "$left" ] || echo "$left"
exit $fail
INNER
)
unshare --mount --propagation private bash -c "$inner" inner "$ovl" "$deb" "$agent_deb" "$version" || fail=1
stamp "install and purge in a throwaway root"
echo "debian_test: $((SECONDS - start)) s in all"
exit $fail
