"""Configuration, kernel options and the CLI contract: pure, no TPM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recover import config
from recover.boot import payload
from recover.cli import docs
from recover.cli.main import build_parser, main
from recover.core import pcrsel
from recover.errors import ConfigError, ExitCode


def test_defaults_load_without_a_file(tmp_path: Path) -> None:
    cfg = config.load(None, env={"HOST_RECOVER_CONFIG": str(tmp_path / "none.conf")})
    assert cfg.tpm_tcti == "device:/dev/tpmrm0"
    assert cfg.tpm_srk_handle == 0x81000001
    assert cfg.verdict_window == 120.0
    assert cfg.boot_mode == "auto"


def test_file_dropins_env_and_overrides_in_order(tmp_path: Path) -> None:
    main_conf = tmp_path / "hr.conf"
    main_conf.write_text("[tpm]\npcrs = sha256:7\nseal-handle = 0x81000010\n[verdict]\nwindow=60\n")
    dropins = tmp_path / "hr.conf.d"
    dropins.mkdir()
    (dropins / "10-a.conf").write_text("[verdict]\nwindow = 30\n")
    (dropins / "20-b.conf").write_text("[verdict]\nquorum = 3\n")
    cfg = config.load(
        main_conf,
        overrides={"verdict.quorum": "75%"},
        env={"HOST_RECOVER_TCTI": "swtpm:port=1"},
    )
    assert cfg.tpm_pcrs == "sha256:7"
    assert cfg.tpm_seal_handle == 0x81000010
    assert cfg.verdict_window == 30.0
    assert cfg.verdict_quorum == "75%"
    assert cfg.tpm_tcti == "swtpm:port=1"
    assert cfg.source_files == (
        str(main_conf),
        str(dropins / "10-a.conf"),
        str(dropins / "20-b.conf"),
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[tpm]\nbogus = 1\n", "unknown setting 'tpm.bogus'"),
        ("[tpm]\npcrs = sha999:1\n", "setting tpm.pcrs"),
        ("[tpm]\npcrs = sha256:24\n", "0..23"),
        ("[tpm]\nsrk_handle = nope\n", "not a handle"),
        ("[verdict]\nquorum = 0\n", "count must be >= 1"),
        ("[verdict]\nquorum = 120%\n", "percentage"),
        ("[verdict]\non_isolated = maybe\n", "not one of recover, normal, hold"),
        ("[peers]\ndeadline = -1\n", "must be > 0"),
        ("no section\n", "INI"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, text: str, fragment: str) -> None:
    f = tmp_path / "bad.conf"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        config.load(f)
    assert fragment in str(e.value) + (e.value.hint or "")
    assert "\n" not in str(e.value)


def test_missing_explicit_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "absent.conf")


def test_kernel_cmdline_last_wins_and_dash_underscore_equal() -> None:
    opts = config.parse_kernel_cmdline(
        "quiet rd.host_recover.mode=force rd.host-recover.mode=never rd.host_recover.on-error=halt "
        "rd.host_recover.debug rd.host_recover.pcrs=sha256:1 root=/dev/vda"
    )
    assert opts == {"boot.mode": "never", "boot.on_error": "halt", "boot.debug": "1"}


def test_kernel_cannot_set_trust_settings() -> None:
    opts = config.parse_kernel_cmdline("rd.host_recover.quorum=1 rd.host_recover.tcti=swtpm:")
    assert opts == {}


@pytest.mark.parametrize(
    ("cmdline", "enabled"),
    [
        ("", True),
        ("rd.host_recover", True),
        ("rd.host_recover=0", False),
        ("rd.host_recover=off", False),
    ],
)
def test_boot_enabled_switch(cmdline: str, enabled: bool, tmp_path: Path) -> None:
    cfg = config.load(None, env={"HOST_RECOVER_CONFIG": str(tmp_path / "x")})
    assert payload.apply_kernel_options(cfg, cmdline).boot_enabled is enabled


def test_kernel_options_apply_and_bad_values_are_ignored(tmp_path: Path) -> None:
    cfg = config.load(None, env={"HOST_RECOVER_CONFIG": str(tmp_path / "x")})
    cmdline = "rd.host_recover.mode=force rd.host_recover.on_error=explode"
    cfg2 = payload.apply_kernel_options(cfg, cmdline)
    assert cfg2.boot_mode == "force"
    assert cfg2.boot_on_error == "boot-normal"


def test_pcr_selection_round_trip() -> None:
    sel = pcrsel.parse_selection("sha256:9,0,4,2,7+sha1:0")
    assert sel == (("sha256", (0, 2, 4, 7, 9)), ("sha1", (0,)))
    assert (
        pcrsel.format_selection(pcrsel.add_pcr(sel, "sha256", 15)) == "sha256:0,2,4,7,9,15+sha1:0"
    )


def test_every_verb_has_a_handler_that_imports() -> None:
    """Each verb in the CLI contract names a handler that exists."""
    import argparse

    def walk(p: argparse.ArgumentParser) -> list[str]:
        out = []
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sp in a.choices.values():
                    h = sp.get_default("handler")
                    out += [h] if h else walk(sp)
        return out

    handlers = walk(build_parser())
    assert len(handlers) >= 18
    for handler in handlers:
        assert callable(handler), handler
        assert handler.__module__.startswith("recover.cli."), handler


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--set", "nonsense", "config"]) == ExitCode.USAGE
    assert main(["--config", str(tmp_path / "absent"), "config"]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "does not exist" in err and "hint:" in err


def test_docs_are_generated_from_the_declarations() -> None:
    doc = Path(__file__).parents[2] / "docs" / "configuration.md"
    assert doc.read_text() == docs.render_config_docs(), "run: python -m recover.cli.docs"


def test_help_is_fast_and_imports_nothing_heavy() -> None:
    code = (
        "import sys; from recover.cli.main import build_parser; build_parser();"
        "print(any(m.startswith(('tpm2_pytss','cryptography')) for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_docs_are_generated_from_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    from recover.cli.docs import render_cli_docs

    monkeypatch.setenv("COLUMNS", "100")
    doc = Path(__file__).parents[2] / "docs" / "cli.md"
    assert doc.read_text() == render_cli_docs(), "run: python -m recover.cli.docs"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"tpm.lock_pcr": "16"}, "can be reset after boot"),  # tpm2_pcrreset 16 works
        ({"tpm.lock_pcr": "23"}, "can be reset after boot"),
        ({"tpm.lock_pcr": "17"}, "can be reset after boot"),  # DRTM localities
        ({"tpm.lock_pcr": "9"}, "also in tpm.pcrs"),
        ({"tpm.pcrs": "sha256:0,7,15"}, "also in tpm.pcrs"),
        ({"boot.lock": "after-unseal"}, "let the normal OS unseal"),
    ],
)
def test_settings_that_would_leave_the_store_unlockable_are_refused(
    overrides: dict[str, str], fragment: str
) -> None:
    from recover.errors import ConfigError

    with pytest.raises(ConfigError, match=fragment):
        config.load(None, overrides, env={}, read_files=False)
