#!/bin/sh
# /sbin/init of the test RECOVERY root. Its "recovery service" proves it received its
# credential: HMAC-SHA256(credential service-hmac, challenge from the control disk).
# The host checks the MAC from the serial console.
export PATH=/bin
ctl=$(dd if=/dev/disk/by-id/virtio-hrcontrol bs=4096 count=1 2> /dev/null | tr -d '\000')
action=$(echo "$ctl" | sed -n 's/^action=//p')
challenge=$(echo "$ctl" | sed -n 's/^challenge=//p')
echo "HR-RECOVERY-ROOT up"
if [ -r /run/host-recover/decision.json ]; then
    echo "HR-RECOVERY-RECORD $(tr -d '\n' < /run/host-recover/decision.json)"
fi
cred=/run/credentials/host-recover/service-hmac
if [ -r "$cred" ]; then
    mac=$(printf '%s' "$challenge" | OPENSSL_CONF=/etc/ssl/openssl.cnf \
        openssl dgst -sha256 -mac HMAC -macopt "hexkey:$(tr -d '\n' < "$cred")" -r | cut -d' ' -f1)
    echo "HR-SERVICE-PROOF challenge=$challenge mac=$mac"
else
    echo "HR-SERVICE-NO-CREDENTIAL"
fi
if touch /hr-writable 2> /dev/null; then echo "HR-RECOVERY-ROOT writable"; fi
echo "HR-PCR15 $(cat /sys/class/tpm/tpm0/pcr-sha256/15 2> /dev/null)"
echo "HR-GUEST-DONE action=$action"
sync
case "$action" in
    hold) while :; do sleep 3600; done ;;
    *) poweroff -f ;;
esac
