#!/bin/sh
# dracut initqueue/timeout hook: the normal root device did not appear. Run the payload
# now (it decides whether to recover); if it mounted the recovery root, stop waiting
# for the normal root (the pre-mount hook then sees the payload already ran).

# shellcheck source=/dev/null
type getargbool > /dev/null 2>&1 || . /lib/dracut-lib.sh
# shellcheck source=hooks/host-recover-lib.sh
. /lib/host-recover-lib.sh

if getargbool 1 rd.host_recover && hr_run_once initqueue-timeout "${NEWROOT:-/sysroot}" \
    && [ "$HR_ACTION" = recover ]; then
    rm -f -- "${hookdir:-/lib/dracut/hooks}"/initqueue/finished/*.sh 2> /dev/null
    echo > "${hookdir:-/lib/dracut/hooks}"/initqueue/work
fi
