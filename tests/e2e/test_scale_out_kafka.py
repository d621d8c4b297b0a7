"""Scale-out on Kafka, proven here: the whole bank as separate processes, two replicas of every service.

The bank runs as a container platform would run it (deploy/k8s): every service is `bank serve NAME` in
its own OS process on the Kafka transport, against one PostgreSQL and the session's Kafka broker. Every
service but the gateway runs twice, on two ports; a round-robin TCP balancer (tests/deploy/balancer.py,
standing in for a Kubernetes Service) puts each pair behind one URL, which is the `BANK_<NAME>_URL` the
other services and the gateway are given. The card network sends authorisations through the gateway.

What it shows:
* each consumer group of the code (whatever `Runtime.consumer` registers) has both replicas as members
  and its topics' partitions are split between them, disjoint and complete (Kafka's admin API);
* SIGKILL of one replica of every service under open-loop load: the survivor takes all the partitions
  of every group, cards and accounts keep answering through the balancer, and after the network has
  re-sent what got no answer (same network transaction id, as a real network does) every authorisation
  is recorded exactly once, every approval has exactly one hold and every active hold an approval,
  every event a consumer handles is in its inbox exactly once (none lost, none twice), nothing is
  dead-lettered, every group's committed offsets reach the end of the log, and `bank ledger verify`
  passes;
* authorisations/s through the gateway (closed loop) with two replicas, then with one: printed, never
  asserted (2 shared cores: expect little difference).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import pytest
from kafka import KafkaAdminClient, TopicPartition

from bank.infra.kafka import KafkaBroker
from bank.infra.ports import free_port
from bank.infra.postgres import EmbeddedPostgres
from shared import topics
from shared.config import SERVICES, BankSettings, to_libpq
from tests.support.database import migrated_database

pytestmark = pytest.mark.kafka
T = TypeVar("T")

REPLICATED = tuple(s for s in SERVICES if s != "gateway")
NETWORK_KEY = "scale-out-network-key"
INTERNAL_TOKEN = "scale-out-internal-token"
CUSTOMERS = 24
TOPUP = 200_000  # £2,000 each: some declines for funds late in the run, never a shortage of approvals
OPEN_LOOP_RATE = 20.0  # authorisations/s
OPEN_LOOP_SECONDS = 12.0
KILL_AFTER_SECONDS = 4.0
MEASURE_SECONDS = 6.0
MEASURE_CONNECTIONS = 12
DEFINITIVE = re.compile(rb'"response_code":\s*"(\d\d)"')
WAIT = 120.0  # the longest any condition below may take to come true before the test fails


# -- processes -------------------------------------------------------------------------------------------


@dataclass
class Replica:
    service: str
    index: int
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, env: dict[str, str]) -> None:
        own = dict(env, **{f"BANK_{self.service.upper()}_URL": self.url})  # the port `bank serve` binds
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bank.cli", "serve", self.service],
                env=own,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # a crash, not a graceful leave: the group notices by the session timeout
        self.proc.wait(30)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def wait_until(
    what: str,
    condition: Callable[[], bool],
    procs: list[Replica],
    timeout: float = WAIT,
    explain: Callable[[], str] | None = None,
) -> None:
    """Poll `condition` until it holds; fail naming `what` (and any replica that died, and what
    `explain` says about the state it was stuck in) if it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        dead = [
            r for r in procs if r.proc is not None and r.proc.poll() is not None and r.proc.returncode > 0
        ]
        if dead:
            raise AssertionError(f"{dead[0].service}#{dead[0].index} exited:\n{dead[0].tail()}")
        if time.monotonic() > deadline:
            detail = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(f"not true after {timeout:.0f}s: {what}{detail}")
        threading.Event().wait(0.25)  # the poll interval; nothing is asserted on time


def ready(replica: Replica) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{replica.url}/readyz", timeout=2).status_code == 200
    return False


# -- what the code says consumes what -------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    name: str
    service: str
    topics: tuple[str, ...]
    event_types: tuple[str, ...]


def consumer_groups(settings: BankSettings) -> list[Group]:
    """Every consumer group the services register, read off their apps (nothing is started)."""
    from shared.runtime import Runtime

    groups = []
    for service in REPLICATED:
        runtime = Runtime(service, settings)
        importlib.import_module(f"services.{service}.app").create_app(runtime)
        for consumer in runtime.consumers:
            groups.append(Group(consumer.name, service, tuple(consumer.topics), tuple(consumer.handlers)))
    return groups


# -- Kafka's view ----------------------------------------------------------------------------------------


def _field(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)


def members(admin: KafkaAdminClient, group: str) -> dict[str, set[tuple[str, int]]]:
    """member id -> the (topic, partition)s assigned to it, as the group coordinator reports them."""
    described = admin.describe_groups([group])[group]
    out: dict[str, set[tuple[str, int]]] = {}
    for member in described.get("members", []):
        assignment = member.get("member_assignment")
        owned: set[tuple[str, int]] = set()
        if assignment:
            for entry in _field(assignment, "assigned_partitions"):
                topic = _field(entry, "topic")
                owned.update((topic, p) for p in _field(entry, "partitions"))
        out[member["member_id"]] = owned
    return out


def stuck_group(admin: KafkaAdminClient, group: Group, replicas: list[Replica]) -> str:
    """What the coordinator says about a group that will not settle, and what its replicas logged."""
    try:
        described = repr(admin.describe_groups([group.name])[group.name])[:3000]
    except Exception as exc:  # the explanation must not hide the failure it explains
        described = f"describe_groups failed: {exc!r}"
    logs = "\n".join(f"--- {r.service}#{r.index} log tail:\n{r.tail()}" for r in replicas)
    return f"group {group.name} as the coordinator describes it: {described}\n{logs}"


def all_partitions(admin: KafkaAdminClient, topics: tuple[str, ...]) -> set[tuple[str, int]]:
    found: set[tuple[str, int]] = set()
    for meta in admin.describe_topics(list(topics)):
        topic = meta.get("name", meta.get("topic"))  # kafka-python 3 names fields as the protocol does
        found.update((topic, p.get("partition_index", p.get("partition"))) for p in meta["partitions"])
    return found


def committed_at_end(admin: KafkaAdminClient, bootstrap: str, group: Group) -> bool:
    from kafka import KafkaConsumer

    committed = admin.list_group_offsets({group.name: None}).get(group.name, {})
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(t, p) for t, p in all_partitions(admin, group.topics)]
        ends = consumer.end_offsets(partitions)
    finally:
        consumer.close()
    return all(ends[tp] == 0 or (tp in committed and committed[tp].offset >= ends[tp]) for tp in partitions)


def _group_name(listed: Any) -> str:
    """kafka-python lists groups as (id, protocol) tuples in 2.x and as dicts in 3.x."""
    if isinstance(listed, tuple):
        return str(listed[0])
    if isinstance(listed, dict):
        for key in ("group_id", "group", "groupId", "GroupId"):
            if key in listed:
                return str(listed[key])
    return str(listed)


def forget_bank_topics(admin: KafkaAdminClient, topics: set[str], groups: list[Group]) -> None:
    """The session broker is shared: start from no bank topics and no committed offsets of these groups."""
    existing = {_group_name(x) for x in admin.list_groups()}
    stale_groups = [g.name for g in groups if g.name in existing]
    if stale_groups:
        admin.delete_groups(stale_groups)
    stale = sorted(topics & set(admin.list_topics()))
    if stale:
        admin.delete_topics(stale)
        wait_until("old bank topics deleted", lambda: not (set(stale) & set(admin.list_topics())), [])


# -- the card network ------------------------------------------------------------------------------------


@dataclass
class Card:
    account_id: str
    pan: str
    expiry: str  # YYMM
    cvc: str


@dataclass
class Network:
    """The card network: authorisations to the gateway over lean keep-alive HTTP/1.1 connections."""

    port: int
    cards: list[Card]
    sent: dict[str, bytes] = field(default_factory=dict)  # network transaction id -> message
    answers: dict[str, list[str]] = field(default_factory=dict)  # id -> each answer, in order
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(default_factory=list)
    seq: int = 0

    def new_message(self) -> tuple[str, bytes]:
        self.seq += 1
        card = random.choice(self.cards)
        nid = f"SCALE{os.getpid()}N{self.seq}"
        body = json.dumps({
            "mti": "0100", "pan": card.pan, "expiry": card.expiry, "cvc": card.cvc,
            "processing_code": "000000", "amount": random.randint(100, 2_000), "currency": "GBP",
            "stan": f"{self.seq % 1_000_000:06d}", "rrn": f"{self.seq:012d}",
            "transmission_time": datetime.now(UTC).isoformat(), "network_transaction_id": nid,
            "merchant": {"id": "BB0001", "name": "BRIGHTBIRD ESPRESSO", "mcc": "5814", "city": "London",
                         "country": "GB", "postcode": "N1 3JD"},
        }).encode()  # fmt: skip
        self.sent[nid] = body
        return nid, body

    async def _post(self, body: bytes) -> tuple[int, bytes]:
        reader, writer = (
            self.idle.pop() if self.idle else await asyncio.open_connection("127.0.0.1", self.port)
        )
        head = (
            f"POST /network/authorisations HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"x-network-key: {NETWORK_KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        try:
            writer.write(head + body)
            status_line = await reader.readuntil(b"\r\n")
            length, close = 0, False
            while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
                elif name.strip().lower() == b"connection" and b"close" in value.lower():
                    close = True
            payload = await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        if close:
            writer.close()
        else:
            self.idle.append((reader, writer))
        return int(status_line.split()[1]), payload

    async def send(self, nid: str) -> str:
        try:
            status, payload = await self._post(self.sent[nid])
            match = DEFINITIVE.search(payload) if status == 200 else None
            answer = match.group(1).decode() if match else f"http_{status}"
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            answer = type(exc).__name__
        self.answers.setdefault(nid, []).append(answer)
        return answer

    def last(self, nid: str) -> str:
        return self.answers[nid][-1]

    def unanswered(self) -> list[str]:
        return [nid for nid in self.sent if not self.last(nid).isdigit()]

    async def open_loop(self, rate: float, seconds: float, at: float, action: Callable[[], None]) -> None:
        """Request k is due at start + k/rate whether or not earlier ones have answered."""
        loop = asyncio.get_running_loop()
        start, tasks, acted = loop.time(), [], False
        for k in range(int(rate * seconds)):
            due = start + k / rate
            if not acted and due - start >= at:
                action()
                acted = True
            await asyncio.sleep(max(0.0, due - loop.time()))
            tasks.append(asyncio.create_task(self.send(self.new_message()[0])))
        await asyncio.gather(*tasks)

    async def closed_loop(self, connections: int, seconds: float) -> float:
        """Definitive answers per second from `connections` back-to-back senders."""
        loop = asyncio.get_running_loop()
        end, done = loop.time() + seconds, 0

        async def sender() -> None:
            nonlocal done
            while loop.time() < end:
                if (await self.send(self.new_message()[0])).isdigit():
                    done += 1

        began = loop.time()
        await asyncio.gather(*(sender() for _ in range(connections)))
        return done / (loop.time() - began)

    async def resend_unanswered(self, rounds: int = 40) -> None:
        """What a network does with a message that got no answer: send it again, same id."""
        for _ in range(rounds):
            pending = self.unanswered()
            if not pending:
                return
            await asyncio.gather(*(self.send(nid) for nid in pending))
            if self.unanswered():
                await asyncio.sleep(0.5)

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run one phase in its own event loop; its connections close with it."""

        async def phase() -> T:
            try:
                return await work
            finally:
                for _, writer in self.idle:
                    writer.close()
                self.idle.clear()

        return asyncio.run(phase())


def new_customer(accounts: str, cards: str, i: int) -> Card:
    email = f"scale{i}-{secrets.token_hex(3)}@example.com"
    with httpx.Client(timeout=30) as http:
        r = http.post(
            f"{accounts}/users", data={"email": email, "password": "correct horse", "name": f"C {i}"}
        )
        assert r.status_code == 201, r.text
        account_id = r.json()["account"]["id"]
        r = http.post(
            f"{accounts}/oauth2/token",
            data={"grant_type": "password", "client_id": "oauthclient_mondo_app",
                  "username": email, "password": "correct horse"},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
        r = http.post(
            f"{accounts}/topup",
            data={"account_id": account_id, "amount": str(TOPUP), "currency": "GBP"},
            headers={**auth, "Idempotency-Key": f"topup-{i}"},
        )
        assert r.status_code == 201, r.text
        r = http.post(f"{cards}/cards", data={"account_id": account_id}, headers=auth)
        assert r.status_code == 201, r.text
        card = r.json()["card"]
        month, year = card["expiry"].split("/")
        return Card(account_id, card["pan"], year[-2:] + month, card["cvc"])


# -- the test --------------------------------------------------------------------------------------------


@pytest.fixture
def scale_db(pg_server: EmbeddedPostgres) -> Iterator[str]:
    with migrated_database(pg_server, "bank_scale") as url:
        yield url


def step(what: str) -> None:
    """Progress on stdout (pytest -s): where a slow or failing run was."""
    print(f"[scale-out {time.strftime('%H:%M:%S')}] {what}", flush=True)


def rows(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(to_libpq(url), autocommit=True) as conn:
        return conn.execute(sql, args).fetchall()


def test_two_replicas_share_partitions_and_survive_a_kill(
    kafka_broker: KafkaBroker, scale_db: str, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap
    settings = BankSettings(database_url=scale_db, transport="kafka", kafka_bootstrap=bootstrap)
    groups = consumer_groups(settings)
    bank_topics = {t for g in groups for t in g.topics} | set(topics.ALL)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="scale-out-test")
    forget_bank_topics(admin, bank_topics, groups)

    replicas = {
        s: [Replica(s, i, free_port(), tmp_path / f"{s}-{i}.log") for i in (1, 2)] for s in REPLICATED
    }
    gateway = Replica("gateway", 1, free_port(), tmp_path / "gateway-1.log")
    fronts = {s: free_port() for s in REPLICATED}  # the balancer's port per service: its "Service"
    everyone = [gateway, *(r for pair in replicas.values() for r in pair)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BANK_", "DATABASE_URL"))}
    env.update(
        BANK_DATABASE_URL=scale_db, BANK_TRANSPORT="kafka", BANK_KAFKA_BOOTSTRAP=bootstrap,
        BANK_LOG_LEVEL="WARNING", BANK_LOG_JSON="false", BANK_DB_POOL_SIZE="4",
        BANK_RELAY_POLL_SECONDS="0.1", BANK_INTERNAL_TOKEN=INTERNAL_TOKEN, BANK_GATEWAY_URL=gateway.url,
        GATEWAY_NETWORK_API_KEY=NETWORK_KEY, CARDS_NETWORK_API_KEY=NETWORK_KEY,
        # No push provider in this test (no devices are registered): a closed port, never the internet.
        NOTIFICATIONS_APNS_URL="http://127.0.0.1:9", NOTIFICATIONS_FCM_URL="http://127.0.0.1:9",
        NOTIFICATIONS_FCM_TOKEN_URI="http://127.0.0.1:9/token",
        **{f"BANK_{s.upper()}_URL": f"http://127.0.0.1:{port}" for s, port in fronts.items()},
    )  # fmt: skip
    balancer = subprocess.Popen(
        [sys.executable, "-m", "tests.deploy.balancer"]
        + [f"{fronts[s]}=" + ",".join(f"127.0.0.1:{r.port}" for r in replicas[s]) for s in REPLICATED],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert balancer.stdout is not None and balancer.stdout.readline().strip() == "ready"
        for replica in everyone[1:]:
            replica.start(env)
        step("starting two replicas of every service")
        wait_until("every replica ready", lambda: all(ready(r) for r in everyone[1:]), everyone)
        gateway.start(env)
        wait_until("the gateway ready", lambda: ready(gateway), everyone)

        step("every service ready; checking the consumer groups")
        # 1. Both replicas of every group hold partitions: disjoint, and together all of them.
        for group in groups:
            wanted = all_partitions(admin, group.topics)

            def shared(group: Group = group, wanted: set[tuple[str, int]] = wanted) -> bool:
                owned = members(admin, group.name)
                return (
                    len(owned) == 2
                    and all(owned.values())
                    and set.union(*owned.values()) == wanted
                    and sum(map(len, owned.values())) == len(wanted)
                )

            def explain(group: Group = group) -> str:
                return stuck_group(admin, group, replicas[group.service])

            wait_until(
                f"{group.name}'s partitions split between its two replicas", shared, everyone, explain=explain
            )
        print(f"\nconsumer groups, each split over two replicas: {[g.name for g in groups] or 'none yet'}")

        front = {s: f"http://127.0.0.1:{port}" for s, port in fronts.items()}
        cards = [new_customer(front["accounts"], front["cards"], i) for i in range(CUSTOMERS)]
        network = Network(gateway.port, cards)

        step(f"{CUSTOMERS} customers with a card; measuring, then the kill under load")
        # 2. Throughput with two replicas, then open-loop load during which one replica of each dies.
        two = network.run(network.closed_loop(MEASURE_CONNECTIONS, MEASURE_SECONDS))
        killed = [pair[1] for pair in replicas.values()]

        def kill_one_of_each() -> None:
            for replica in killed:
                replica.kill()

        network.run(
            network.open_loop(OPEN_LOOP_RATE, OPEN_LOOP_SECONDS, KILL_AFTER_SECONDS, kill_one_of_each)
        )
        during = sum(1 for nid in network.sent if not network.answers[nid][0].isdigit())

        step("load done; waiting for the survivors to own every partition")
        # 3. The survivor owns every partition of every group.
        for group in groups:
            wanted = all_partitions(admin, group.topics)

            def taken_over(group: Group = group, wanted: set[tuple[str, int]] = wanted) -> bool:
                owned = members(admin, group.name)
                return len(owned) == 1 and set.union(*owned.values()) == wanted

            wait_until(f"{group.name}'s partitions all moved to the surviving replica", taken_over, everyone)

        one = network.run(network.closed_loop(MEASURE_CONNECTIONS, MEASURE_SECONDS))
        network.run(network.resend_unanswered())
        print(
            f"authorisations/s through the gateway (closed loop, {MEASURE_CONNECTIONS} connections, "
            f"{MEASURE_SECONDS:.0f}s): two replicas of cards+accounts {two:.0f}/s, one {one:.0f}/s; "
            f"{during} of {len(network.sent)} got no answer the first time around the kill "
            f"(answers: {sorted({a for v in network.answers.values() for a in v})})"
        )
        assert network.unanswered() == [], "some authorisations never got an answer from the survivors"

        step("every message answered; checking authorisations and holds")
        # 4. Effects: every authorisation once, every approval one hold, every active hold an approval.
        sent = list(network.sent)
        recorded = dict(
            rows(scale_db, "SELECT network_transaction_id, response_code FROM cards.authorisations "
                           "WHERE network_transaction_id = ANY(%s)", sent)
        )  # fmt: skip
        assert len(recorded) == len(sent), f"{len(sent) - len(recorded)} authorisations were not recorded"
        wrong = {
            nid: (network.answers[nid], recorded[nid]) for nid in sent if network.last(nid) != recorded[nid]
        }
        assert wrong == {}, "the answer the network got differs from the one recorded"
        approved = {nid for nid in sent if recorded[nid] == "00"}
        assert approved, "no authorisation was approved"
        holds = rows(
            scale_db,
            "SELECT h.network_txn_id, count(*) FROM accounts.holds h WHERE h.network_txn_id = ANY(%s) "
            "AND h.status = 'active' GROUP BY 1",
            sent,
        )
        assert all(n == 1 for _, n in holds)
        assert {nid for nid, _ in holds} >= approved, "an approval without its hold"

        def no_orphan_holds() -> bool:
            active = {
                r[0]
                for r in rows(scale_db, "SELECT network_txn_id FROM accounts.holds WHERE status = 'active'")
            }
            return active == approved

        # A hold placed for an answer that timed out (91) is released by cards' compensation job.
        wait_until("every active hold belongs to an approval", no_orphan_holds, everyone)
        events = rows(
            scale_db,
            "SELECT count(*) FROM cards.outbox WHERE event_type = 'card.authorisation.approved'",
        )[0][0]
        assert events == len(approved), "one card.authorisation.approved event per approval, exactly"

        step("checking outboxes, inboxes and committed offsets")
        # 5. Events: every one published, every handled one in its consumer's inbox exactly once.
        unions = " UNION ALL ".join(
            f"SELECT event_id, topic, event_type, published_at FROM {s}.outbox" for s in REPLICATED
        )

        def outbox_published() -> bool:
            return rows(scale_db, f"SELECT count(*) FROM ({unions}) o WHERE published_at IS NULL")[0][0] == 0

        wait_until("every outbox row published", outbox_published, everyone)
        for group in groups:

            def caught_up(group: Group = group) -> bool:
                expected = rows(
                    scale_db,
                    f"SELECT count(*) FROM ({unions}) o WHERE topic = ANY(%s) AND event_type = ANY(%s)",
                    list(group.topics), list(group.event_types),
                )[0][0]  # fmt: skip
                inbox = rows(scale_db, f"SELECT count(*) FROM {group.service}.inbox WHERE consumer = %s",
                             group.name)[0][0]  # fmt: skip
                assert inbox <= expected, f"{group.name} has more inbox rows than events"
                return bool(inbox == expected) and outbox_published()

            wait_until(f"{group.name} handled every event of {group.topics} once", caught_up, everyone)
            wait_until(
                f"{group.name} committed to the end of its partitions",
                lambda group=group: committed_at_end(admin, bootstrap, group),  # type: ignore[misc]
                everyone,
            )
            letters = rows(scale_db, f"SELECT count(*) FROM {group.service}.dead_letters WHERE consumer = %s",
                           group.name)[0][0]  # fmt: skip
            assert letters == 0, f"{group.name} dead-lettered {letters} events"

        step("bank ledger verify")
        verify = subprocess.run(
            [sys.executable, "-m", "bank.cli", "ledger", "verify"],
            env=dict(env, BANK_DATABASE_URL=scale_db), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert all(pair[0].alive() for pair in replicas.values()) and gateway.alive()
    finally:  # every process this test started ends with it, whatever failed above
        for replica in everyone:
            with contextlib.suppress(Exception):
                replica.stop()
        balancer.kill()
        balancer.wait(10)
        admin.close()
