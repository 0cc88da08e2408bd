#!/bin/sh
# dracut cmdline hook (sourced by dracut's init): parse rd.host_recover* and note the
# phase. The decision itself is the payload's (host-recover boot), run in pre-mount.
# Options: rd.host_recover=0|1 (default 1), rd.host_recover.mode=auto|force|never,
# rd.host_recover.debug; the payload reads them again from /proc/cmdline itself.

# shellcheck source=/dev/null
type getargbool > /dev/null 2>&1 || . /lib/dracut-lib.sh

# shellcheck source=hooks/host-recover-lib.sh
. /lib/host-recover-lib.sh
hr_say "HR-PHASE init"
if getargbool 1 rd.host_recover; then
    _hr_mode=$(getarg rd.host_recover.mode)
    [ "$_hr_mode" = never ] || info "host-recover: enabled (mode=${_hr_mode:-auto})"
    unset _hr_mode
else
    info "host-recover: disabled on the kernel command line"
fi
