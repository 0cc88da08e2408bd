#!/bin/bash
# /usr/local/sbin/hr-e2e-stage of the Debian e2e guest (testing/qemu/debian.py): a
# first-boot unit that runs one stage of the README's operator story, verbatim (the
# blocks in /usr/local/share/hr-e2e/story-NAME.sh come from README.md), and reports on
# the serial console. What to do comes from the control disk (virtio-hrcontrol):
#   configure  README steps 2-3: configure, dracut -f, the kernel hook, reboot
#   provision  README steps 4-7: provision, image create, credential add, status; the
#              exports then go "offline" (/root/offline, the test's stand-in); hold
#   hold       report and hold (the harness cuts the power)
#   update     a kernel update (apt-get install of a newer linux-image .deb: dracut's
#              and host-recover's kernel hooks run), then reboot into it
#   reseal     the README's re-seal block with the keys brought back onto a tmpfs; hold
set -u
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
# Straight to the serial console: marker lines start the line (the journal's console
# forwarding would prefix them), and the journal keeps nothing the test needs.
exec > /dev/console 2>&1

# A marker line for the test. It starts with a newline, in the same write: the serial
# getty's "login: " prompt ends without one, and a marker written after it would not
# start its line (CI saw "hr-debian login: HR-STORY reseal rc=0").
mark() {
    printf '\n%s\n' "$*"
}
ctl=$(dd if=/dev/disk/by-id/virtio-hrcontrol bs=4096 count=1 2> /dev/null | tr -d '\000')
action=$(sed -n 's/^action=//p' <<< "$ctl")
mark "HR-NORMAL-ROOT up kernel=$(uname -r) action=$action"
if [ -r /run/host-recover/decision.json ]; then
    mark "HR-NORMAL-RECORD $(tr -d '\n' < /run/host-recover/decision.json)"
fi
mark "HR-PCR15 $(cat /sys/class/tpm/tpm0/pcr-sha256/15 2> /dev/null)"

story() {
    local rc
    (cd /root && bash -ex "/usr/local/share/hr-e2e/story-$1.sh") 2>&1
    rc=$?
    mark "HR-STORY $1 rc=$rc"
    return "$rc"
}

hold() {
    sync
    mark "HR-GUEST-DONE action=$action"
    while :; do sleep 3600; done
}

case "$action" in
    configure)
        story configure || hold
        ;;
    provision)
        if story provision; then
            install -d -m 0700 /root/offline && cp /run/hr/* /root/offline/ && rm -rf /run/hr
        fi
        hold
        ;;
    update)
        deb=$(ls /root/linux-image-*.deb)
        DEBIAN_FRONTEND=noninteractive apt-get install -y "$deb" 2>&1
        mark "HR-UPDATE rc=$? $(ls /boot)"
        sync
        reboot
        ;;
    reseal)
        install -d -m 0700 /run/hr && cp /root/offline/* /run/hr/
        story reseal
        rm -rf /run/hr
        hold
        ;;
    *)
        hold
        ;;
esac
