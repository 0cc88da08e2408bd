"""Contracts are stated once (recover.errors, recover.settings, recover.core.plan) and
everything else is generated from them or checked against them here: the CLI epilog and
docs, the operator guide, the hooks, the systemd unit, the typed Config."""

from __future__ import annotations

import dataclasses
import enum
import re
from pathlib import Path

from recover import config, settings
from recover.cli.main import build_parser
from recover.core import plan
from recover.errors import EXIT_CODES, ExitCode, HostRecoverError, epilog

REPO = Path(__file__).resolve().parents[2]


def _subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _subclasses(sub)
    return out


def test_every_exit_code_has_one_meaning_and_every_error_a_code() -> None:
    assert set(EXIT_CODES) == set(ExitCode)
    for cls in _subclasses(HostRecoverError):
        assert cls.exit_code in EXIT_CODES, cls


def test_cli_epilog_and_docs_list_every_exit_code() -> None:
    assert build_parser().epilog == epilog()
    cli_md = (REPO / "docs" / "cli.md").read_text()
    for code, meaning in EXIT_CODES.items():
        assert f"| {int(code)} | {meaning} |" in cli_md, code


def test_operator_guide_table_matches_the_exit_codes() -> None:
    guide = (REPO / "docs" / "operator-guide.md").read_text()
    rows = dict(re.findall(r"^\| (\d+) \| ([^|]+) \|", guide, re.M))
    documented = {int(c) for c in rows} - {130}  # 130: interrupted, Python's own
    assert documented == {int(c) for c in ExitCode}, "docs/operator-guide.md"


def test_hooks_act_on_the_plans_actions_and_map_no_exit_code() -> None:
    lib = (REPO / "hooks" / "host-recover-lib.sh").read_text()
    case = re.search(r'case "\$HR_ACTION" in\n\s*([a-z |]+)\)', lib)
    assert case is not None
    assert {a.strip() for a in case.group(1).split("|")} == {a.value for a in plan.HookAction}
    for hook in (REPO / "hooks").glob("*.sh"):
        text = hook.read_text()
        assert 'case "$HR_RC"' not in text, hook  # the payload decides, not the hook
        assert "getarg" not in text and "rd.host_recover" not in text, (
            f"{hook.name} parses a kernel option: the payload does (recover.config)"
        )


def test_systemd_unit_does_not_skip_the_payload() -> None:
    unit = (REPO / "dracut-module" / "host-recover.service").read_text()
    assert "ConditionKernelCommandLine" not in unit  # a disabled payload still locks


def test_config_fields_are_the_settings() -> None:
    fields = {f.name: f.type for f in dataclasses.fields(config.Config) if f.name != "sources"}
    assert list(fields) == [s.attr for s in settings.SETTINGS]
    for s in settings.SETTINGS:
        value = s.parse(s.default)
        assert type(value).__name__ == fields[s.attr], s.name


def test_closed_sets_are_enums_and_docs_list_their_values() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text()
    for s in settings.SETTINGS:
        choices = getattr(s.parse, "enum", None)
        if choices is None:
            continue
        assert issubclass(choices, enum.StrEnum)
        assert isinstance(s.parse(s.default), choices)
        row = next(line for line in doc.splitlines() if line.startswith(f"| `{s.name}`"))
        assert all(c.value in row for c in choices), s.name


def test_kernel_options_are_declared_once() -> None:
    opts = config.parse_kernel_cmdline(
        " ".join(f"{s.kernel_option}={s.default}" for s in settings.SETTINGS if s.kernel_option)
    )
    assert set(opts) == {s.name for s in settings.SETTINGS if s.kernel}
    assert config.parse_kernel_cmdline("rd.host_recover=0") == {"boot.enabled": "0"}
    boot_md = (REPO / "docs" / "boot.md").read_text()
    for s in settings.SETTINGS:
        if s.kernel_option:
            assert s.kernel_option in boot_md, f"docs/boot.md lacks {s.kernel_option}"
