"""bench.pivot's before/after table: medians per step and the new root against each
run's own clean boot (pure rendering of two --json runs)."""

from __future__ import annotations

from typing import Any

from bench.pivot import CLEAN, compare, goals, label, parse_size, section, size_arg


def boot(new_root: float, peers: float = 0, **steps: float) -> dict[str, Any]:
    return {
        "ok": True,
        "phases": {"new-root": new_root},
        "steps_ms": {"decide.peers": peers, "decide.answer-wait": 0, **steps},
    }


def run(rev: str, clean: list[float], v2: list[dict[str, Any]]) -> dict[str, Any]:
    return {"revision": rev, "results": {CLEAN: [boot(c) for c in clean], "v2 64 MiB": v2}}


def test_before_after_rows() -> None:
    before = run(
        "aaa",
        [25.0, 26.0, 27.0],
        [boot(28.0, 500, store=400, image=1200, mount=300), boot(29.0, 500, store=500)],
    )
    after = run("bbb", [25.5], [boot(26.0, 1000, store=100, image=600, mount=200)])
    text = compare(before, after)
    assert "tree aaa" in text and "tree bbb" in text
    row = next(line for line in text.splitlines() if line.startswith("| v2 64 MiB"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # store: median of 400 and 500 → 100; image and mount from the one boot that has them
    assert cells[1] == "–"  # decide measured in neither
    assert cells[2:5] == ["450 → 100", "1200 → 600", "300 → 200"]
    assert cells[6] == "+2.5 → +0.5"  # median 28.5 − 26.0; 26.0 − 25.5
    assert cells[7] == "+2.0 → -0.5"  # less the peer rounds (0.5 s; 1.0 s)
    # pooled over the boots: (400+1200+300, 500) → median 1200; after 100+600+200
    assert "store + image + mount: 1200 → 900 ms" in text


def test_goals_from_the_new_root_and_from_the_payload_start() -> None:
    def at(start: float, new_root: float, peers: float = 0) -> dict[str, Any]:
        b = boot(new_root, peers)
        b["phases"]["payload-start"] = start
        return b

    results = {
        CLEAN: [at(27.0, 32.0), at(25.0, 31.0)],  # new root 31.5; from the payload 5.5
        "v2 64 MiB": [at(24.0, 30.5, 500), at(24.0, 30.5, 500)],  # 30.5; 6.5
        "v2 4 GiB": [at(23.0, 29.0), boot(40.0)],  # no payload start in the second boot
    }
    lines = goals(results)
    assert "(31.5 s): 64 MiB: -1.0 s, 4 GiB: +3.0 s (goal: within 1 s)" in lines[-2]
    assert "without its peer rounds and answer wait: 64 MiB: -1.5 s" in lines[-2]
    assert lines[-1].endswith("5.5 s; v2 recovery boots against it: 64 MiB: +1.0 s, 4 GiB: +0.5 s.")


def test_the_reproduce_line_names_the_measurement_s_own_sizes_and_rounds() -> None:
    """Rendered from a --json run of 64M,4G x 2, the command says so, not the defaults."""
    for text in ("64M", "1G", "4G", "512M"):
        assert size_arg(label(parse_size(text))) == text
    boot = {"ok": True, "root": "recovery", "wall_s": 30.2,
            "phases": {"payload-start": 23.57, "payload-exit": 27.78, "new-root": 29.45},
            "steps_ms": {"decide": 1717.2, "decide.answer-wait": 8.8, "decide.peers": 660.4,
                         "image": 372.0, "mount": 197.3, "payload-total": 3344.6,
                         "store": 178.1},
            "dm_ms": {"crypt": 135.8, "loop": 73.9, "modules": 0.1, "verity": 93.6},
            "key_passing": "keyring", "plain_bytes": 65847296}  # fmt: skip
    clean = {"ok": True, "root": "normal",
             "phases": {"payload-start": 23.08, "payload-exit": 24.46, "new-root": 27.33},
             "steps_ms": {"decide": 168.3, "payload-total": 641.2}}  # fmt: skip
    m = {"accel": "tcg", "memory_mib": 1024, "revision": "abc1234", "sizes": ["64 MiB", "4 GiB"],
         "results": {CLEAN: [clean, clean], "v2 64 MiB": [boot, boot], "v2 4 GiB": [boot, boot]}}  # fmt: skip
    text = section(m)
    assert "bench.pivot --sizes 64M,4G --repeats 2 --write" in text, text
