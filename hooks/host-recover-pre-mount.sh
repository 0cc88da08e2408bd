#!/bin/sh
# dracut pre-mount hook (sourced by dracut's init): run the payload once, before the
# root file system is mounted. On exit 10 the recovery root is already mounted on
# $NEWROOT, so dracut's mount loop keeps it (usable_root) and switches into it. It runs
# even when deciding is off on the kernel command line: the payload still locks.

# shellcheck source=/dev/null
type info > /dev/null 2>&1 || . /lib/dracut-lib.sh
# shellcheck source=hooks/host-recover-lib.sh
. /lib/host-recover-lib.sh

hr_run_once pre-mount "${NEWROOT:-/sysroot}"
case "$HR_ACTION" in
    recover) info "host-recover: booting the recovery root on ${NEWROOT:-/sysroot}" ;;
    halt) hr_halt ;;
    shell)
        type emergency_shell > /dev/null 2>&1 \
            && emergency_shell -n host-recover "host-recover failed (rc=${HR_RC:-?})"
        ;;
esac
