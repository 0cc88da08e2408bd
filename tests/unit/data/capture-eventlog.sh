#!/bin/bash
# Capture a real TCG event log and the PCR values read at the same boot, for the
# eventlog unit tests. Documentation and a reusable tool: the tests never run it.
#
#   capture-eventlog.sh efistub|grub|grub-legacy OUTDIR
#
# efistub  OVMF direct kernel boot (-kernel/-initrd/-append): the Linux EFI stub
#          measures the initrd and the load options into PCR 9 (EV_EVENT_TAG).
# grub     OVMF boots GRUB (grub-mkstandalone, Debian's grub-efi-amd64-bin) as the
#          removable-media path \EFI\BOOT\BOOTX64.EFI from a FAT disk; GRUB loads the
#          kernel and initrd from that disk: commands + kernel_cmdline -> PCR 8, files
#          -> PCR 9.
#
# The guest is a Debian kernel + a busybox-static initramfs whose /init mounts
# securityfs, prints the binary log (base64), /proc/cmdline and every PCR of the
# sha1/sha256/sha384 banks to the serial console, and powers off. TCG, no network.
# Writes OUTDIR/<path>.bin (the log), OUTDIR/<path>.pcrs (alg pcr hex per line),
# OUTDIR/<path>.cmdline (/proc/cmdline), OUTDIR/<path>.about (software versions).
#
# Environment: LAB (cache, default /var/cache/host-recover/eventlog-lab) holding
#   kroot/      dpkg -x of linux-image-<ver>-amd64(-unsigned) (its .deb kept beside it)
#   tools/      dpkg -x of grub-efi-amd64-bin, grub-common, libefivar1, libefiboot1,
#               mtools, dosfstools (grub only)
# Every process started here is ended by its PID.
set -euo pipefail

mode=${1:?efistub|grub|grub-legacy}
out=$(realpath "${2:?OUTDIR}")
lab=${LAB:-/var/cache/host-recover/eventlog-lab}
work=$lab/run-$mode
rm -rf "$work"
mkdir -p "$work" "$out"

kernel=$(ls "$lab"/kroot/boot/vmlinuz-* | head -n1)
busybox=$(command -v busybox)
append="console=ttyS0,115200 quiet panic=-1 hr.capture=$mode"

# --- initramfs: busybox + /init ---------------------------------------------
root=$work/initramfs
mkdir -p "$root"/{bin,proc,sys,dev}
cp "$busybox" "$root/bin/busybox"
cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t securityfs securityfs /sys/kernel/security
log=/sys/kernel/security/tpm0/binary_bios_measurements
i=0
while [ ! -e "$log" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
echo "@@CMDLINE $(cat /proc/cmdline)"
cat "$log" > /tmp.log 2>/dev/null || : > /tmp.log
echo "@@SHA256 $(sha256sum /tmp.log | cut -d' ' -f1)"
echo "@@LOG-BEGIN"
base64 /tmp.log
echo "@@LOG-END"
for alg in sha1 sha256 sha384; do
  for n in $(seq 0 23); do
    f=/sys/class/tpm/tpm0/pcr-$alg/$n
    [ -e "$f" ] && echo "@@PCR $alg $n $(cat $f)"
  done
done
echo "@@DONE"
poweroff -f
INIT
chmod 755 "$root/init"
find "$root" -exec touch -h -d @0 {} +  # reproducible: same bytes, same PCR 9
(cd "$root" && find . | sort | cpio -o -H newc --quiet --reproducible) >"$work/initrd.img"

# --- swtpm with three banks -------------------------------------------------
mkdir -p "$work/tpmstate"
swtpm_setup --tpm2 --tpmstate "$work/tpmstate" --pcr-banks sha1,sha256,sha384 --overwrite \
  >"$work/swtpm_setup.log" 2>&1
swtpm socket --tpm2 --tpmstate dir="$work/tpmstate" \
  --ctrl type=unixio,path="$work/swtpm.sock" --flags startup-clear \
  >"$work/swtpm.log" 2>&1 &
swtpm_pid=$!
cleanup() { kill "$swtpm_pid" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 50); do [ -S "$work/swtpm.sock" ] && break; sleep 0.1; done

cp /usr/share/OVMF/OVMF_VARS.fd "$work/vars.fd"
qemu=(qemu-system-x86_64 -machine q35 -accel tcg -m 1024 -smp 1 -nic none
  -display none -no-reboot -serial "file:$work/serial.log" -monitor none
  -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd
  -drive if=pflash,format=raw,unit=1,file="$work/vars.fd"
  -chardev socket,id=chrtpm,path="$work/swtpm.sock"
  -tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-tis,tpmdev=tpm0)

if [ "$mode" = efistub ]; then
  qemu+=(-kernel "$kernel" -initrd "$work/initrd.img" -append "$append")
elif [ "$mode" = grub ] || [ "$mode" = grub-legacy ]; then
  # Debian's GRUB 2.06 'linux' hands off to 'linuxefi' (EFI handover: the kernel's EFI
  # stub runs and copies the event log) only under Secure Boot; without it, 'linux'
  # exits boot services itself and Linux gets NO event log (PCRs still measured).
  # 'grub' uses linuxefi/initrdefi (Debian's Secure Boot path); 'grub-legacy' uses
  # linux/initrd as Debian does without Secure Boot (captures PCRs, the log is empty).
  linux=linuxefi initrd=initrdefi
  [ "$mode" = grub-legacy ] && linux=linux initrd=initrd
  tools=$lab/tools
  export PATH=$tools/usr/bin:$tools/sbin:$PATH
  export LD_LIBRARY_PATH=$tools/usr/lib/x86_64-linux-gnu  # libefivar1, libefiboot1
  cat >"$work/grub.cfg" <<CFG
insmod fat
insmod linux
insmod linuxefi
search --no-floppy --file /vmlinuz --set=root
set timeout=0
$linux /vmlinuz $append
$initrd /initrd.img
boot
CFG
  grub-mkstandalone -O x86_64-efi -d "$tools/usr/lib/grub/x86_64-efi" \
    --modules="tpm part_gpt part_msdos fat search search_fs_file linux linuxefi" \
    -o "$work/BOOTX64.EFI" "boot/grub/grub.cfg=$work/grub.cfg"
  truncate -s 256M "$work/esp.img"
  mkfs.vfat -F 32 "$work/esp.img" >/dev/null
  export MTOOLS_SKIP_CHECK=1
  mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT
  mcopy -i "$work/esp.img" "$work/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
  mcopy -i "$work/esp.img" "$kernel" ::/vmlinuz
  mcopy -i "$work/esp.img" "$work/initrd.img" ::/initrd.img
  qemu+=(-drive if=none,id=esp,format=raw,file="$work/esp.img"
    -device virtio-blk-pci,drive=esp,bootindex=0)
else
  echo "unknown mode $mode" >&2
  exit 2
fi

"${qemu[@]}" &
qemu_pid=$!
cleanup() { kill "$qemu_pid" 2>/dev/null || true; kill "$swtpm_pid" 2>/dev/null || true; }
for _ in $(seq 600); do
  grep -q '@@DONE' "$work/serial.log" 2>/dev/null && break
  kill -0 "$qemu_pid" 2>/dev/null || break
  sleep 0.5
done
wait "$qemu_pid" || true

tr -d '\r' <"$work/serial.log" >"$work/serial.txt"
grep -q '@@DONE' "$work/serial.txt" || { echo "no @@DONE on the console: $work/serial.txt" >&2; exit 1; }
sed -n '/^@@LOG-BEGIN/,/^@@LOG-END/p' "$work/serial.txt" | sed '1d;$d' | base64 -d >"$out/$mode.bin"
want=$(sed -n 's/^@@SHA256 //p' "$work/serial.txt")
got=$(sha256sum "$out/$mode.bin" | cut -d' ' -f1)
[ "$want" = "$got" ] || { echo "log corrupted on the console ($got != $want)" >&2; exit 1; }
sed -n 's/^@@PCR //p' "$work/serial.txt" >"$out/$mode.pcrs"
sed -n 's/^@@CMDLINE //p' "$work/serial.txt" >"$out/$mode.cmdline"
{
  echo "mode: $mode"
  echo "kernel: $(basename "$kernel") ($(ls "$lab"/linux-image-*.deb 2>/dev/null | xargs -r -n1 basename))"
  echo "ovmf: $(dpkg-query -W -f '${Version}' ovmf 2>/dev/null)"
  echo "qemu: $(qemu-system-x86_64 --version | head -n1)"
  echo "swtpm: $(swtpm --version | head -n1) (banks sha1,sha256,sha384)"
  [ "$mode" = efistub ] || echo "grub: $(ls "$lab"/grub-efi-amd64-bin_*.deb | xargs -n1 basename)"
  echo "append: $append"
} >"$out/$mode.about"
echo "captured $out/$mode.bin ($(stat -c %s "$out/$mode.bin") bytes), $(wc -l <"$out/$mode.pcrs") PCR values"
