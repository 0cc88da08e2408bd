#!/bin/sh
# dracut pre-pivot hook: the last moment before switch_root (a timeline marker).
# shellcheck source=hooks/host-recover-lib.sh
. /lib/host-recover-lib.sh
hr_say "HR-PHASE switch-root"
