#!/bin/sh
# /sbin/init of the test NORMAL root (busybox). switch_root moved /dev, /proc, /sys and
# /run here. Prints a marker, the decision record if any, then does what the control
# disk (/dev/vdc) says: poweroff (orderly: the kernel sends TPM2_Shutdown) or hold.
export PATH=/bin
ctl=$(dd if=/dev/vdc bs=4096 count=1 2> /dev/null | tr -d '\000')
action=$(echo "$ctl" | sed -n 's/^action=//p')
echo "HR-NORMAL-ROOT up"
if [ -r /run/host-recover/decision.json ]; then
    echo "HR-NORMAL-RECORD $(tr -d '\n' < /run/host-recover/decision.json)"
fi
if [ -d /run/credentials/host-recover ]; then
    echo "HR-NORMAL-CREDENTIALS-PRESENT"
fi
echo "HR-GUEST-DONE action=$action"
sync
case "$action" in
    hold) while :; do sleep 3600; done ;;
    *) poweroff -f ;;
esac
