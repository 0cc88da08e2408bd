"""recover.boot.dmimage.unmap: which processes the cleanup starts, read from a sysfs tree.

Every boot that does not recover (the clean boot above all) ends in rootfs.cleanup, which
removes a v2 image's mappings. Under TCG a process start costs hundreds of ms, so the
cleanup asks sysfs first and starts dmsetup (or detaches a loop device) only for what exists; when sysfs
cannot tell, it falls back to dmsetup (fail closed: the key must leave the kernel). The
mappings themselves are tested in QEMU (tests/e2e/test_e2e_imagev2.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from recover.boot import dmimage


def _dm(sys_block: Path, index: int, name: str, slaves: tuple[str, ...] = ()) -> None:
    d = sys_block / f"dm-{index}"
    (d / "dm").mkdir(parents=True)
    (d / "dm" / "name").write_text(name + "\n")
    (d / "slaves").mkdir()
    for s in slaves:
        (d / "slaves" / s).mkdir()


@pytest.fixture
def ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []

    def quiet(argv: list[str]) -> str | None:
        calls.append(argv)
        if argv[:2] == ["dmsetup", "deps"]:
            return " 1 dependencies  : (loop7)\n"
        return ""

    monkeypatch.setattr(dmimage, "SYS_BLOCK", str(tmp_path / "block"))
    monkeypatch.setattr(dmimage, "_quiet", quiet)
    monkeypatch.setattr(dmimage, "_detach", lambda loop: calls.append(["detach", loop]))
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "loop0").mkdir()
    return calls


def test_nothing_mapped_starts_no_process(ran: list[list[str]]) -> None:
    dmimage.unmap()
    assert ran == []


def test_someone_elses_mapping_is_left_alone(tmp_path: Path, ran: list[list[str]]) -> None:
    _dm(tmp_path / "block", 0, "luks-root", ("sda2",))
    dmimage.unmap()
    assert ran == []


def test_both_mappings_are_removed_and_their_loop_detached(
    tmp_path: Path, ran: list[list[str]]
) -> None:
    _dm(tmp_path / "block", 1, dmimage.VERITY_NAME, ("loop3",))
    _dm(tmp_path / "block", 2, dmimage.CRYPT_NAME, ("dm-1",))
    dmimage.unmap()
    assert ran == [
        ["dmsetup", "remove", "--retry", "--noudevsync", dmimage.CRYPT_NAME],
        ["dmsetup", "remove", "--retry", "--noudevsync", dmimage.VERITY_NAME],
        ["detach", "/dev/loop3"],
    ]


def test_a_failed_mapping_detaches_the_given_loop_only(
    tmp_path: Path, ran: list[list[str]]
) -> None:
    """map_image failed after attaching the loop device, before any mapping: the loop it attached goes."""
    dmimage.unmap("/dev/loop5")
    assert ran == [["detach", "/dev/loop5"]]


def test_no_sysfs_falls_back_to_dmsetup(tmp_path: Path, ran: list[list[str]]) -> None:
    (tmp_path / "block" / "loop0").rmdir()
    (tmp_path / "block").rmdir()
    dmimage.unmap()
    assert ran == [
        ["dmsetup", "deps", "-o", "devname", dmimage.VERITY_NAME],
        ["dmsetup", "remove", "--retry", "--noudevsync", dmimage.CRYPT_NAME],
        ["dmsetup", "remove", "--retry", "--noudevsync", dmimage.VERITY_NAME],
        ["detach", "/dev/loop7"],
    ]


def test_an_unreadable_entry_falls_back_to_dmsetup(tmp_path: Path, ran: list[list[str]]) -> None:
    (tmp_path / "block" / "dm-4").mkdir()  # no dm/name: a device going away, or odd sysfs
    dmimage.unmap()
    assert [c[:2] for c in ran] == [
        ["dmsetup", "deps"],
        ["dmsetup", "remove"],
        ["dmsetup", "remove"],
        ["detach", "/dev/loop7"],
    ]


def test_this_hosts_sysfs_is_readable() -> None:
    """The real /sys/block of this machine gives an answer (the boot reads the same)."""
    assert dmimage.mapped() is not None


def test_a_crypt_mapping_alone_is_removed_without_asking_for_verity(
    tmp_path: Path, ran: list[list[str]]
) -> None:
    """sysfs shows no verity mapping: dmsetup is not asked for its devices."""
    _dm(tmp_path / "block", 2, dmimage.CRYPT_NAME, ("dm-1",))
    dmimage.unmap()
    assert ran == [["dmsetup", "remove", "--retry", "--noudevsync", dmimage.CRYPT_NAME]]
