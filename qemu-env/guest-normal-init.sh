#!/bin/sh
# /sbin/init of the test NORMAL root (busybox + the host-recover tool set). switch_root
# moved /dev, /proc, /sys and /run here. Prints a marker and the decision record if
# any, then does what the control disk (virtio-hrcontrol) says:
#   provision  operator steps of a first boot: provision the TPM, encrypt the recovery
#              image and store the service credential on the store disk, attest
#   poweroff   orderly poweroff (the kernel sends TPM2_Shutdown)
#   hold       stay up (the harness cuts the power)
#   check      report whether the sealed secret unseals now (HR-UNSEAL-CHECK rc=N, as the
#              normal OS sees it), the status (HR-STATUS json) and /proc/cmdline
#   reseal     the operator's re-seal after an initramfs rebuild (docs/operator-guide.md):
#              the rebuilt initrd.img and the master come on the store (the lab's /boot);
#              HR-RESEAL rc=N, HR-RESEAL-REPORT json; then stay up like hold
# Optional lines: hrargs= global arguments of every host-recover call (e.g. --set
# tpm.pcrs=...); refuse=yes first provisions with the root's own configuration and
# reports the outcome (HR-PROVISION-DEFAULT rc=N error...); provargs= more arguments of
# the provisioning (e.g. --allow-unbound).
export PATH=/bin:/usr/bin
mount -t tmpfs tmpfs /tmp
# As a distribution's init does: the TPM event log lives on securityfs.
mount -t securityfs securityfs /sys/kernel/security 2> /dev/null
ctl=$(dd if=/dev/disk/by-id/virtio-hrcontrol bs=4096 count=1 2> /dev/null | tr -d '\000')
action=$(echo "$ctl" | sed -n 's/^action=//p')
hrargs=$(echo "$ctl" | sed -n 's/^hrargs=//p')
refuse=$(echo "$ctl" | sed -n 's/^refuse=//p')
witnessargs=$(echo "$ctl" | sed -n 's/^witnessargs=//p')
provargs=$(echo "$ctl" | sed -n 's/^provargs=//p')
# imageformat= container version of the provisioned image (default 1: the labs' tamper
# tests expect v1's reject-before-mount); masterfrom= seal this master (on the store).
imageformat=$(echo "$ctl" | sed -n 's/^imageformat=//p')
masterfrom=$(echo "$ctl" | sed -n 's/^masterfrom=//p')
hr() {
    # shellcheck disable=SC2086 # hrargs is a list of arguments
    host-recover $hrargs "$@"
}
echo "HR-NORMAL-ROOT up"
if [ -r /run/host-recover/decision.json ]; then
    echo "HR-NORMAL-RECORD $(tr -d '\n' < /run/host-recover/decision.json)"
fi
# What the initramfs left on the NICs (docs/boot.md#network): link state, IPv6 addresses
# and IPv4 routes.
net=""
for d in /sys/class/net/*; do
    [ "${d##*/}" = lo ] || net="$net ${d##*/}=$(cat "$d/operstate")"
done
# v6: IPv6 addresses on any NIC but lo (/proc/net/if_inet6: one line each)
v6=$(grep -vc ' lo$' /proc/net/if_inet6 2> /dev/null)
echo "HR-NORMAL-NET${net} v6=${v6:-none} routes=$(grep -vc '^Iface' /proc/net/route 2>&1)"
if [ -n "$(ls /run/credentials/host-recover 2> /dev/null)" ]; then
    echo "HR-NORMAL-CREDENTIALS-PRESENT"
fi
if [ "$action" = provision ] && [ "$refuse" = yes ]; then
    out=$(host-recover provision --no-owner-auth 2>&1)
    rc=$?
    echo "HR-PROVISION-DEFAULT rc=$rc $(echo "$out" | grep 'error:' | head -n 1)"
fi
if [ "$action" = provision ]; then
    mkdir -p /mnt/store
    # The boot payload extended the lock PCR already (boot.lock=always): the normal OS
    # cannot unseal, so the keys for the image factory are exported at provisioning
    # time, used from tmpfs and deleted. The lab's TPM is throwaway: no owner auth
    # (--no-owner-auth; an operator exports one, docs/operator-guide.md).
    # shellcheck disable=SC2086 # provargs is a list of arguments
    mount -t ext4 /dev/disk/by-id/virtio-hrstore /mnt/store \
        && hr provision --no-owner-auth $provargs --export-image-key /tmp/image.key \
            --export-master /tmp/master.key ${masterfrom:+--master-from "$masterfrom"} \
        && hr image create --key-file /tmp/image.key --format "${imageformat:-1}" \
            /mnt/store/plain.squashfs /mnt/store/recovery.hri \
        && hr credential add --key-file /tmp/master.key service-hmac \
            /mnt/store/service-hmac.in \
        && rm -f /mnt/store/plain.squashfs /mnt/store/service-hmac.in "$masterfrom" \
        && echo "HR-ATTEST $(hr attest --address 10.0.2.15:7469 \
            --failure-domain rack-1 | tr -d '\n')"
    echo "HR-PROVISIONED rc=$?"
    rm -f /tmp/image.key /tmp/master.key
    umount /mnt/store
fi
if [ "$action" = reseal ]; then
    mkdir -p /mnt/store
    mount -t ext4 -o ro /dev/disk/by-id/virtio-hrstore /mnt/store \
        && hr reseal --json --initramfs /mnt/store/initrd.img \
            --master-from /mnt/store/master.in > /tmp/reseal.json
    echo "HR-RESEAL rc=$?"
    echo "HR-RESEAL-REPORT $(tr -d '\n' < /tmp/reseal.json)"
    umount /mnt/store
fi
if [ "$action" = check ] || [ "$refuse" = yes ]; then
    [ "$action" = check ] && { hr unseal --check; echo "HR-UNSEAL-CHECK rc=$?"; }
    echo "HR-STATUS $(hr status --json | tr -d '\n')"
    echo "HR-CMDLINE $(cat /proc/cmdline)"
fi
if [ -n "$witnessargs" ]; then
    # witnessargs=: this host's agent heartbeats into the witness (docs/witness.md) while
    # the root runs; its inventory (listing the host itself) follows the control block.
    dd if=/dev/disk/by-id/virtio-hrcontrol bs=4096 skip=1 count=16 2> /dev/null \
        | tr -d '\000' > /tmp/peers.json
    # The initramfs took the network down before the pivot (docs/boot.md#network): this
    # root brings up its own, as a distribution's normal OS does (QEMU's user network).
    for d in /sys/class/net/*; do
        [ "${d##*/}" = lo ] && continue
        ip link set "${d##*/}" up && ip addr add 10.0.2.15/24 dev "${d##*/}" \
            && ip route add default via 10.0.2.2
        echo "HR-NORMAL-NET ${d##*/} rc=$?"
        break
    done
    # shellcheck disable=SC2086 # witnessargs is a list of arguments
    hr $witnessargs --set peers.inventory=/tmp/peers.json agent > /tmp/agent.log 2>&1 &
    echo "HR-WITNESS-AGENT pid=$!"
fi
echo "HR-PCR15 $(cat /sys/class/tpm/tpm0/pcr-sha256/15 2> /dev/null)"
echo "HR-GUEST-DONE action=$action"
sync
case "$action" in
    hold | reseal) while :; do sleep 3600; done ;;
    *) poweroff -f ;;
esac
