#!/bin/sh
# systemd initrd: ExecStart of host-recover.service (Before=sysroot.mount). Same
# exit contract as the dracut pre-mount hook; systemd's sysroot.mount finds /sysroot
# already mounted on exit 10 and initrd-switch-root.service switches into it.
# shellcheck source=hooks/host-recover-lib.sh
. /lib/host-recover-lib.sh

hr_run /sysroot
case "$HR_ACTION" in
    normal | recover) exit 0 ;;
    halt) hr_halt ;;
    shell) exec systemctl --no-block isolate emergency.target ;;
esac
exit 0
