"""Webhook notifications (ledger_node.notify): a real SQLite store whose `events` table is filled
as the node's block transactions fill it, real HTTP(S) receivers on loopback ports, real state
files. No timing assertions: every wait is for a condition, with a generous deadline."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ledger_node.config import load_config
from ledger_node.errors import ConfigError, LedgerError
from ledger_node.notify import (
    MAX_EVENT_DOC,
    Answer,
    WebhookConfig,
    WebhookConfigError,
    WebhookSender,
    WebhookStateError,
    load_webhooks,
    retry_delay,
)
from ledger_node.store import Store
from trustfleet.procs import free_port

SECRET = b"insurer-secret-0123456789abcdef"
OTHER_SECRET = b"carrier-secret-0123456789abcdef"
T = 1_763_700_000_000
WAIT_S = 30.0  # an upper bound for things that happen on loopback, never a measured duration


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


# -- a receiver: http.server in a thread ------------------------------------------------------

@dataclass(frozen=True)
class Got:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def delivery(self) -> str:
        return self.headers["x-trustfleet-delivery"]


Reply = int | tuple[int, dict[str, str]]


class Receiver:
    """Records every POST, holds it until `gate` is set if `hold(got)`, then answers what
    `answer(got)` says."""

    def __init__(self, answer: Callable[[Got], Reply] = lambda got: 200, port: int = 0,
                 tls: ssl.SSLContext | None = None,
                 hold: Callable[[Got], bool] = lambda got: False) -> None:
        self.answer, self.hold = answer, hold
        self.got: list[Got] = []
        self.lock = threading.Lock()
        self.gate = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                got = Got(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with receiver.lock:
                    receiver.got.append(got)
                if receiver.hold(got):
                    receiver.gate.wait(WAIT_S)
                reply = receiver.answer(got)
                status, extra = reply if isinstance(reply, tuple) else (reply, {})
                try:
                    self.send_response(status)
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the sender gave up on this request (timeout)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def deliveries(self) -> list[str]:
        with self.lock:
            return [g.delivery for g in self.got]

    def unique(self) -> list[str]:
        """Delivery ids in first-arrival order, deduplicated as a receiver must."""
        return list(dict.fromkeys(self.deliveries()))

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(*args: Any, **kwargs: Any) -> Receiver:
        made.append(Receiver(*args, **kwargs))
        return made[-1]

    yield make
    for r in made:
        r.close()


# -- a ledger store with events, and senders ----------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "data" / "ledger.sqlite")
    yield s
    s.close()


def event_doc(idx: int, notify: list[str], event: str = "temp_excursion") -> str:
    """The doc the node writes (ledger_node.world): compact JSON with sorted keys and idx."""
    return json.dumps({"type": "contract_event", "v": 1, "contract": "cold-chain", "version": 1,
                       "event": event, "shipment": "S-1", "dev": "truck-1", "at": T + idx,
                       "cause": [idx * 10], "state": "out_of_compliance", "notify": notify,
                       "data": {"c": 9.5, "limit": 8.0, "label": "Kühlkette"}, "idx": idx},
                      sort_keys=True, separators=(",", ":"))


def add_event(store: Store, idx: int, notify: list[str] | None = None, *,
              event: str = "temp_excursion", doc: Any = None) -> None:
    """One contract-event row, committed in its own transaction as a block would."""
    if doc is None:
        doc = event_doc(idx, ["webhook:insurer"] if notify is None else notify, event)
    with store.conn:
        store.conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (idx, idx, T + idx, "cold-chain", 1, event, "S-1", "truck-1", T + idx,
                            "out_of_compliance", doc))


def ids(*idxs: int) -> list[str]:
    return [f"main/{i}" for i in idxs]


def hook(name: str, url: str, **kwargs: Any) -> WebhookConfig:
    return WebhookConfig(name, url, OTHER_SECRET if name == "carrier" else SECRET, **kwargs)


Make = Callable[..., WebhookSender]


@pytest.fixture
def make_sender(store: Store, tmp_path: Path) -> Iterator[Make]:
    made: list[WebhookSender] = []

    def make(*hooks: WebhookConfig, start: bool = True, **kwargs: Any) -> WebhookSender:
        settings: dict[str, Any] = {"poll_s": 0.05, "backoff_initial_s": 0.02,
                                    "backoff_max_s": 0.2, "seed": 7, **kwargs}
        s = WebhookSender(store.path, tmp_path / "data" / "webhooks.sqlite",
                          {h.name: h for h in hooks}, "main", "node-1", **settings)
        made.append(s)
        if start:
            s.start()
        return s

    yield make
    for s in made:
        s.stop(5)


def verify(secret: bytes, got: Got) -> bool:
    """What a receiver does (docs/webhooks.md), written here independently of the sender."""
    ts = got.headers["x-trustfleet-timestamp"]
    mac = hmac.new(secret, ts.encode() + b"." + got.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest("sha256=" + mac, got.headers["x-trustfleet-signature"])


# -- delivery -----------------------------------------------------------------------------

def test_event_arrives_signed_with_the_documented_headers_and_body(
        store: Store, make_sender: Make, receivers: Callable[..., Receiver]) -> None:
    r = receivers()
    add_event(store, 1)
    make_sender(hook("insurer", r.url()))
    wait_until(lambda: len(r.got) == 1, "one delivery")
    got = r.got[0]
    assert got.path == "/hook"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-trustfleet-event"] == "temp_excursion"
    assert got.headers["x-trustfleet-delivery"] == "main/1"
    assert abs(int(got.headers["x-trustfleet-timestamp"]) - time.time()) < 300  # replay window
    assert verify(SECRET, got)
    assert not verify(OTHER_SECRET, got)
    assert not verify(SECRET, Got(got.path, got.headers, got.body.replace(b"9.5", b"7.5")))
    assert not verify(SECRET, Got(got.path, {**got.headers, "x-trustfleet-timestamp": "1"},
                                  got.body))
    assert json.loads(got.body) == {"v": 1, "chain": "main", "node": "node-1",
                                    "delivery": "main/1",
                                    "event": json.loads(event_doc(1, ["webhook:insurer"]))}


def test_only_events_naming_the_webhook_arrive_in_log_order_also_those_added_later(
        store: Store, make_sender: Make, receivers: Callable[..., Receiver]) -> None:
    r = receivers()
    targets = [["mqtt"], ["webhook:insurer"], ["webhook:carrier"], ["mqtt", "webhook:insurer"],
               [], ["webhook:insurance"], ["webhook:carrier", "webhook:insurer"]]
    for i in range(1, 8):
        add_event(store, i, targets[i - 1])
    sender = make_sender(hook("insurer", r.url()))
    wait_until(lambda: len(r.got) >= 3, "the three stored events")
    for i in range(8, 70):  # more than one batch, written while the sender tails the table
        add_event(store, i, ["webhook:insurer"] if i % 2 else ["mqtt"])
    sender.wake()
    want = ids(2, 4, 7, *range(9, 70, 2))
    wait_until(lambda: len(r.got) >= len(want), "every event naming insurer")
    wait_until(lambda: sender.status()["insurer"]["delivered_idx"] == 69, "the cursor at the end")
    assert r.deliveries() == want
    status = sender.status()["insurer"]
    assert status["delivered"] == len(want) and status["last_delivered_idx"] == 69
    assert status["backlog"] == 0 and status["failing_since"] is None
    assert status["running"] is True


def test_receiver_down_at_first_then_up_gets_everything_once_in_order(
        store: Store, make_sender: Make, receivers: Callable[..., Receiver]) -> None:
    port = free_port()
    for i in range(1, 6):
        add_event(store, i)
    sender = make_sender(hook("insurer", f"http://127.0.0.1:{port}/hook"))
    wait_until(lambda: sender.status()["insurer"]["attempts"] >= 3, "failed attempts")
    down = sender.status()["insurer"]
    assert down["delivered_idx"] == 0 and down["pending_idx"] == 1 and down["backlog"] == 5
    assert down["failing_since"] is not None and "cannot reach" in down["last_error"]
    r = receivers(port=port)
    wait_until(lambda: r.unique() == ids(1, 2, 3, 4, 5), "all five events")
    assert r.deliveries() == ids(1, 2, 3, 4, 5)
    wait_until(lambda: sender.status()["insurer"]["backlog"] == 0, "backlog drained")
    up = sender.status()["insurer"]
    assert up["failing_since"] is None and up["last_error"] is None and up["attempts"] == 0


def test_server_errors_are_retried_until_acknowledged(
        store: Store, make_sender: Make, receivers: Callable[..., Receiver]) -> None:
    replies = iter([500, (503, {"Retry-After": "0"}), 429])
    r = receivers(lambda got: next(replies, 200))
    for i in range(1, 4):
        add_event(store, i)
    sender = make_sender(hook("insurer", r.url()))
    wait_until(lambda: len(r.got) == 6, "three failures, three deliveries")
    assert r.deliveries() == ids(1, 1, 1, 1, 2, 3)
    wait_until(lambda: sender.status()["insurer"]["delivered"] == 3, "three acknowledged")
    assert sender.status()["insurer"]["skipped"] == 0


def test_a_down_webhook_does_not_hold_up_another(
        store: Store, make_sender: Make, receivers: Callable[..., Receiver]) -> None:
    good, bad = receivers(), receivers(lambda got: 503)
    for i in range(1, 9):
        add_event(store, i, ["webhook:carrier", "webhook:insurer"])
    sender = make_sender(hook("insurer", good.url()), hook("carrier", bad.url()))
    wait_until(lambda: good.unique() == ids(*range(1, 9)), "all events at the good webhook")
    wait_until(lambda: len(bad.got) >= 3, "the bad webhook retried")
    assert set(bad.deliveries()) == {"main/1"}  # in order: nothing after the unacknowledged one
    carrier = sender.status()["carrier"]
    assert carrier["delivered"] == 0 and carrier["pending_idx"] == 1 and carrier["backlog"] == 8
    assert carrier["failing_since"] is not None and "503" in carrier["last_error"]
    assert all(verify(OTHER_SECRET, g) for g in bad.got)


def test_a_slow_webhook_times_out_and_retries_without_holding_up_another(
        store: Store, make_sender: Make, receivers: Callable[..., Receiver]) -> None:
    fast = receivers()
    slow = receivers(hold=lambda got: True)
    for i in range(1, 6):
        add_event(store, i, ["webhook:carrier", "webhook:insurer"])
    sender = make_sender(hook("insurer", fast.url()), hook("carrier", slow.url(), timeout_s=0.3))
    wait_until(lambda: fast.unique() == ids(1, 2, 3, 4, 5), "all events at the fast webhook")
    wait_until(lambda: sender.status()["carrier"]["attempts"] >= 2, "the slow one timed out")
    carrier = sender.status()["carrier"]
    assert carrier["delivered"] == 0 and "no answer within 0.3 s" in carrier["last_error"]
    slow.gate.set()  # the receiver answers at once from now on
    wait_until(lambda: slow.unique() == ids(1, 2, 3, 4, 5), "all events at the slow webhook")
    wait_until(lambda: sender.status()["carrier"]["delivered_idx"] == 5, "slow cursor at the end")


def test_a_restarted_sender_resumes_from_its_cursor_without_duplicates(
        store: Store, make_sender: Make, receivers: Callable[..., Receiver]) -> None:
    r = receivers()
    for i in range(1, 4):
        add_event(store, i)
    first = make_sender(hook("insurer", r.url()))
    wait_until(lambda: first.status()["insurer"]["delivered_idx"] == 3, "three delivered")
    assert first.stop(10) is True
    assert first.status()["insurer"]["running"] is False
    for i in range(4, 7):
        add_event(store, i)
    second = make_sender(hook("insurer", r.url()))
    assert second.status()["insurer"]["delivered_idx"] == 3  # read from the state file
    wait_until(lambda: len(r.got) >= 6, "three more")
    wait_until(lambda: second.status()["insurer"]["delivered_idx"] == 6, "cursor at 6")
    assert r.deliveries() == ids(1, 2, 3, 4, 5, 6)


def test_stop_abandons_a_request_in_flight_and_only_that_event_may_arrive_twice(
        store: Store, make_sender: Make, receivers: Callable[..., Receiver]) -> None:
    r = receivers(hold=lambda got: got.delivery == "main/2")
    for i in range(1, 5):
        add_event(store, i)
    first = make_sender(hook("insurer", r.url(), timeout_s=60))
    wait_until(lambda: "main/2" in r.deliveries(), "event 2 in flight")
    assert first.stop(0.2) is False  # its worker waits for the receiver's answer
    second = make_sender(hook("insurer", r.url(), timeout_s=60))
    wait_until(lambda: r.deliveries().count("main/2") == 2, "event 2 sent again")
    r.gate.set()
    wait_until(lambda: r.unique() == ids(1, 2, 3, 4), "everything")
    assert first.stop(WAIT_S) is True  # it recorded its answer and exited
    wait_until(lambda: second.status()["insurer"]["delivered_idx"] == 4, "cursor at 4")
    counts = Counter(r.deliveries())
    assert counts == {"main/1": 1, "main/2": 2, "main/3": 1, "main/4": 1}


def test_a_rejected_event_is_skipped_after_max_rejections_and_recorded(
        store: Store, make_sender: Make, receivers: Callable[..., Receiver]) -> None:
    r = receivers(lambda got: 422 if got.delivery == "main/2" else 200)
    for i in range(1, 5):
        add_event(store, i)
    sender = make_sender(hook("insurer", r.url(), max_rejections=3))
    wait_until(lambda: sender.status()["insurer"]["delivered_idx"] == 4, "past the rejected one")
    assert r.deliveries() == ids(1, 2, 2, 2, 3, 4)
    status = sender.status()["insurer"]
    assert status["delivered"] == 3 and status["skipped"] == 1
    assert status["last_skip"]["idx"] == 2 and status["last_skip"]["reason"] == "rejected"
    assert "HTTP 422" in status["last_skip"]["detail"]
    [skip] = sender.skips("insurer")
    assert skip["idx"] == 2 and skip["reason"] == "rejected" and "3 attempts" in skip["detail"]


def test_with_max_rejections_zero_a_rejected_event_holds_the_webhook_until_accepted(
        store: Store, make_sender: Make, receivers: Callable[..., Receiver]) -> None:
    accept = threading.Event()
    r = receivers(lambda got: 200 if accept.is_set() else 404)
    add_event(store, 1)
    add_event(store, 2)
    sender = make_sender(hook("insurer", r.url(), max_rejections=0))
    wait_until(lambda: len(r.got) >= 8, "eight rejections")
    assert set(r.deliveries()) == {"main/1"}
    accept.set()
    wait_until(lambda: r.unique() == ids(1, 2), "both, once accepted")
    assert sender.status()["insurer"]["skipped"] == 0


def test_redirects_are_not_followed_but_retried(
        store: Store, make_sender: Make, receivers: Callable[..., Receiver]) -> None:
    r = receivers(lambda got: (307, {"Location": "/elsewhere"}))
    add_event(store, 1)
    sender = make_sender(hook("insurer", r.url()))
    wait_until(lambda: sender.status()["insurer"]["attempts"] >= 3, "retries")
    assert {g.path for g in r.got} == {"/hook"}
    assert "HTTP 307" in sender.status()["insurer"]["last_error"]


def test_hostile_event_rows_are_skipped_with_a_reason_and_the_worker_lives_on(
        store: Store, make_sender: Make, receivers: Callable[..., Receiver]) -> None:
    r = receivers()
    huge = json.dumps({"notify": ["webhook:insurer"], "pad": "x" * MAX_EVENT_DOC})
    add_event(store, 1)
    add_event(store, 2, doc="not json {")
    add_event(store, 3, doc=huge)
    add_event(store, 4, doc="[1, 2]")
    add_event(store, 5, doc='{"notify": "webhook:insurer"}')
    add_event(store, 6, doc='{"notify": ["webhook:insurer"], "c": NaN}')
    add_event(store, 7, event="x\r\nX-Evil: 1")
    add_event(store, 8, doc=b"\xff\xfe\x00")
    add_event(store, 9, doc="[" * 200_000)
    add_event(store, 10)
    sender = make_sender(hook("insurer", r.url()))
    wait_until(lambda: sender.status()["insurer"]["delivered_idx"] == 10, "past every row")
    assert r.deliveries() == ids(1, 10)
    status = sender.status()["insurer"]
    assert status["running"] is True and status["skipped"] == 8
    reasons = {s["idx"]: s["reason"] for s in sender.skips("insurer")}
    assert reasons == {2: "bad_json", 3: "too_large", 4: "not_object", 5: "bad_notify",
                       6: "bad_json", 7: "bad_event_name", 8: "bad_json", 9: "bad_json"}
    add_event(store, 11)
    wait_until(lambda: r.deliveries() == ids(1, 10, 11), "still tailing")


# -- https --------------------------------------------------------------------------------

def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = folder / "receiver.pem", folder / "receiver.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_https_receiver_is_verified_against_ca_file_and_an_untrusted_one_is_refused(
        store: Store, make_sender: Make, receivers: Callable[..., Receiver],
        tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path / "tls")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    r = receivers(tls=ctx)
    url = f"https://127.0.0.1:{r.port}/hook"
    add_event(store, 1, ["webhook:carrier", "webhook:insurer"])
    sender = make_sender(hook("insurer", url, ca_file=cert), hook("carrier", url))
    wait_until(lambda: r.deliveries() == ids(1), "delivery over verified TLS")
    wait_until(lambda: sender.status()["carrier"]["attempts"] >= 2, "untrusted retried")
    assert "CERTIFICATE_VERIFY_FAILED" in sender.status()["carrier"]["last_error"]
    assert r.deliveries() == ids(1)  # nothing reached the receiver from the untrusted client


# -- the sender's own settings and state --------------------------------------------------

def test_state_of_another_chain_and_bad_sender_settings_are_refused(
        store: Store, make_sender: Make, tmp_path: Path) -> None:
    make_sender(hook("insurer", "http://127.0.0.1:9/hook"), start=False)
    with pytest.raises(WebhookStateError, match="belongs to chain 'main'"):
        WebhookSender(store.path, tmp_path / "data" / "webhooks.sqlite", {}, "other", "node-1")
    with pytest.raises(WebhookConfigError, match="chain"):
        WebhookSender(store.path, tmp_path / "w2.sqlite", {}, "bad\nchain", "node-1")
    with pytest.raises(WebhookConfigError, match="configured as"):
        WebhookSender(store.path, tmp_path / "w3.sqlite",
                      {"a": hook("insurer", "http://127.0.0.1:9/")}, "main", "node-1")
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(WebhookStateError, match="cannot open webhook state"):
        WebhookSender(store.path, tmp_path / "dir.sqlite", {}, "main", "node-1")


def test_status_before_start_and_without_a_store(tmp_path: Path) -> None:
    sender = WebhookSender(tmp_path / "missing.sqlite", tmp_path / "w.sqlite",
                           {"insurer": hook("insurer", "https://insurer.example/h?token=x")},
                           "main", "node-1")
    status = sender.status()["insurer"]
    assert status["url"] == "https://insurer.example/h"  # the query may hold a token
    assert status["backlog"] is None and status["running"] is False
    assert status["delivered_idx"] == 0
    assert sender.stop(1) is True


@pytest.mark.parametrize("failures, rand, want", [
    (1, 0.0, 0.5), (1, 0.999999, 1.0), (2, 0.0, 1.0), (4, 0.5, 6.0), (9, 0.0, 128.0),
    (30, 0.999999, 300.0), (10_000, 0.0, 150.0),
])
def test_retry_delay_doubles_with_equal_jitter_up_to_the_cap(failures: int, rand: float,
                                                             want: float) -> None:
    assert retry_delay(failures, rand, 1.0, 300.0) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("status, outcome", [
    (200, "delivered"), (204, "delivered"), (301, "retry"), (400, "rejected"), (401, "rejected"),
    (404, "rejected"), (408, "retry"), (422, "rejected"), (429, "retry"), (500, "retry"),
    (503, "retry"), (None, "retry"),
])
def test_answers_are_classified(status: int | None, outcome: str) -> None:
    assert Answer(status).outcome == outcome


def test_webhook_config_hides_its_secret() -> None:
    assert SECRET.decode() not in repr(hook("insurer", "https://insurer.example/h"))


# -- the webhooks file --------------------------------------------------------------------

def test_webhooks_file_loads_with_secret_file_and_secret_env(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "insurer.secret").write_bytes(SECRET + b"\n")
    cfg = tmp_path / "webhooks.toml"
    cfg.write_text('# partners\n'
                   '[webhooks.insurer]\n'
                   'url = "https://insurer.example/hooks/trustfleet"\n'
                   'secret_file = "secrets/insurer.secret"   # relative to this file\n'
                   'timeout_s = 3\n'
                   '\n'
                   '[webhooks."carrier.eu"]\n'
                   'url = "http://127.0.0.1:8099/in"\n'
                   'secret_env = "CARRIER_SECRET"\n'
                   'max_rejections = 0\n')
    hooks = load_webhooks(cfg, {"CARRIER_SECRET": " " + OTHER_SECRET.decode() + "\n"})
    assert sorted(hooks) == ["carrier.eu", "insurer"]
    assert hooks["insurer"].secret == SECRET and hooks["insurer"].timeout_s == 3.0
    assert hooks["insurer"].url == "https://insurer.example/hooks/trustfleet"
    assert hooks["carrier.eu"].secret == OTHER_SECRET
    assert hooks["carrier.eu"].max_rejections == 0 and hooks["carrier.eu"].timeout_s == 10.0


GOOD = '[webhooks.insurer]\nurl = "https://insurer.example/h"\nsecret_file = "s"\n'


@pytest.mark.parametrize("text, message", [
    (GOOD + "retries = 3\n", "line 4: [webhooks.insurer] unknown setting 'retries'"),
    ('[webhooks.insurer]\nsecret_file = "s"\n', "[webhooks.insurer] has no url"),
    (GOOD.replace("https:", "ftp:"), "line 2: [webhooks.insurer] url 'ftp://insurer.example/h'"
                                     " must be http:// or https://"),
    (GOOD.replace("https://", "https://u:p@"), "line 2: [webhooks.insurer] url must not carry"),
    (GOOD.replace('"https://insurer.example/h"', '"https://[::1"'), "line 2"),
    (GOOD.replace('"s"', '"missing"'), "line 3: [webhooks.insurer] secret_file"),
    (GOOD.replace('"s"', '"short"'), "line 3: [webhooks.insurer] secret from short: the secret "
                                     "is 5 bytes; it must be 16"),
    (GOOD.replace('secret_file = "s"', 'secret_env = "NOPE"'), "variable NOPE is not set"),
    (GOOD + 'secret_env = "INSURER_SECRET"\n', "needs exactly one of secret_file and secret_env"),
    ('[webhooks.insurer]\nurl = "https://insurer.example/h"\n', "needs exactly one"),
    (GOOD + "timeout_s = 0\n", "line 4: [webhooks.insurer] timeout_s must be between"),
    (GOOD + 'timeout_s = "10"\n', "timeout_s has the wrong type"),
    (GOOD + "max_rejections = -1\n", "max_rejections must be between"),
    (GOOD + 'ca_file = "nope.pem"\n', "line 4: [webhooks.insurer] ca_file"),
    (GOOD.replace("webhooks.insurer", "webhooks.Insurer"), "line 1: [webhooks.Insurer] webhook "
                                                          "name 'Insurer' must match"),
    ('[webhooks]\ninsurer = "https://insurer.example/h"\n', "[webhooks.insurer] must be a table"),
    ("[node]\nchain = 'main'\n" + GOOD, "unknown table or key 'node'"),
    ("", "no [webhooks.NAME] table"),
    ('[webhooks.insurer]\nurl = "https://insurer.example/h\n', "line 2"),
    ("[webhooks.insurer]\nurl = https\n", "(at line 2, column 7)"),
])
def test_bad_webhooks_files_get_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "s").write_bytes(SECRET)
    (tmp_path / "short").write_bytes(b"abcde\n")
    cfg = tmp_path / "webhooks.toml"
    cfg.write_text(text)
    with pytest.raises(WebhookConfigError) as caught:
        load_webhooks(cfg, {})
    assert str(caught.value).startswith(str(cfg))
    assert message in str(caught.value)
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, LedgerError)


def test_unreadable_and_binary_webhooks_files_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(WebhookConfigError, match=r"missing\.toml: cannot read"):
        load_webhooks(tmp_path / "missing.toml", {})
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe[webhooks]\n")
    with pytest.raises(WebhookConfigError, match=r"bin\.toml"):
        load_webhooks(tmp_path / "bin.toml", {})
    (tmp_path / "dir.secret").mkdir()
    cfg = tmp_path / "w.toml"
    cfg.write_text(GOOD.replace('"s"', '"dir.secret"'))
    with pytest.raises(WebhookConfigError, match=r"line 3.*cannot read: Is a directory"):
        load_webhooks(cfg, {})


def test_node_config_takes_a_webhooks_file_that_must_exist(tmp_path: Path) -> None:
    hooks = tmp_path / "webhooks.toml"
    hooks.write_text(GOOD)
    node = tmp_path / "node.toml"
    node.write_text(f'[node]\nwebhooks_file = "{hooks}"\n')
    assert load_config(node).webhooks_file == hooks
    assert load_config(None).webhooks_file is None
    with pytest.raises(ConfigError, match=r"webhooks_file .*missing\.toml is not a file"):
        load_config(None, webhooks_file=tmp_path / "missing.toml")
