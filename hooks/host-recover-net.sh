#!/bin/sh
# dracut pre-udev/61 hook (after the network module's net-genrules at 60), installed only
# when the configuration names peers (rd.neednet=1 is baked in then): dracut brings the
# network up from ip= and waits for it in its initqueue, with no bound, so a network that
# never comes up (the failure this tool recovers from) would end the boot in dracut's
# emergency shell. Bound that wait: each of dracut's network conditions is also met
# HR_NET_WAIT seconds after this hook ran; the boot then goes on without the network and
# the payload finds the peers unreachable. A root on the network ($netroot) keeps
# dracut's own wait. docs/boot.md#network
HR_NET_WAIT=30
[ -z "${netroot:-}" ] || return 0
_hr_dir=${hookdir:-/lib/dracut/hooks}/initqueue
_hr_ifaces=""
[ -r /tmp/net.ifaces ] && read -r _hr_ifaces < /tmp/net.ifaces
read -r _hr_up _hr_idle < /proc/uptime
_hr_until=$((${_hr_up%.*} + HR_NET_WAIT))
mkdir -p "$_hr_dir/host-recover-net"
for _hr_name in network $_hr_ifaces; do
    _hr_f=$_hr_dir/finished/wait-$_hr_name.sh
    [ -e "$_hr_f" ] || continue
    mv -f -- "$_hr_f" "$_hr_dir/host-recover-net/wait-$_hr_name.sh"
    cat > "$_hr_f" << HR_EOF
# dracut's wait for the network, bounded by host-recover (hooks/host-recover-net.sh)
( . "$_hr_dir/host-recover-net/wait-$_hr_name.sh" ) && exit 0
read -r _hr_up _hr_idle < /proc/uptime
[ "\${_hr_up%.*}" -ge $_hr_until ] || exit 1
[ -e /tmp/host-recover-net-gave-up ] || echo "<4>host-recover: no network ($_hr_name) after ${HR_NET_WAIT} s: booting on without it" > /dev/kmsg
: > /tmp/host-recover-net-gave-up
exit 0
HR_EOF
done
unset _hr_dir _hr_ifaces _hr_up _hr_idle _hr_until _hr_name _hr_f
