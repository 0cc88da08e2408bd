#!/bin/sh
# dracut initqueue/timeout hook: the normal root device did not appear. Run the payload
# now (it decides whether to recover); if it mounted the recovery root, stop waiting
# for the normal root (the pre-mount hook then applies the same action); if it says
# halt, halt now.

# shellcheck source=hooks/host-recover-lib.sh
. /lib/host-recover-lib.sh

hr_run_once initqueue-timeout "${NEWROOT:-/sysroot}"
case "$HR_ACTION" in
    recover)
        rm -f -- "${hookdir:-/lib/dracut/hooks}"/initqueue/finished/*.sh 2> /dev/null
        echo > "${hookdir:-/lib/dracut/hooks}"/initqueue/work
        ;;
    halt) hr_halt ;;
esac
