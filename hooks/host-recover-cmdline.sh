#!/bin/sh
# dracut cmdline hook (sourced by dracut's init): a timeline marker only. The payload
# (host-recover boot, run in pre-mount) reads its kernel options itself.

# shellcheck source=hooks/host-recover-lib.sh
. /lib/host-recover-lib.sh
hr_say "HR-PHASE init"
