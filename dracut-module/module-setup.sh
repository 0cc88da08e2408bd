#!/bin/bash
# shellcheck disable=SC2154 # initdir, moddir, systemdsystemunitdir, hostonly: set by dracut
# dracut 059 module "host-recover": early-boot recovery from the TPM-sealed store.
#
# Installs the payload (Python interpreter, sourceless bytecode, extension modules and
# their libraries, as computed by `host-recover bundle`), the measured configuration
# (/etc/host-recover: host-recover.conf, peers inventory, policy public key) and thin
# hooks that run `host-recover boot` once before the root file system is mounted.
#
# Environment (optional):
#   HOST_RECOVER_BUNDLE   a staging directory from `host-recover bundle --output DIR`
#                         (default: built now into dracut's temporary directory)
#   HOST_RECOVER_CONFDIR  configuration to bake in (default /etc/host-recover)

# called by dracut
check() {
    # Never included by accident: only with --add host-recover (or hostonly + config).
    [[ $hostonly ]] && [[ -e ${HOST_RECOVER_CONFDIR:-/etc/host-recover}/host-recover.conf ]] && return 0
    return 255
}

# _hr_has_peers: the configuration to bake in reaches the network at boot, so dracut's
# networking goes in: it names peers (a baked inventory, or the signed inventory's fleet
# key: the inventory itself is read from the store at boot; both under their default
# names) or witness endpoints (docs/boot.md#network).
_hr_has_peers() {
    local confdir=${HOST_RECOVER_CONFDIR:-/etc/host-recover}
    [[ -f $confdir/peers.json ]] || [[ -f $confdir/inventory-pub.pem ]] \
        || grep -qsE '^[[:space:]]*endpoints[[:space:]]*=[[:space:]]*[^[:space:]]' \
            "$confdir"/host-recover.conf "$confdir"/host-recover.conf.d/*.conf
}

# called by dracut
depends() {
    local handler
    if _hr_has_peers; then
        # dracut's own networking (ip=, rd.route=, vlan=, bond=, ...): the handler an
        # operator added (--add network-manager, ...) or else network-legacy, which works
        # under both dracut's shell init and a systemd initrd (40network alone would pick
        # systemd-networkd wherever systemd is installed, even for a shell init).
        for handler in network-manager systemd-networkd network-wicked connman network-legacy; do
            dracut_module_included "$handler" && break
            handler=network-legacy
        done
        echo base fs-lib "$handler" network
    else
        echo base fs-lib
    fi
    return 0
}

# called by dracut
installkernel() {
    # TPM (built into Debian's kernels, a module elsewhere), the store and image file
    # systems, the overlay for the writable recovery root, virtio for VMs.
    hostonly='' instmods -o tpm_crb tpm_tis tpm_tis_core squashfs erofs overlay loop \
        ext4 virtio_blk virtio_pci virtio_net af_packet
    # Image container v2 (docs/image-format.md): dm-verity under dm-crypt aes-xts-plain64,
    # and the crypto the kernel loads for them by name (xts(aes) = xts + ecb + aes).
    hostonly='' instmods dm_mod dm_verity dm_crypt
    hostonly='' instmods -o dm_bufio xts ecb aes aesni_intel aes_generic sha256 \
        sha256_ssse3 sha256_generic
    # AF_ALG, for the payload to build xts(aes) ahead of dm-crypt (recover/boot/preload.py).
    hostonly='' instmods -o af_alg algif_skcipher
}

_hr_bundle() {
    local stage=${HOST_RECOVER_BUNDLE:-}
    if [[ -z $stage ]]; then
        stage="$DRACUT_TMPDIR/host-recover-bundle"
        host-recover bundle --output "$stage" > /dev/null || return 1
    fi
    [[ -f $stage/manifest.json ]] || {
        derror "host-recover: $stage is not a bundle (run host-recover bundle --output DIR)"
        return 1
    }
    echo "$stage"
}

# _hr_install_config DIR: the measured configuration, and nothing else from DIR: the main
# file, its drop-ins, the peer inventory, the policy public key and the fleet (signed
# inventory) public key under their default names (docs/boot.md, docs/inventory.md). A file holding a private key is refused: the initramfs is not
# encrypted.
_hr_install_config() {
    local f rel confdir=$1
    [[ -d $confdir ]] || return 0
    for f in "$confdir"/host-recover.conf "$confdir"/host-recover.conf.d/*.conf \
        "$confdir"/peers.json "$confdir"/policy-pub.pem "$confdir"/inventory-pub.pem; do
        [[ -f $f ]] || continue
        if grep -q "PRIVATE KEY" "$f"; then
            derror "host-recover: $f holds a private key: not putting it into the initramfs"
            return 1
        fi
        rel=${f#"$confdir"/}
        inst_simple "$f" "/etc/host-recover/$rel"
    done
    for f in "$confdir"/*; do
        case ${f##*/} in
            host-recover.conf | host-recover.conf.d | peers.json | policy-pub.pem) ;;
            inventory-pub.pem) ;; # the fleet key's public half (docs/inventory.md)
            *) [[ -e $f ]] && dwarn "host-recover: not baking $f into the initramfs" ;;
        esac
    done
    return 0
}

# called by dracut
install() {
    local stage f confdir=${HOST_RECOVER_CONFDIR:-/etc/host-recover}
    stage=$(_hr_bundle) || return 1

    while read -r f; do
        [[ $f ]] && inst_binary "$f"
    done < "$stage/binaries.list"
    while read -r f; do
        [[ $f ]] && inst_library "$f"
    done < "$stage/libraries.list"
    # Generated files (python zip, .pyc tree, extension modules, /usr/bin/host-recover).
    cp -a --no-preserve=ownership "$stage/root/." "$initdir/"

    _hr_install_config "$confdir" || return 1

    inst_multiple mount umount mkdir cat sed grep head sync losetup env dmsetup
    inst_multiple -o ip blkid
    inst_simple "$moddir/host-recover-lib.sh" /lib/host-recover-lib.sh

    if _hr_has_peers; then
        # ip=dhcp without an interface brings nothing up unless rd.neednet=1; the payload,
        # not dracut's initqueue, waits for the network, and only when it asks peers
        # (peers.network_wait): pre-udev/61 drops dracut's wait (docs/boot.md#network).
        mkdir -p "$initdir/etc/cmdline.d"
        echo "rd.neednet=1" > "$initdir/etc/cmdline.d/90host-recover-net.conf"
        inst_hook pre-udev 61 "$moddir/host-recover-net.sh"
        inst_hook pre-pivot 90 "$moddir/host-recover-net-down.sh"
    fi

    if dracut_module_included "systemd"; then
        inst_simple "$moddir/host-recover-systemd.sh" /usr/lib/host-recover/host-recover-systemd.sh
        inst_simple "$moddir/host-recover.service" "$systemdsystemunitdir/host-recover.service"
        $SYSTEMCTL -q --root "$initdir" add-wants initrd-root-fs.target host-recover.service
    else
        inst_hook cmdline 30 "$moddir/host-recover-cmdline.sh"
        inst_hook pre-mount 50 "$moddir/host-recover-pre-mount.sh"
        inst_hook initqueue/timeout 50 "$moddir/host-recover-timeout.sh"
        inst_hook pre-pivot 99 "$moddir/host-recover-pre-pivot.sh"
    fi
}
