"""The fleet dashboard in a real browser: Debian's headless Chromium (/usr/bin/chromium; never
a downloaded one) driven by Playwright, against a real fleet that `trustfleet up` starts for
the module (broker with TLS, SoftHSM, a ledger node, two emulated trucks playing
firmware_shims/scenarios/dashboard-excursion.yaml).

Every page test records the browser's console, its requests and failed requests, and asserts
that nothing went to a host other than loopback and nothing logged an error. Screenshots go
to tests/artifacts/dashboard-*.png; with TF_UPDATE_DOCS_SCREENSHOT=1 the map test also
rewrites docs/dashboard.png (the README's picture; tests never change tracked files otherwise).

Tests wait for live data with generous timeouts (a loaded 2-core machine), never assert how
long anything took.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from playwright.sync_api import ConsoleMessage, Page, Playwright, Route, sync_playwright

from tests.fleet import cli
from trustfleet.procs import free_port, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "dashboards" / "static"
VENDOR = STATIC / "vendor"
SCENARIO = ROOT / "firmware_shims" / "scenarios" / "dashboard-excursion.yaml"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DOCS_PNG = ROOT / "docs" / "dashboard.png"
VECTORS = Path(__file__).resolve().parent / "data" / "rfc9162" / "inclusion"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|localhost|\[?::1\]?)$")
UI_TIMEOUT_MS = 60_000
ALERT_TIMEOUT_MS = 200_000   # under pytest-timeout's 300 s, fleet start-up aside


# -- the fleet ------------------------------------------------------------------------------

@dataclass
class Fleet:
    proc: subprocess.Popen[str]
    data: Path
    api: str
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def node_data(self) -> Path:
        return self.data / "node-1"

    def token(self, kind: str, name: str, org: str | None = None) -> str:
        """A token made with `trustfleet token create` (cached by name)."""
        if name not in self.tokens:
            args = ["token", "create", "--data", str(self.node_data), "--kind", kind,
                    "--name", name, *(["--org", org] if org else [])]
            out = subprocess.run(cli(*args), capture_output=True, text=True, timeout=60,
                                 check=False, cwd=ROOT)
            if out.returncode == 2 and "invalid choice: 'token'" in out.stderr:
                # `trustfleet token` not wired into trustfleet.cli yet: the same command
                # through its module's own entry point (ledger_node.token_cli.main).
                out = subprocess.run([sys.executable, "-m", "ledger_node.token_cli", *args],
                                     capture_output=True, text=True, timeout=60, check=False,
                                     cwd=ROOT)
            if out.returncode != 0 or not out.stdout.strip():
                pytest.fail(f"trustfleet token create failed ({out.returncode}): "
                            f"{out.stdout}{out.stderr}")
            self.tokens[name] = out.stdout.strip().splitlines()[0].strip()
        return self.tokens[name]

    def get(self, path: str, token: str | None = None) -> Any:
        req = urllib.request.Request(self.api + path)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def status(self, path: str, token: str | None = None) -> int:
        try:
            req = urllib.request.Request(self.api + path)
            if token:
                req.add_header("Authorization", f"Bearer {token}")
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    data = tmp_path_factory.mktemp("dashboard") / "var"
    proc = subprocess.Popen(cli("up", "--data", str(data), "--trucks", "2", "--api-port",
                                str(free_port()), "--mqtt-port", str(free_port()),
                                "--scenario", str(SCENARIO)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT)
    try:
        wait_for(lambda: (data / "ports.json").exists(), 60, "ports.json", proc=proc)  # type: ignore[arg-type]
        api = f"http://127.0.0.1:{json.loads((data / 'ports.json').read_text())['api']}"
        fleet = Fleet(proc, data, api)
        node_log = data / "logs" / "node-1.log"
        wait_for(lambda: _answers(api + "/healthz"), 120, "the node's API", proc=proc,  # type: ignore[arg-type]
                 log_file=node_log)
        operator = fleet.token("operator", "dashboard-operator")

        def trucks_committed() -> bool:
            devices = fleet.get("/v1/devices", operator)
            return len(devices) == 2 and all(d["contiguous_seq"] >= 5 for d in devices)

        wait_for(trucks_committed, 180, "readings from both trucks", proc=proc,  # type: ignore[arg-type]
                 log_file=node_log)
        yield fleet
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


# -- the browser ----------------------------------------------------------------------------

@dataclass
class Recorder:
    """What a page did: every request URL, failed requests, console errors, page errors."""

    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console.append(message.text)

    def outside(self) -> list[str]:
        return [u for u in self.requests if not _is_local(u)]

    def assert_clean(self, allow_console: Callable[[str], bool] = lambda _: False) -> None:
        assert self.outside() == [], f"requests to non-loopback hosts: {self.outside()}"
        # A stream or poll cut short by navigation is aborted by the page itself.
        failed = [f for f in self.failed if "ERR_ABORTED" not in f]
        assert failed == [], f"failed requests: {failed}"
        errors = [c for c in self.console if not allow_console(c)]
        assert errors == [], f"console errors: {errors}"


def _is_local(url: str) -> bool:
    parsed = urlparse(url)
    if parsed.scheme in ("data", "blob", "about"):
        return True
    return parsed.scheme in ("http", "https") and bool(LOOPBACK.match(parsed.hostname or ""))


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: scripts/bootstrap.sh installs Debian's")
    with sync_playwright() as p:
        yield p


@dataclass
class Browser:
    page: Page
    rec: Recorder
    base: str

    def login(self, token: str) -> None:
        self.page.goto(self.base + "/")
        self.page.fill("#token", token)
        self.page.click("#login button[type=submit]")
        self.page.wait_for_selector("#who-kind", timeout=UI_TIMEOUT_MS)

    def show(self, route: str) -> None:
        self.page.evaluate("r => { location.hash = r; }", route)

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"dashboard-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def browser(playwright: Playwright, fleet: Fleet, tmp_path: Path) -> Iterator[Browser]:
    """A fresh Chromium (new user-data-dir) with one page whose traffic is recorded."""
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
        args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900})
    try:
        page = context.pages[0] if context.pages else context.new_page()
        rec = Recorder()
        page.on("request", lambda r: rec.requests.append(r.url))
        page.on("requestfailed", lambda r: rec.failed.append(f"{r.url}: {r.failure}"))
        page.on("console", rec.on_console)
        page.on("pageerror", lambda e: rec.console.append(f"uncaught: {e}"))
        yield Browser(page, rec, fleet.api)
    finally:
        context.close()


def _not_found_404(text: str) -> bool:
    return "status of 404" in text


# -- files and serving ----------------------------------------------------------------------

def test_vendor_readme_names_every_vendored_file_with_its_sha256() -> None:
    readme = (VENDOR / "README.md").read_text()
    listed = dict(re.findall(r"^\| `([^`]+)` \| `([0-9a-f]{64})` \|", readme, re.M))
    files = {p.relative_to(VENDOR).as_posix() for p in VENDOR.rglob("*")
             if p.is_file() and p.name != "README.md"}
    assert set(listed) == files
    for name, digest in listed.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    for package in ("leaflet", "uplot", "topojson-client", "world-atlas"):
        assert (VENDOR / package / "LICENSE").is_file()
    assert (VENDOR / "world-atlas" / "countries-50m.json").stat().st_size < 1_000_000


def test_dashboard_pages_name_no_outside_host() -> None:
    """No module, style sheet or page names an http(s) URL to fetch: the app is offline."""
    for path in STATIC.glob("*.*"):
        text = path.read_text()
        assert not re.search(r"(src|href)\s*=\s*[\"']https?://", text), path.name
        assert not re.search(r"fetch\(\s*[\"'`]https?://", text), path.name
        assert "@import" not in text, path.name


def test_node_serves_the_dashboard_files_and_refuses_paths_outside_them(fleet: Fleet) -> None:
    import httpx

    with httpx.Client(base_url=fleet.api, timeout=10) as client:
        index = client.get("/")
        assert index.status_code == 200 and "/static/app.js" in index.text
        app = client.get("/static/app.js")
        assert app.status_code == 200
        assert "javascript" in app.headers["content-type"]
        assert app.headers["x-content-type-options"] == "nosniff"
        basemap = client.get("/static/vendor/world-atlas/countries-50m.json")
        assert basemap.status_code == 200 and basemap.json()["type"] == "Topology"
        for hostile in ("/static/../ledger_node/api.py", "/static/%2e%2e/pyproject.toml",
                        "/static/..%2f..%2fpyproject.toml", "/static/vendor/../../web.py",
                        "/static/index.html%00.js", "/static/" + "a" * 4000,
                        "/static/%ff%fe", "/static/does-not-exist.js"):
            got = client.get(hostile)
            assert got.status_code in (404, 400, 414), (hostile, got.status_code)
            assert "import" not in got.text and "ledger.sqlite" not in got.text


# -- pages ----------------------------------------------------------------------------------

def _marker(page: Page, device: str) -> dict[str, Any]:
    got: dict[str, Any] = page.eval_on_selector(
        f'.truck-marker[data-device="{device}"]',
        "el => ({lat: +el.dataset.lat, lon: +el.dataset.lon, seq: +el.dataset.seq, "
        "box: el.getBoundingClientRect().toJSON()})")
    return got


def test_map_shows_both_trucks_on_the_offline_basemap_and_a_marker_moves(
        fleet: Fleet, browser: Browser) -> None:
    page = browser.page
    browser.login(fleet.token("operator", "dashboard-operator"))
    browser.show("#/map")
    page.wait_for_selector("#map[data-basemap=loaded]", timeout=UI_TIMEOUT_MS)
    for truck in ("truck-1", "truck-2"):
        page.wait_for_selector(f'.truck-marker[data-device="{truck}"]', state="attached",
                               timeout=UI_TIMEOUT_MS)
    assert page.locator(".leaflet-overlay-pane path").count() > 100  # countries, tracks
    assert sorted(page.locator(".truck-label").all_inner_texts()) == ["truck-1", "truck-2"]
    page.wait_for_timeout(4000)  # a few fixes of track before the picture
    browser.shot("map")
    if os.environ.get("TF_UPDATE_DOCS_SCREENSHOT") == "1":
        page.screenshot(path=str(DOCS_PNG))

    # Zoom to truck-1 (a click on its row) so that one fix's move is visible on screen.
    page.click('#fleet-table tr[data-device="truck-1"]')
    page.wait_for_timeout(1000)
    first = _marker(page, "truck-1")
    page.wait_for_function(
        "seq => +document.querySelector('.truck-marker[data-device=\"truck-1\"]')"
        ".dataset.seq > seq", arg=first["seq"], timeout=UI_TIMEOUT_MS)
    page.wait_for_timeout(2000)
    second = _marker(page, "truck-1")
    assert (second["lat"], second["lon"]) != (first["lat"], first["lon"])
    assert (second["box"]["x"], second["box"]["y"]) != (first["box"]["x"], first["box"]["y"])
    browser.rec.assert_clean()


def test_devices_page_lists_both_trucks_with_their_health(fleet: Fleet,
                                                          browser: Browser) -> None:
    page = browser.page
    browser.login(fleet.token("operator", "dashboard-operator"))
    browser.show("#/devices")
    page.wait_for_function("""() => {
      const cells = [...document.querySelectorAll('#devices tr[data-device] td.clock')];
      return cells.length === 2 && cells.every((c) => c.textContent !== '\\u2013');
    }""", timeout=UI_TIMEOUT_MS)
    rows = page.locator("#devices tbody tr")
    assert rows.count() == 2
    for i in range(2):
        cells = rows.nth(i).locator("td").all_inner_texts()
        assert cells[0] == f"truck-{i + 1}" and cells[1] == "enrolled"
        assert int(cells[3]) >= 5                   # readings
        assert cells[7].split()[0] in ("gps", "rtc", "ntp")   # clock source of the last one
    browser.shot("devices")
    browser.rec.assert_clean()


def test_chain_page_checks_the_newest_entrys_proof_in_the_browser_and_catches_a_forgery(
        fleet: Fleet, browser: Browser) -> None:
    page = browser.page
    browser.login(fleet.token("operator", "dashboard-operator"))
    browser.show("#/chain")
    page.wait_for_selector("#chain-height", timeout=UI_TIMEOUT_MS)
    page.wait_for_selector("#chain-blocks tr[data-height]", timeout=UI_TIMEOUT_MS)
    head = fleet.get("/v1/chain/head", fleet.token("operator", "dashboard-operator"))
    assert int(page.inner_text("#chain-height")) >= head["height"] - 50
    page.click("#verify-latest")
    page.wait_for_selector("#chain-proof .verification", timeout=UI_TIMEOUT_MS)
    assert page.get_attribute("#chain-proof .verification", "data-verified") == "true"
    checks = page.inner_text("#chain-proof .checks")
    assert "inclusion" in checks and "ES256 by node-1" in checks
    browser.shot("chain")

    # The same proof with one byte of the entry changed: the page must say not verified.
    def forge(route: Route) -> None:
        bundle = route.fetch().json()
        last = bundle["entries"][-1]
        data = bytearray(base64.b64decode(last["data"]))
        data[len(data) // 2] ^= 0x01
        last["data"] = base64.b64encode(bytes(data)).decode()
        route.fulfill(status=200, content_type="application/json", body=json.dumps(bundle))

    page.route(re.compile(r".*/v1/entries/\d+/proof.*"), forge)
    page.click("#verify-latest")
    page.wait_for_selector("#chain-proof .verification[data-verified=false]",
                           timeout=UI_TIMEOUT_MS)
    assert "another root" in page.inner_text("#chain-proof .checks")
    browser.rec.assert_clean()


def test_browser_merkle_check_agrees_with_the_rfc9162_vectors(fleet: Fleet,
                                                              browser: Browser) -> None:
    """dashboards/static/merkle.js against transparency-dev's inclusion vectors: the valid ones
    verify, every broken one (wrong index, size, leaf, root; proof truncated, extended,
    bit-flipped) fails with a ProofError."""
    vectors = [json.loads(p.read_text()) for p in sorted(VECTORS.rglob("*.json"))]
    assert len(vectors) > 50
    browser.page.goto(fleet.api + "/")
    verdicts = browser.page.evaluate("""async (vectors) => {
      const m = await import('/static/merkle.js');
      const dec = (t) => Uint8Array.from(atob(t || ''), (c) => c.charCodeAt(0));
      const out = [];
      for (const v of vectors) {
        try {
          await m.verifyInclusion(dec(v.leafHash), v.leafIdx, v.treeSize,
                                  (v.proof || []).map(dec), dec(v.root));
          out.push('ok');
        } catch (e) { out.push(e instanceof m.ProofError ? 'fail' : 'crash: ' + e); }
      }
      return out;
    }""", vectors)
    assert verdicts == ["fail" if v["wantErr"] else "ok" for v in vectors]
    browser.rec.assert_clean()


def test_browser_parsers_refuse_hostile_input_with_typed_errors(fleet: Fleet,
                                                                browser: Browser) -> None:
    browser.page.goto(fleet.api + "/")
    got = browser.page.evaluate("""async () => {
      const api = await import('/static/api.js');
      const cbor = await import('/static/cbor.js');
      const proof = await import('/static/proof.js');
      const alerts = await import('/static/alerts.js');
      const kind = (fn) => { try { fn(); return 'accepted'; } catch (e) { return e.name; } };
      const out = {};
      out.tokens = ['', 'a b', 'to\\nk', 'x'.repeat(513), '\\u00e9']
        .map((t) => kind(() => api.checkToken(t)));
      out.goodToken = api.checkToken('  tf_abc.DEF-123  ');
      const p = new api.SseParser(1024);
      out.sse = p.push('event: contract_event\\ndata: {"a":1}\\n\\n'
                       + ': comment\\r\\ndata: x\\r\\n\\r\\n');
      out.sseHuge = kind(() => new api.SseParser(1024).push('data: ' + 'x'.repeat(2000)));
      out.sseHugeNoNewline = kind(() => new api.SseParser(1024).push('x'.repeat(2000)));
      const bytes = (a) => new Uint8Array(a);
      out.cbor = [[], [0x18, 0x05], [0x5f], [0xa2, 0x61, 0x62, 0x01, 0x61, 0x61, 0x02],
                  [0x01, 0x02], [0x7a, 0xff, 0xff, 0xff, 0xff], [0x62, 0xc3, 0x28],
                  Array(40).fill(0x81).concat([0])].map((a) => kind(() => cbor.decode(bytes(a))));
      out.cborOk = cbor.decode(bytes([0xa2, 0x61, 0x61, 0x01, 0x61, 0x62, 0x82, 0x02, 0x03]))
        .get('b');
      const junk = [null, 42, 'bundle', [], {}, {head: {}},
        {head: {header: 'AA==', signatures: []}},
        {head: {header: '!!!', signatures: []}, entries: []},
        {head: {header: 'oA==', signatures: []}, entries: [{index: 0, data: 'AA==', proof: []}]}];
      out.bundles = [];
      for (const j of junk) {
        try {
          const r = await proof.verifyBundle(j);
          out.bundles.push(r.verified ? 'verified' : 'refused');
        } catch (e) { out.bundles.push('crash: ' + e); }
      }
      const li = alerts.renderAlert(alerts.normaliseEvent({entry: 7,
        event: '<img src=x onerror=alert(1)>', shipment: '"><script>x()</script>',
        device: '<b>d</b>', at: 1, data: {note: '<i>x</i>'}}));
      out.alertTags = [...li.querySelectorAll('img, script, b, i')].length;
      out.alertText = li.textContent.includes('<img src=x onerror=alert(1)>');
      out.notEvents = [null, [], {entry: 'x', event: 'e'}, {entry: 1}, {entry: -1, event: 'e'}]
        .map((e) => alerts.normaliseEvent(e));
      return out;
    }""")
    assert got["tokens"] == ["TokenError"] * 5
    assert got["goodToken"] == "tf_abc.DEF-123"
    assert got["sse"] == [{"event": "contract_event", "data": '{"a":1}', "id": None},
                          {"event": "message", "data": "x", "id": None}]
    assert got["sseHuge"] == "SseError" and got["sseHugeNoNewline"] == "SseError"
    assert got["cbor"] == ["CborError"] * 8
    assert got["cborOk"] == [2, 3]
    assert got["bundles"] == ["refused"] * 9
    assert got["alertTags"] == 0 and got["alertText"] is True
    assert got["notEvents"] == [None] * 5
    browser.rec.assert_clean()


def test_login_refuses_a_token_the_node_does_not_know(fleet: Fleet, browser: Browser) -> None:
    page = browser.page
    page.goto(fleet.api + "/")
    page.fill("#token", "not a token")
    page.click("#login button[type=submit]")
    assert "printable ASCII" in page.inner_text("#login-error")
    page.fill("#token", "tf-made-up-token-0000")
    page.click("#login button[type=submit]")
    page.wait_for_selector('#login-error:has-text("refused this token")', timeout=UI_TIMEOUT_MS)
    assert page.locator("#who-kind").count() == 0
    browser.rec.assert_clean(allow_console=lambda t: "status of 401" in t)


def test_a_temperature_excursion_appears_as_a_live_alert(fleet: Fleet, browser: Browser) -> None:
    page = browser.page
    browser.login(fleet.token("operator", "dashboard-operator"))
    browser.show("#/alerts")
    page.wait_for_selector("#alerts-status", timeout=UI_TIMEOUT_MS)
    alert = page.wait_for_selector('#alerts li[data-event="excursion"]',
                                   timeout=ALERT_TIMEOUT_MS)
    assert alert is not None
    text = alert.inner_text()
    assert "excursion" in text
    page.wait_for_function("() => document.querySelector('#alerts-status').textContent"
                           ".includes('live')", timeout=UI_TIMEOUT_MS)
    browser.shot("alerts")
    browser.rec.assert_clean()


def _shipments(fleet: Fleet) -> list[dict[str, Any]]:
    """Every shipment's document (operator view), once trustfleet up has made its demo ones."""
    operator = fleet.token("operator", "dashboard-operator")

    def listed() -> bool:
        return bool(fleet.get("/v1/shipments", operator)["items"])

    wait_for(listed, 120, "the demo shipments that trustfleet up creates")
    return [fleet.get(f"/v1/shipments/{s['id']}", operator)
            for s in fleet.get("/v1/shipments", operator)["items"]]


def _demo_shipment(fleet: Fleet) -> dict[str, Any]:
    return _shipments(fleet)[0]


def test_shipment_page_shows_state_parties_chart_and_a_verified_proof(
        fleet: Fleet, browser: Browser) -> None:
    shipment = _demo_shipment(fleet)
    page = browser.page
    browser.login(fleet.token("operator", "dashboard-operator"))
    browser.show("#/shipments")
    page.wait_for_selector(f'#shipments tr[data-shipment="{shipment["id"]}"] a',
                           timeout=UI_TIMEOUT_MS)
    page.click(f'#shipments tr[data-shipment="{shipment["id"]}"] a')
    page.wait_for_selector("#shipment-state", timeout=UI_TIMEOUT_MS)
    assert page.inner_text("#shipment-state") == shipment["state"]
    browser.rec.assert_clean(allow_console=_not_found_404)
    head = page.inner_text("#shipment-head")
    for party in shipment["parties"]:
        assert party["org"] in head
    page.wait_for_selector("#shipment-verification .verification", timeout=UI_TIMEOUT_MS)
    assert page.get_attribute("#shipment-verification .verification",
                              "data-verified") == "true"
    page.wait_for_selector("#shipment-chart canvas", timeout=UI_TIMEOUT_MS)
    # The scenario's excursion: an alert in the shipment's events, and a shaded band.
    page.wait_for_selector('#shipment-events li[data-event="excursion"]',
                           timeout=ALERT_TIMEOUT_MS)
    page.wait_for_function("() => +document.querySelector('#shipment-chart').dataset.bands > 0",
                           timeout=UI_TIMEOUT_MS)
    browser.shot("shipment")
    browser.rec.assert_clean()


def test_partner_sees_its_own_shipment_but_not_another_partners(
        fleet: Fleet, browser: Browser) -> None:
    shipments = _shipments(fleet)
    own: dict[str, Any] | None = shipments[0]
    org = shipments[0]["parties"][0]["org"]
    others = [s for s in shipments if org not in {p["org"] for p in s["parties"]}]
    if not others:  # one shipment only: another organisation's token is the outsider
        org = "dashboard-outsider-org"
        others, own = [shipments[0]], None
    other = others[0]
    page = browser.page
    browser.login(fleet.token("partner", f"dashboard-{org}", org=org))
    assert page.inner_text("#who-kind") == "partner"
    for fleet_page in ("map", "devices", "chain"):
        assert page.locator(f'#nav a[data-page="{fleet_page}"]').is_hidden()
    if own is not None:
        page.wait_for_selector(f'#shipments tr[data-shipment="{own["id"]}"]',
                               timeout=UI_TIMEOUT_MS)
    else:
        page.wait_for_selector("#shipments .notice", timeout=UI_TIMEOUT_MS)
    assert page.locator(f'#shipments tr[data-shipment="{other["id"]}"]').count() == 0

    browser.show(f"#/shipments/{other['id']}")
    page.wait_for_selector("#shipment-not-found", timeout=UI_TIMEOUT_MS)
    assert "not found" in page.inner_text("#shipment-not-found")
    assert page.locator("#shipment-state").count() == 0
    browser.shot("partner-not-found")
    browser.show("#/map")                      # an operator page: not shown to a partner
    page.wait_for_selector("#view .notice", timeout=UI_TIMEOUT_MS)
    assert page.locator("#map").count() == 0

    if own is not None:
        browser.show(f"#/shipments/{own['id']}")
        page.wait_for_selector("#shipment-state", timeout=UI_TIMEOUT_MS)
        assert page.inner_text("#shipment-state") == own["state"]
    browser.rec.assert_clean(allow_console=_not_found_404)


def test_hostile_routes_get_a_message_not_a_crash_or_markup(fleet: Fleet,
                                                            browser: Browser) -> None:
    page = browser.page
    browser.login(fleet.token("operator", "dashboard-operator"))
    for route in ("#/shipments/%E0%A4%A", "#/shipments/<img src=x onerror=alert(1)>",
                  "#/shipments/%3Cscript%3Ealert(1)%3C%2Fscript%3E",
                  "#/shipments/" + "x" * 5000, "#/shipments/a%00b"):
        browser.show(route)
        page.wait_for_selector("#view .notice.error", timeout=UI_TIMEOUT_MS)
        assert page.locator("#view img, #view script").count() == 0
    browser.show("#/no-such-page")
    page.wait_for_function("() => location.hash === '#/map'", timeout=UI_TIMEOUT_MS)
    browser.rec.assert_clean(allow_console=lambda t: re.search(r"status of 4(04|22)", t)
                             is not None)
