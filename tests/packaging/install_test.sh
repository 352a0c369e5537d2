#!/bin/bash
# install_test — `meson install --destdir TMP` and the tree it leaves.
# Usage: install_test.sh BUILD_DIR SOURCE_DIR PREFIX BINDIR SBINDIR MANDIR SYSCONFDIR DATADIR UNITDIR SYSUSERSDIR VERSION
# (the directories as meson's options give them: relative ones are under PREFIX).
set -euo pipefail
build=$1 source=$2 prefix=$3 bindir=$4 sbindir=$5 mandir=$6 sysconfdir=$7 datadir=$8 unitdir=$9 sysusersdir=${10} version=${11}
under() { [[ $1 == /* ]] && echo "$1" || echo "$prefix/$1"; }

dest=$(mktemp -d /tmp/faultline-install.XXXXXX)
trap 'rm -rf "$dest"' EXIT
meson install -C "$build" --no-rebuild --destdir "$dest" --quiet >"$dest.log" 2>&1 || { cat "$dest.log"; rm -f "$dest.log"; exit 1; }
rm -f "$dest.log"

fail=0
check() { # check DESCRIPTION COMMAND...
  local what=$1
  shift
  if "$@"; then echo "ok: $what"; else echo "FAIL: $what"; fail=1; fi
}
bin=$dest$(under "$bindir") sbin=$dest$(under "$sbindir") man=$dest$(under "$mandir")
etc=$dest$(under "$sysconfdir")/faultline doc=$dest$(under "$datadir")/doc/faultline
units=$dest$(under "$unitdir") sysusers=$dest$(under "$sysusersdir")

check "faultline in bindir, reports $version" grep -qx "faultline $version" <("$bin/faultline" --version)
check "faultline-agent in sbindir, reports $version" grep -qx "faultline-agent $version" <("$sbin/faultline-agent" --version)
check "faultline-demo in bindir" test -x "$bin/faultline-demo"
check "no faultline-agent in bindir" test ! -e "$bin/faultline-agent"
for u in faultline-controller.service faultline-agent.service; do
  check "$u in $(under "$unitdir"), as meson configured deploy/systemd/$u.in" cmp -s "$units/$u" "$build/deploy/$u"
done
check "faultline-controller.service runs $(under "$bindir")/faultline with $(under "$sysconfdir")/faultline/controller.yaml" \
  grep -qx "ExecStart=$(under "$bindir")/faultline controller --config $(under "$sysconfdir")/faultline/controller.yaml" \
  "$units/faultline-controller.service"
check "faultline-agent.service runs $(under "$sbindir")/faultline-agent" \
  grep -q "^ExecStart=$(under "$sbindir")/faultline-agent " "$units/faultline-agent.service"
check "no @placeholder@ is left in the units" bash -c "! grep -E '@(bindir|sbindir|sysconfdir)@' '$units'/faultline-*.service"
check "sysusers.d/faultline.conf creates the user faultline" grep -q '^u faultline ' "$sysusers/faultline.conf"
for c in controller.yaml agent.yaml; do
  if [[ -f $source/deploy/config/$c ]]; then
    check "$c in $(under "$sysconfdir")/faultline" cmp -s "$etc/$c" "$source/deploy/config/$c"
  else
    echo "note: deploy/config/$c is not in this tree; not installed"
  fi
done
# Man pages from --help: a NAME line, the usage, and for faultline a section per subcommand.
check "faultline.1 names the command and its subcommands" \
  grep -q '^\.SH "COMMAND: CONTROLLER"' "$man/man1/faultline.1"
check "faultline.1 has the run subcommand's options" grep -q 'Usage: faultline run' "$man/man1/faultline.1"
check "faultline.1 has the nested subcommands' options (schedule add --starting-deadline)" \
  bash -c "grep -q '^\.SH \"COMMAND: SCHEDULE ADD\"' '$man/man1/faultline.1' && grep -q -- '--starting-deadline' '$man/man1/faultline.1'"
check "faultline-agent.8 is section 8 and has revert-all" \
  bash -c "grep -q '^\.TH FAULTLINE-AGENT \"8\"' '$man/man8/faultline-agent.8' && grep -q 'COMMAND: REVERT-ALL' '$man/man8/faultline-agent.8'"
check "faultline-demo.1" grep -q '^\.SH NAME' "$man/man1/faultline-demo.1"
check "no build path in the man pages" bash -c "! grep -l '$build' '$man'/man*/*"
if command -v man >/dev/null; then
  check "man renders faultline.1" bash -c "MANWIDTH=200 man -l '$man/man1/faultline.1' 2>/dev/null | grep -qE 'faultline +- +chaos experiments'"
fi
for d in README.md operations.md experiments.md security.md schedules.md ci.md examples/quickstart.yaml grafana/faultline.json; do
  check "doc $d" test -s "$doc/$d"
done
echo "installed tree:"
(cd "$dest" && find . -type f | sort)
exit $fail
