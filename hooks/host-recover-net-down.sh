#!/bin/sh
# dracut pre-pivot/90 hook (shell init and systemd initrd; installed only with peers): when
# the normal boot continues, the network dracut brought up for the peer query goes
# (hr_net_down). Here, not right after the payload: under a systemd initrd DHCP may
# finish after the payload (dracut-initqueue.service runs beside host-recover.service),
# and pre-pivot runs after the initqueue on both inits.
# shellcheck source=hooks/host-recover-lib.sh
. /lib/host-recover-lib.sh
_hr_action=""
[ -r "$HR_STATE/action" ] && read -r _hr_action < "$HR_STATE/action"
[ "$_hr_action" != normal ] || hr_net_down
unset _hr_action
