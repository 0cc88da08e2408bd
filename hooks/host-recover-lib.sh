#!/bin/sh
# Shared by the dracut pre-mount hook and the systemd unit: run the payload once and
# apply its exit code (the contract in docs/boot.md):
#   0     normal boot continues untouched
#   10    the recovery root is mounted on $NEWROOT: boot it instead of the normal root
#   11    hold: the policy says stop for an operator (shell if on_error=shell, else halt)
#   1..6  failure: apply on_error (boot-normal | halt | shell) from the payload's
#         /run/host-recover/on-error (or the decision record, or the kernel option)

HR_STATE=/run/host-recover
HR_RECORD=$HR_STATE/decision.json

hr_say() {
    # One unambiguous line on the console and in the kernel log.
    echo "<7>$*" > /dev/kmsg 2> /dev/null
    echo "$*" > /dev/console 2> /dev/null || echo "$*"
}

hr_on_error() {
    # on_error from the decision record; else the kernel option; else boot-normal.
    _hr_oe=""
    if [ -r "$HR_STATE/on-error" ]; then
        read -r _hr_oe < "$HR_STATE/on-error"
    fi
    if [ -z "$_hr_oe" ] && [ -r "$HR_RECORD" ]; then
        _hr_oe=$(sed -n 's/.*"on_error"[[:space:]]*:[[:space:]]*"\([a-z-]*\)".*/\1/p' "$HR_RECORD" | head -n 1)
    fi
    if [ -z "$_hr_oe" ] && [ -r /proc/cmdline ]; then
        read -r _hr_cl < /proc/cmdline
        for _hr_w in $_hr_cl; do
            case "$_hr_w" in
                rd.host_recover.on_error=* | rd.host_recover.on-error=*) _hr_oe=${_hr_w#*=} ;;
            esac
        done
    fi
    case "$_hr_oe" in
        halt | shell | boot-normal) echo "$_hr_oe" ;;
        *) echo boot-normal ;;
    esac
}

hr_print_record() {
    [ -r "$HR_RECORD" ] || return 0
    hr_say "HR-DECISION-BEGIN"
    while IFS= read -r _hr_line || [ -n "$_hr_line" ]; do
        hr_say "HR-DECISION $_hr_line"
    done < "$HR_RECORD"
    hr_say "HR-DECISION-END"
}

# hr_net_up: static network for the peer query, from rd.host_recover.net=ADDR/PREFIX,GW
# (no DHCP client needed in the initramfs). Uses the first interface other than lo.
hr_net_up() {
    _hr_net=""
    read -r _hr_cl < /proc/cmdline
    for _hr_w in $_hr_cl; do
        case "$_hr_w" in rd.host_recover.net=*) _hr_net=${_hr_w#*=} ;; esac
    done
    [ -n "$_hr_net" ] || return 0
    _hr_if=""
    _hr_i=0
    while [ -z "$_hr_if" ] && [ $_hr_i -lt 100 ]; do
        for _hr_d in /sys/class/net/*; do
            [ "${_hr_d##*/}" = lo ] || [ ! -e "$_hr_d" ] || { _hr_if=${_hr_d##*/} && break; }
        done
        [ -n "$_hr_if" ] || sleep 0.1
        _hr_i=$((_hr_i + 1))
    done
    [ -n "$_hr_if" ] || { hr_say "host-recover: no network interface"; return 1; }
    ip link set lo up
    ip link set "$_hr_if" up
    ip addr add "${_hr_net%%,*}" dev "$_hr_if"
    case "$_hr_net" in *,*) ip route add default via "${_hr_net#*,}" dev "$_hr_if" ;; esac
    hr_say "HR-PHASE network-up $_hr_if ${_hr_net%%,*}"
}

# hr_run NEWROOT → sets HR_RC and HR_ACTION (normal | recover | halt | shell)
hr_run() {
    mkdir -p "$HR_STATE"
    hr_net_up
    hr_say "HR-PHASE payload-start"
    host-recover boot --newroot "$1"
    HR_RC=$?
    hr_say "HR-PHASE payload-exit rc=$HR_RC"
    hr_print_record
    case "$HR_RC" in
        0) HR_ACTION=normal ;;
        10) HR_ACTION=recover ;;
        11)
            HR_ACTION=$(hr_on_error)
            [ "$HR_ACTION" = shell ] || HR_ACTION=halt
            ;;
        *)
            HR_ACTION=$(hr_on_error)
            [ "$HR_ACTION" = boot-normal ] && HR_ACTION=normal
            ;;
    esac
    if [ "$HR_ACTION" != recover ] && grep -q " $1 " /proc/mounts 2> /dev/null; then
        # Never boot a half-prepared recovery root by accident.
        umount -R "$1" 2> /dev/null || umount -l "$1"
    fi
    hr_say "HR-ACTION $HR_ACTION rc=$HR_RC"
}

# hr_run_once WHO NEWROOT: hr_run unless the payload already ran in this boot.
hr_run_once() {
    [ -e "$HR_STATE/ran" ] && return 1
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
