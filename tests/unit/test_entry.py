"""The boot entry (recover.cli.entry) reads the hooks' ``host-recover boot`` command line
without argparse: for every command line it accepts, its namespace must equal the full
parser's; everything else must go to the full parser. No TPM."""

from __future__ import annotations

import contextlib
import io
import itertools

import pytest

from recover.cli import entry
from recover.cli.main import build_parser

PARSER = build_parser()


def _full(argv: list[str]) -> dict[str, object] | None:
    """The full parser's namespace, or None when it rejects the command line (or prints
    help or the version)."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            return vars(PARSER.parse_args(argv))
        except SystemExit:
            return None


ACCEPTED = [
    ["boot"],
    ["boot", "--newroot", "/sysroot"],
    ["boot", "--newroot=/mnt/new root"],
    ["boot", "--cmdline", "/tmp/cmdline", "--newroot", "/n"],
    ["--config", "/etc/x.conf", "boot"],
    ["--config=/etc/x.conf", "--debug", "boot", "--cmdline=/c"],
    ["--debug", "--config", "boot", "boot", "--newroot", "boot"],
    ["--config", "a=b", "boot", "--newroot=x=y"],
]

DECLINED = [
    [],
    ["--debug"],
    ["boot", "--help"],
    ["-h"],
    ["--version"],
    ["boot", "--new", "/x"],  # an abbreviation: argparse takes it, the entry leaves it to it
    ["--con", "/x", "boot"],
    ["--set", "tpm.pcrs=sha256:7", "boot"],
    ["--tcti", "swtpm:port=1", "boot"],
    ["boot", "--newroot", "/a", "--newroot", "/b"],
    ["--debug", "--debug", "boot"],
    ["boot", "--newroot"],
    ["boot", "--newroot", "-x"],
    ["boot", "--newroot="],
    ["boot", "--newroot", ""],
    ["boot", "--debug"],
    ["boot", "--config", "/x"],
    ["--debug=1", "boot"],
    ["boot", "boot"],
    ["boot", "extra"],
    ["--newroot", "/x", "boot"],
    ["store", "status"],
    ["bundle", "--output", "/x"],
    ["boot", "--", "--newroot"],
]


@pytest.mark.parametrize("argv", ACCEPTED, ids=" ".join)
def test_accepted_command_lines_parse_as_the_full_parser_does(argv: list[str]) -> None:
    ns = entry.parse_boot(argv)
    assert ns is not None
    assert vars(ns) == _full(argv)


@pytest.mark.parametrize("argv", DECLINED, ids=lambda a: " ".join(a) or "(empty)")
def test_other_command_lines_go_to_the_full_parser(argv: list[str]) -> None:
    assert entry.parse_boot(argv) is None


def test_every_short_command_line_is_declined_or_parsed_alike() -> None:
    """All command lines of up to four words from a vocabulary of verbs, flags, values
    and mistakes: the entry declines, or agrees with the full parser."""
    words = ["boot", "--config", "--debug", "--newroot", "--cmdline=/c", "/v", "-x",
             "--newroot=", "--set", "--new", "--config=/f", "-h", "store"]  # fmt: skip
    accepted = 0
    for n in range(5):
        for argv in map(list, itertools.product(words, repeat=n)):
            ns = entry.parse_boot(argv)
            if ns is None:
                continue
            accepted += 1
            assert vars(ns) == _full(argv), argv
    assert accepted > 20  # the vocabulary does reach the fast path (37 command lines)


def test_a_declined_command_line_is_the_full_parser_s(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        entry.main(["boot", "--help"])
    assert exc.value.code == 0
    assert "--newroot" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        entry.main(["boot", "--nonsense"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --nonsense" in capsys.readouterr().err
