"""Peers backed by real swtpms: `host-recover agent` processes answer this host's
gather.run (which serves meanwhile), in the combinations a fleet meets."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testing.peersim import new_key, pub_pem
from testing.ports import free_port_pair
from testing.swtpm import SwTpm
from testing.waiting import until

from recover import config
from recover.boot import gather
from recover.core.inventory import pcrs_to_json
from recover.core.protocol import Outcome

pytestmark = [pytest.mark.tpm, pytest.mark.integration]

AK = 0x81010002
COUNTER = 0x01500011
SELECTION = "sha256:0,2,4,7,9"
LOCK_PCR = 15  # tpm.lock_pcr's default
NAMES = ("self", "p1", "p2", "p3")


class Host:
    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root
        self.tpm = SwTpm(root / f"tpm-{name}").start()
        self.port = free_port_pair()
        self.agent: subprocess.Popen[str] | None = None
        self.exit_codes: list[int] = []
        from recover.tpm import Tpm

        with Tpm.open(self.tpm.tcti) as t:
            t.ensure_counter(COUNTER, orderly=True)
            self.ak_pub = t.ensure_ak(AK).decode()
            self.pcrs = t.pcr_read(SELECTION)

    def entry(self, ak_pub: str | None = None) -> dict:
        return {
            "id": self.name,
            "address": f"127.0.0.1:{self.port}",
            "failure_domain": "rack-1",
            "ak_pub": ak_pub or self.ak_pub,
            "pcrs": pcrs_to_json(self.pcrs),
        }

    def write_config(self, host_id: str | None = None) -> Path:
        path = self.root / f"{self.name}.conf"
        path.write_text(
            f"[tpm]\ntcti = {self.tpm.tcti}\norderly_nv = {COUNTER:#x}\npcrs = {SELECTION}\n"
            f"[peers]\nhost_id = {host_id or self.name}\ninventory = {self.root}/peers.json\n"
            f"listen = 127.0.0.1:{self.port}\ndeadline = 3\ntimeout = 1\nretries = 1\n"
        )
        return path

    def extend_pcr9(self) -> None:
        from recover.tpm import Tpm

        with Tpm.open(self.tpm.tcti) as t:
            t.pcr_extend(9, b"unexpected")

    def extend_lock_pcr(self) -> None:
        """What this host's payload does before it ends: its normal OS runs from here."""
        from recover.tpm import Tpm

        with Tpm.open(self.tpm.tcti) as t:
            t.pcr_extend(LOCK_PCR, b"host-recover: locked for this boot")

    def start_agent(self, host_id: str | None = None, role: str = "agent") -> None:
        """``role="boot"`` stands in for the peer's boot payload (its TPM just reset, the
        lock PCR not yet extended); with the lock PCR extended it is the lie of root in
        the peer's normal OS.

        Ready is the agent's own line saying it answers on this host's port, not a
        connection to the port: another listener on a reused port would answer that
        probe while the agent itself failed to bind (docs: testing/ports.py)."""
        cfgfile = self.write_config(host_id)
        self.log_path = self.root / f"agent-{self.name}.log"
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:  # a file: nobody has to drain a pipe
            self.agent = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "recover",
                    "--config",
                    str(cfgfile),
                    "agent",
                    "--role",
                    role,
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        ready = f"answering on 127.0.0.1:{self.port} "
        agent = self.agent

        def started() -> bool:
            if ready in self.log_path.read_text(errors="replace")[offset:]:
                return True
            if agent.poll() is not None:
                raise RuntimeError(f"agent {self.name} exited:\n{self.log_tail()}")
            return False

        try:
            until(started, f"agent {self.name} answering on its port", timeout=60)
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n{self.log_tail()}") from None

    def log_tail(self, chars: int = 3000) -> str:
        """The end of this host's agent log (every start appends), for failure messages."""
        path = getattr(self, "log_path", None)
        if path is None or not path.exists():
            return f"(agent {self.name}: no log)"
        return f"--- agent {self.name} log ---\n" + path.read_text(errors="replace")[-chars:]

    def stop_agent(self) -> None:
        if self.agent is not None:
            self.agent.terminate()  # by PID: SIGTERM, the agent stops cleanly
            try:
                code = self.agent.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                code = self.agent.wait(timeout=5)
            self.exit_codes.append(code)
            self.agent = None


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[dict[str, Host]]:
    hosts: dict[str, Host] = {}
    try:
        for n in NAMES:
            hosts[n] = Host(n, tmp_path)
        yield hosts
    finally:
        for h in hosts.values():
            h.stop_agent()
            h.tpm.kill()


def write_inventory(hosts: dict[str, Host], **override: dict) -> None:
    entries = [override.get(n, h.entry()) for n, h in hosts.items()]
    (next(iter(hosts.values())).root / "peers.json").write_text(
        json.dumps({"version": 1, "peers": entries})
    )


def boot(hosts: dict[str, Host], cut: set[str]) -> None:
    """Power-cut the hosts in ``cut``, reboot the others orderly."""
    for n, h in hosts.items():
        if n in cut:
            h.tpm.power_cut_and_restart()
        else:
            h.tpm.reboot_orderly()


def run_self(hosts: dict[str, Host], **changes: Any) -> gather.Decision:
    from recover.tpm import Tpm

    me = hosts["self"]
    cfg = config.load(me.write_config(), env={})
    cfg = cfg.replace(**{"peers_listen": "127.0.0.1:0", **changes})
    with Tpm.open(me.tpm.tcti) as t:
        return gather.run(cfg, t, serve=True, pstore_dir=str(me.root / "pstore"))


def outcomes(d: gather.Decision) -> dict[str, Outcome]:
    assert d.peers is not None
    return {r.peer_id: r.outcome for r in d.peers.results}


def test_power_outage_majority_abnormal(fleet: dict[str, Host]) -> None:
    boot(fleet, cut=set(NAMES))
    write_inventory(fleet)
    for n in ("p1", "p2", "p3"):  # they lost power too: they answer from their payloads
        fleet[n].start_agent(role="boot")
    d = run_self(fleet)
    fleet["p1"].stop_agent()
    assert fleet["p1"].exit_codes == [0]  # SIGTERM: a clean stop
    assert d.evidence.summary == "abnormal"
    assert str(d.verdict.kind) == "correlated-failure" and str(d.verdict.action) == "recover"
    verified = [r for r in d.peers.results if r.outcome is Outcome.VERIFIED]  # type: ignore[union-attr]
    assert len(verified) >= 2  # quorum 50% of 3 = 2; the third may be skipped
    st = verified[0].status
    assert st is not None and st.summary == "abnormal" and st.orderly is False
    assert st.since_reset_source == "tpm" and st.since_reset_s < 60


def test_only_this_host_abnormal(fleet: dict[str, Host]) -> None:
    boot(fleet, cut={"self"})
    write_inventory(fleet)
    for n in ("p1", "p2", "p3"):
        fleet[n].start_agent()
    d = run_self(fleet)
    assert str(d.verdict.kind) == "isolated-failure", d.verdict.reasons
    assert str(d.verdict.action) == "normal"
    assert set(outcomes(d).values()) <= {Outcome.VERIFIED, Outcome.SKIPPED}


def test_all_clean_cli(fleet: dict[str, Host]) -> None:
    boot(fleet, cut=set())
    write_inventory(fleet)
    out = subprocess.run(
        [sys.executable, "-m", "recover", "--config", str(fleet["self"].write_config()),
         "decide", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["verdict"]["kind"] == "clean" and data["peers"] is None


def test_peers_down_exit_6(fleet: dict[str, Host]) -> None:
    boot(fleet, cut={"self"})
    write_inventory(fleet)
    # The 60 s timeout only guards against a hang: the peers' deadline is 3 s.
    out = subprocess.run(
        [sys.executable, "-m", "recover", "--config", str(fleet["self"].write_config()),
         "decide", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 6, out.stderr
    data = json.loads(out.stdout)
    assert data["verdict"]["kind"] == "undetermined"
    # all refused until the deadline; once no answer can change the verdict, the last
    # ones may be skipped (early stop) — which of them is a race, not a property
    results = data["peers"]["results"]
    seen = {r["outcome"] for r in results}
    assert "unreachable" in seen and seen <= {"unreachable", "skipped"}, seen
    # Each ended with its own outcome by the deadline, none cut off by it unanswered.
    reasons = {r["reason"] for r in results}
    assert reasons <= {"connection refused", "verdict settled"}, reasons
    assert "no peer could be verified" in out.stderr


def test_forged_unexpected_pcrs_and_unknown_host(fleet: dict[str, Host]) -> None:
    boot(fleet, cut=set(NAMES))
    fleet["p2"].extend_pcr9()
    write_inventory(fleet, p1=fleet["p1"].entry(ak_pub=pub_pem(new_key())))
    fleet["p1"].start_agent()
    fleet["p2"].start_agent()
    fleet["p3"].start_agent(host_id="stranger")
    d = run_self(fleet, verdict_quorum="1")  # one answer could still decide: all are asked
    got = outcomes(d)
    assert got == {
        "p1": Outcome.FORGED,
        "p2": Outcome.UNEXPECTED_PCRS,
        "p3": Outcome.UNKNOWN_HOST,
    }, d.peers
    assert str(d.verdict.kind) == "undetermined" and d.peers_unavailable


def test_requester_with_unexpected_pcrs_is_refused(fleet: dict[str, Host]) -> None:
    boot(fleet, cut=set(NAMES))
    write_inventory(fleet)
    fleet["self"].extend_pcr9()  # after the inventory: this host booted something else
    for n in ("p1", "p2", "p3"):
        fleet[n].start_agent()
    d = run_self(fleet, verdict_quorum="1")
    assert set(outcomes(d).values()) == {Outcome.REFUSED}
    assert all("PCR" in r.reason for r in d.peers.results)  # type: ignore[union-attr]


def test_hosts_booting_together_find_each_other(fleet: dict[str, Host], caplog: Any) -> None:
    """Two payloads, each serving while asking, started 0.5 s apart, decide together;
    each verified the other's answer and said so (a receipt), so neither keeps
    answering the other for the quiet time after its rounds."""
    import re

    from recover.tpm import Tpm

    caplog.set_level(logging.INFO)
    boot(fleet, cut=set(NAMES))
    pair = {n: fleet[n] for n in ("self", "p1")}
    write_inventory(pair)
    results: dict[str, Any] = {}

    def payload(name: str, delay: float) -> None:
        time.sleep(delay)
        h = fleet[name]
        # A domain of one peer: a percentage quorum can never be reached there (it needs
        # 2 abnormal peers, issue 9), so this pair's operator set a count.
        cfg = config.load(h.write_config(), env={}).replace(verdict_quorum="1")
        with Tpm.open(h.tpm.tcti) as t:
            results[name] = gather.run(cfg, t, serve=True, pstore_dir=str(h.root / "x"))

    threads = [
        threading.Thread(target=payload, args=("self", 0.0)),
        threading.Thread(target=payload, args=("p1", 0.5)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for name in ("self", "p1"):
        d = results[name]
        assert str(d.verdict.kind) == "correlated-failure", (name, d.verdict.reasons)
        assert d.peers.verified == 1
    waits = re.findall(r"answered (\d+) of (\d+) peers that may ask \((\d+) receipted", caplog.text)
    assert len(waits) == 2, caplog.text
    for answered, may_ask, receipted in waits:  # every peer answered has receipted
        assert answered == may_ask == receipted, waits


def test_cannot_listen_still_asks(fleet: dict[str, Host], caplog: Any) -> None:
    """The payload's port is taken: it says so and still asks its peers."""
    boot(fleet, cut=set(NAMES))
    write_inventory(fleet)
    for n in ("p1", "p2"):
        fleet[n].start_agent(role="boot")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        d = run_self(fleet, peers_listen=f"127.0.0.1:{taken}")
    assert str(d.verdict.kind) == "correlated-failure", d.verdict.reasons
    assert "not answering peers: cannot listen on 127.0.0.1" in caplog.text


def test_agents_are_not_waited_for_after_the_round(fleet: dict[str, Host], caplog: Any) -> None:
    """Agents (the peers' normal OS) never ask back: once all three answered with an
    attested role=agent status, the payload stops serving at once instead of waiting
    up to peers.timeout for requests that cannot come."""
    boot(fleet, cut=set(NAMES))
    write_inventory(fleet)
    for n in ("p1", "p2", "p3"):
        fleet[n].start_agent()
    caplog.set_level(logging.INFO)
    # Quorum 1: an agent's answer counts as unaffected (issue 9), so with 1 needed no
    # answer settles the verdict while another is pending: all three are asked.
    d = run_self(fleet, peers_timeout=4.0, verdict_quorum="1")
    assert d.peers is not None and d.peers.verified == 3
    assert {r.status.role for r in d.peers.results if r.status} == {"agent"}
    # Nobody is left who may ask: the answer window has nothing to wait for.
    assert gather.may_still_ask(set(NAMES[1:]), d.peers) == set()
    assert (
        "answered 0 of 0 peers that may ask (0 receipted; 3 run their normal OS or have decided)"
        in (caplog.text)
    )


def test_payloads_that_have_decided_are_not_waited_for(fleet: dict[str, Host], caplog: Any) -> None:
    """The peers answer as payloads that will not ask (`agent --role boot`: no rounds of
    its own, as a payload after its verdict): their attested `asking: false` settles
    them, and nobody is left to wait for after the round."""
    boot(fleet, cut=set(NAMES))
    write_inventory(fleet)
    for n in ("p1", "p2", "p3"):
        fleet[n].start_agent(role="boot")
    caplog.set_level(logging.INFO)
    # Quorum 3: no answer settles the verdict before all three have answered.
    d = run_self(fleet, verdict_quorum="3")
    assert str(d.verdict.kind) == "correlated-failure", d.verdict.reasons
    assert d.peers is not None and d.peers.verified == 3
    said = {r.peer_id: (r.status.role, r.status.asking) for r in d.peers.results if r.status}
    assert said == {p: ("boot", False) for p in NAMES[1:]}
    assert gather.may_still_ask(set(NAMES[1:]), d.peers) == set()
    assert (
        "answered 0 of 0 peers that may ask (0 receipted; 3 run their normal OS or have decided)"
        in (caplog.text)
    )


def test_normal_os_claiming_boot_is_not_believed(fleet: dict[str, Host]) -> None:
    """Issue 9: root in a peer's normal OS (its payload extended the lock PCR) runs its
    own responder with the AK and claims "boot, abnormal": rejected (role-mismatch), so
    it cannot vote. The same peers answering as agents are verified, but unaffected."""
    boot(fleet, cut=set(NAMES))
    write_inventory(fleet)
    fleet["p1"].start_agent(role="boot")  # in its payload: lock PCR at reset
    for n in ("p2", "p3"):
        fleet[n].extend_lock_pcr()
    fleet["p2"].start_agent(role="boot")  # the lie
    fleet["p3"].start_agent(role="agent")  # the truth: abnormal, but from the normal OS
    # Quorum 50% of 3 = 2: no answer settles the verdict before all three are in.
    d = run_self(fleet)
    assert d.peers is not None
    got = {r.peer_id: r for r in d.peers.results}
    assert got["p1"].outcome is Outcome.VERIFIED
    assert got["p2"].outcome is Outcome.ROLE_MISMATCH, got["p2"]
    assert "lock PCR 15 is extended" in got["p2"].reason
    assert got["p3"].outcome is Outcome.VERIFIED and got["p3"].status is not None
    assert got["p3"].status.summary == "abnormal" and got["p3"].status.role == "agent"
    counts = d.verdict.counts
    assert (counts["same_event"], counts["normal_os"], counts["unverified"]) == (1, 1, 1)
    # p1 alone (p2's lie discarded, p3 unaffected) cannot make it correlated.
    assert str(d.verdict.kind) == "undetermined", d.verdict.reasons


class LosingProxy:
    """A loopback TCP proxy that delivers the first ``lose`` requests to the upstream
    and throws the upstream's answers away (the requester sees its connection closed):
    answers lost in transit. With ``hold``, the answers it passes on wait until that
    event is set (at most a minute): a peer that answers later than the others."""

    def __init__(self, upstream: int, lose: int, hold: threading.Event | None = None) -> None:
        self.upstream, self.lose, self.hold = upstream, lose, hold
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(
                target=self._pipe, args=(client, self.connections <= self.lose), daemon=True
            ).start()

    def _pipe(self, client: socket.socket, lose: bool) -> None:
        with client, contextlib.suppress(OSError):
            client.settimeout(10)
            up = socket.create_connection(("127.0.0.1", self.upstream), timeout=10)
            with up:

                def requests() -> None:
                    with contextlib.suppress(OSError):
                        while data := client.recv(65536):
                            up.sendall(data)

                threading.Thread(target=requests, daemon=True).start()
                while data := up.recv(65536):  # the upstream answers, then closes
                    if self.hold is not None:
                        self.hold.wait(60)
                    if not lose:
                        client.sendall(data)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()


def test_an_answer_lost_in_transit_is_given_again(fleet: dict[str, Host]) -> None:
    """Two payloads booting together; every answer 'self' gives in p1's first round is
    lost on the way. 'self' decides first; it must go on answering until p1 has been
    quiet long enough to have received an answer (p1 asks again in its next round),
    not stop at once and leave p1 asking until its verdict.wait ends, undetermined."""
    from recover.tpm import Tpm

    boot(fleet, cut=set(NAMES))
    pair = {n: fleet[n] for n in ("self", "p1")}
    # p1 retries once per round: its whole first round (2 attempts) loses its answers.
    proxy = LosingProxy(fleet["self"].port, lose=2)
    entries = {"self": {**fleet["self"].entry(), "address": f"127.0.0.1:{proxy.port}"}}
    write_inventory(pair, **entries)
    results: dict[str, Any] = {}
    done = {n: threading.Event() for n in pair}

    def payload(name: str, delay: float) -> None:
        time.sleep(delay)
        h = fleet[name]
        # p1's wait is short: without the answer it would end undetermined in 30 s.
        cfg = config.load(h.write_config(), env={}).replace(
            verdict_quorum="1", verdict_wait=30.0 if name == "p1" else 240.0
        )
        try:
            with Tpm.open(h.tpm.tcti) as t:
                results[name] = gather.run(cfg, t, serve=True, pstore_dir=str(h.root / "x"))
        finally:
            done[name].set()

    threads = [
        threading.Thread(target=payload, args=("self", 0.0), daemon=True),
        threading.Thread(target=payload, args=("p1", 0.5), daemon=True),
    ]
    try:
        for t in threads:
            t.start()
        for name in pair:
            assert done[name].wait(120), f"{name}'s gather did not end"
    finally:
        proxy.close()
    assert proxy.connections >= 3  # p1 asked again after its lost answers
    p1 = results["p1"]
    assert p1.peers is not None and p1.peers.verified == 1, p1.peers
    assert str(p1.verdict.kind) == "correlated-failure", p1.verdict.reasons
    assert str(results["self"].verdict.kind) == "correlated-failure"


def test_a_peer_answering_after_the_verdict_is_not_waited_for(
    fleet: dict[str, Host], caplog: Any
) -> None:
    """The verdict settles on two payloads' answers (quorum 2) while the third peer's
    answer is held back on its way. Its query is not cancelled: it runs on into the
    answer wait, and the answer, once let through, attests the peer's normal OS (an
    agent never asks), so the payload stops waiting for it at once instead of waiting
    up to peers.timeout (here a minute) for a request that cannot come."""
    boot(fleet, cut={"self", "p1", "p2"})
    held = threading.Event()
    proxy = LosingProxy(fleet["p3"].port, lose=0, hold=held)

    class Release(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "of the settled round still out" in record.getMessage():
                held.set()

    release = Release()
    logging.getLogger("recover").addHandler(release)
    caplog.set_level(logging.INFO)
    try:
        write_inventory(fleet, p3={**fleet["p3"].entry(), "address": f"127.0.0.1:{proxy.port}"})
        for n in ("p1", "p2"):
            fleet[n].start_agent(role="boot")  # payloads that have decided: asking false
        fleet["p3"].start_agent()
        d = run_self(fleet, verdict_quorum="2", peers_timeout=60.0, peers_deadline=60.0)
    finally:
        held.set()
        logging.getLogger("recover").removeHandler(release)
        proxy.close()
    assert str(d.verdict.kind) == "correlated-failure", d.verdict.reasons
    assert outcomes(d) == {
        "p1": Outcome.VERIFIED,
        "p2": Outcome.VERIFIED,
        "p3": Outcome.SKIPPED,  # the verdict did not wait for it
    }
    assert "1 query of the settled round still out" in caplog.text
    assert (
        "answered 0 of 0 peers that may ask (0 receipted; 3 run their normal OS or have "
        "decided); 1 of 1 late answers in, 1 of them not asking" in caplog.text
    ), caplog.text
    assert "stopped at the end of verdict.wait" not in caplog.text
