"""Predicting the next boot's PCRs after an initramfs rebuild (recover.core.predict):
against the test log builder's independent computation and the real OVMF capture."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_eventlog import efistub_log, grub_log

from recover.core import eventlog as el
from recover.core.predict import predict_initrd
from recover.errors import UsageError

DATA = Path(__file__).parent / "data" / "eventlog"


@pytest.mark.parametrize("banks", [("sha256",), ("sha1", "sha256", "sha384")])
def test_prediction_equals_the_log_of_a_boot_with_the_new_initramfs(banks) -> None:  # type: ignore[no-untyped-def]
    old = efistub_log(banks=banks, initrd=b"070701 the old initramfs")
    new = efistub_log(banks=banks, initrd=b"070701 the rebuilt initramfs")
    predicted = predict_initrd(el.parse_event_log(old.bytes()), b"070701 the rebuilt initramfs")
    assert predicted == new.expected()
    assert predicted != old.expected()


def test_only_the_initramfs_pcr_changes_in_a_real_capture() -> None:
    log = el.parse_event_log((DATA / "efistub.bin").read_bytes())
    now, predicted = el.replay(log), predict_initrd(log, b"a different initramfs")
    for bank in now:
        changed = {p for p in now[bank] if now[bank][p] != predicted[bank][p]}
        assert changed == {9}, (bank, changed)


def test_a_boot_path_without_the_stubs_initrd_measurement_is_refused() -> None:
    with pytest.raises(UsageError, match="no initramfs measured by the Linux EFI stub"):
        predict_initrd(el.parse_event_log(grub_log().bytes()), b"x")
