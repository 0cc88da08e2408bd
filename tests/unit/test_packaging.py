"""The Debian package's generated parts: man pages and bash completion come from the
parser and the setting declarations (recover/cli/docs.py), and what the package
installs matches the tree (debian/rules)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from recover.cli import docs
from recover.cli.main import build_parser
from recover.settings import SETTINGS

REPO = Path(__file__).resolve().parents[2]


def test_man_page_lists_every_verb_and_exit_code() -> None:
    page = docs.render_man_cli()
    for title, _ in docs._verbs(build_parser()):
        assert f".SS host-recover {docs._roff(title)}" in page
    assert page.count(".TP\n.B ") >= 10  # exit codes
    assert not any(line.startswith(("'", ". ")) for line in page.splitlines()[1:])


def test_config_man_page_lists_every_setting() -> None:
    page = docs.render_man_config()
    for s in SETTINGS:
        assert f".B {docs._roff(s.name)}" in page


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed")
@pytest.mark.parametrize("render", [docs.render_man_cli, docs.render_man_config])
def test_man_pages_render_without_warnings(tmp_path: Path, render: object) -> None:
    page = tmp_path / "page.8"
    page.write_text(render())  # type: ignore[operator]
    proc = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", page], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def _complete(tmp_path: Path, *words: str) -> list[str]:
    script = tmp_path / "completion.bash"
    script.write_text(docs.render_bash_completion())
    argv = " ".join(f"'{w}'" for w in ("host-recover", *words))
    prog = (
        f"source {script}; COMP_WORDS=({argv}); COMP_CWORD={len(words)}; "
        'cd "$1"; _host_recover; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    proc = subprocess.run(
        ["bash", "-c", prog, "bash", tmp_path], capture_output=True, text=True, check=True
    )
    return [w for w in proc.stdout.splitlines() if w]


def test_completion_offers_verbs_subverbs_options_and_choices(tmp_path: Path) -> None:
    assert "image" in _complete(tmp_path, "ima")
    assert set(_complete(tmp_path, "image", "")) >= {"create", "inspect", "verify", "decrypt"}
    assert "--key-file" in _complete(tmp_path, "image", "create", "--k")
    # a value after an option with choices: the choices; the option's own value is skipped
    choices = _complete(tmp_path, "image", "create", "--payload-type", "")
    assert set(choices) == {"squashfs", "erofs", "raw"}
    (tmp_path / "master.key").write_text("")
    assert _complete(
        tmp_path, "--config", "x", "credential", "add", "n", "f", "--key-file", "ma"
    ) == ["master.key"]


def test_package_installs_the_whole_dracut_module() -> None:
    rules = (REPO / "debian" / "rules").read_text()
    assert "dracut-module/module-setup.sh hooks/*.sh" in rules
    assert "dracut-module/host-recover.service" in rules
    unit = (REPO / "systemd" / "host-recover-agent.service").read_text()
    assert "ExecStart=/usr/sbin/host-recover agent" in unit
    assert "/usr/sbin/host-recover" in rules
