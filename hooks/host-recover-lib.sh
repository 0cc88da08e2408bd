#!/bin/sh
# Shared by the dracut hooks and the systemd unit: run the payload once and do what it
# wrote to /run/host-recover/action (recover.core.plan.HookAction):
#   normal    boot the normal root
#   recover   the recovery root is mounted on $NEWROOT: boot it instead
#   halt      stop (the payload failed, or could not lock the secure store)
#   shell     an emergency shell (only when the baked-in configuration allows it)
# The hooks parse no kernel option and map no exit code: the payload decides. When the
# payload never wrote an action (the interpreter could not start), the secure store is
# not locked, so the boot halts.

HR_STATE=/run/host-recover
HR_RECORD=$HR_STATE/decision.json
HR_SECURITYFS=/sys/kernel/security

hr_say() {
    # One unambiguous line on the console and in the kernel log.
    echo "<7>$*" > /dev/kmsg 2> /dev/null
    echo "$*" > /dev/console 2> /dev/null || echo "$*"
}

hr_print_record() {
    [ -r "$HR_RECORD" ] || return 0
    hr_say "HR-DECISION-BEGIN"
    while IFS= read -r _hr_line || [ -n "$_hr_line" ]; do
        hr_say "HR-DECISION $_hr_line"
    done < "$HR_RECORD"
    hr_say "HR-DECISION-END"
}

# hr_net_down (pre-pivot, hooks/host-recover-net-down.sh): the normal boot continues, so the
# network dracut brought up for the peer query (ip=, docs/boot.md#network) goes: its DHCP client stops, its addresses and routes
# are flushed and the links are down, as before this boot's initramfs touched them. A
# root on the network ($netroot) and a recovery root (its services may restore the
# host over the network) keep it.
hr_net_down() {
    [ -z "${netroot:-}" ] || return 0
    for _hr_f in /tmp/dhclient.*.pid; do
        [ -r "$_hr_f" ] || continue
        read -r _hr_pid < "$_hr_f" && kill "$_hr_pid" 2> /dev/null
        rm -f -- "$_hr_f"
    done
    for _hr_f in /tmp/net.*.did-setup; do
        [ -e "$_hr_f" ] || continue
        _hr_if=${_hr_f#/tmp/net.}
        _hr_if=${_hr_if%.did-setup}
        rm -f -- "$_hr_f"
        [ -e "/sys/class/net/$_hr_if" ] || continue # a MAC address form
        ip link set "$_hr_if" down
        ip addr flush dev "$_hr_if"
        hr_say "HR-PHASE network-down $_hr_if"
    done
}

# hr_run NEWROOT → sets HR_RC and HR_ACTION (normal | recover | halt | shell)
hr_run() {
    mkdir -p "$HR_STATE"
    rm -f "$HR_STATE/action"
    # The TPM event log is on securityfs, which dracut's shell init does not mount
    # (systemd does); the payload compares a measured command line with /proc/cmdline.
    [ -e "$HR_SECURITYFS/tpm0" ] || mount -t securityfs securityfs "$HR_SECURITYFS" 2> /dev/null
    hr_say "HR-PHASE payload-start"
    host-recover boot --newroot "$1"
    HR_RC=$?
    hr_say "HR-PHASE payload-exit rc=$HR_RC"
    hr_print_record
    HR_ACTION=""
    [ -r "$HR_STATE/action" ] && read -r HR_ACTION < "$HR_STATE/action"
    case "$HR_ACTION" in
        normal | recover | halt | shell) ;;
        *)
            hr_say "host-recover: the payload left no action (rc=$HR_RC): the secure store may be unlocked, halting"
            HR_ACTION=halt
            ;;
    esac
    if [ "$HR_ACTION" != recover ] && grep -q " $1 " /proc/mounts 2> /dev/null; then
        # Never boot a half-prepared recovery root by accident.
        umount -R "$1" 2> /dev/null || umount -l "$1"
    fi
    hr_say "HR-ACTION $HR_ACTION rc=$HR_RC"
}

# hr_run_once WHO NEWROOT: hr_run unless the payload already ran in this boot; either
# way HR_ACTION is this boot's action afterwards.
hr_run_once() {
    if [ -e "$HR_STATE/ran" ]; then
        HR_ACTION=""
        [ -r "$HR_STATE/action" ] && read -r HR_ACTION < "$HR_STATE/action"
        case "$HR_ACTION" in normal | recover | halt | shell) ;; *) HR_ACTION=halt ;; esac
        return 0
    fi
    mkdir -p "$HR_STATE"
    echo "$1" > "$HR_STATE/ran"
    hr_say "HR-PHASE payload-from $1"
    hr_run "$2"
}

hr_halt() {
    hr_say "host-recover: halting as configured (rc=$HR_RC)"
    sync
    echo 1 > /proc/sys/kernel/sysrq 2> /dev/null
    echo o > /proc/sysrq-trigger 2> /dev/null
    while :; do sleep 60; done
}
