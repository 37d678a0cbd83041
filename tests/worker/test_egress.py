"""The egress filter with real sockets and a real Chromium: every way a page could reach a service it must not
(redirected subresources, fetch, WebSockets, names that mean loopback, redirects of the main page, a 307 that resends
a POST, WebRTC's UDP) is refused by the worker's proxy before any connection is made, and each refusal is reported
(the step result and a ``blocked`` event). Then the proxy on its own: allowed domains, DNS rebinding, rules switched
per task and a previous task's connections cut.

Forbidden services are real listeners on loopback ports the tests do not allow; the site the pages come from is
allowed by its port only (``127.0.0.1:<site port>``), as the stack tests do. Names the tests need (``site-a.test``,
``site-b.test``, ``loopback.test``) come from the proxy's own hosts map (``LODESTAR_EGRESS_HOSTS``), never from
/etc/hosts.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from shared.settings import Settings, load_settings
from tests.conftest import chromium_available, need
from tests.listeners import SECRET, EgressSite, Listener, UdpListener, eventually
from worker.browser import BrowserComputer, BrowserHost
from worker.computer import Action, ActionResult, execute
from worker.egress import EgressPolicy, EgressProxy, EgressRules

pytestmark = pytest.mark.browser


# --- fixtures -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def site() -> Iterator[EgressSite]:
    s = EgressSite.start()
    yield s
    s.stop()


@pytest.fixture
def listener() -> Iterator[Listener]:
    """A loopback service on a port nobody allowed."""
    lst = Listener()
    yield lst
    lst.close()


@pytest.fixture(scope="module")
def egress_settings(site: EgressSite) -> Settings:
    return load_settings(browser_allowed_hosts=(f"127.0.0.1:{site.port}",), allow_private_networks=False,
                         egress_hosts=("site-a.test=127.0.0.1", "site-b.test=127.0.0.1", "loopback.test=127.0.0.1"))


@pytest.fixture(scope="module")
def host(egress_settings: Settings) -> Iterator[BrowserHost]:
    need(chromium_available(), "Chromium is not installed (apt-get install chromium)")
    proxy = EgressProxy.from_settings(egress_settings)
    h = BrowserHost(egress_settings, proxy)
    yield h
    h.close()
    proxy.close()


class Task:
    """A browser context opened for one task, with the blocked events its rules reported."""

    def __init__(self, host: BrowserHost, **rules: Any):
        self.events: list[dict[str, Any]] = []
        self.computer: BrowserComputer = host.open(800, 600, egress=EgressRules(
            "task_egress", on_block=self.events.append, **rules))
        self.results: list[ActionResult] = []

    def act(self, action: Action) -> ActionResult:
        result = execute(self.computer, action)
        self.results.append(result)
        return result

    def goto(self, url: str) -> ActionResult:
        return self.act(Action("navigate", url=url))

    def blocked(self) -> list[str]:
        """Everything the step results said was refused (taking what the proxy refused since the last action)."""
        self.act(Action("wait", seconds=0))
        return [b for r in self.results for b in (r.blocked or ())]

    def wait_for_refusal(self, netloc: str) -> None:
        eventually(lambda: any(netloc in e["url"] for e in self.events), what=f"a blocked event for {netloc}")

    def title(self) -> str:
        return self.computer.page.title()


@pytest.fixture
def task(host: BrowserHost) -> Iterator[Task]:
    t = Task(host)
    yield t
    t.computer.close()


# --- subresources, fetch, WebSockets ------------------------------------------------------------------------------
def test_an_image_redirected_to_loopback_is_refused_and_reported(task: Task, site: EgressSite,
                                                                 listener: Listener) -> None:
    # Given an allowed page whose image redirects to a loopback service
    img = site.redirect(listener.url("/secret.png"))
    result = task.goto(site.page(f'<img src="{img}" onload="document.title=\'loaded\'" '
                                 "onerror=\"document.title='refused'\">"))
    # When the page loads
    assert result.ok, result
    eventually(lambda: task.title() == "refused", what="the image's error")
    # Then the service saw no connection, and the refusal is in the step results and a blocked event
    assert listener.accepts == 0
    assert any(listener.netloc in b and "loopback" in b for b in task.blocked()), task.results
    assert next(e for e in task.events if e["url"] == listener.url("/secret.png"))["reason"].startswith(
        "host '127.0.0.1' is a private address")
    assert any(h.path.startswith("/redirect") for h in site.hits)  # the allowed hop was served


def test_an_iframe_redirected_to_loopback_shows_the_refusal_not_the_service(task: Task, site: EgressSite,
                                                                            listener: Listener) -> None:
    task.goto(site.page(f'<iframe src="{site.redirect(listener.url("/admin"))}"></iframe>'))
    task.wait_for_refusal(listener.netloc)
    assert not any(SECRET.decode() in _text_of(frame) for frame in task.computer.page.frames)
    assert listener.accepts == 0


def _text_of(frame: Any) -> str:
    try:
        return str(frame.content())
    except Exception:  # a frame navigating away has no document for a moment
        return ""


def test_fetch_to_loopback_direct_or_redirected_cannot_read_the_answer(task: Task, site: EgressSite,
                                                                      listener: Listener) -> None:
    # Given an allowed page, and a loopback service that would let any origin read its answer (CORS *)
    task.goto(site.url("/blank"))
    # When the page fetches it directly and through a redirect of its own site
    outcome = task.computer.page.evaluate("""async (urls) => {
        const out = [];
        for (const url of urls) {
            try { const r = await fetch(url); out.push('read ' + r.status + ' ' + await r.text()); }
            catch (e) { out.push('failed ' + e); }
        }
        return out;
    }""", [listener.url("/api"), site.redirect(listener.url("/api"), code=307)])
    # Then neither fetch read anything of the service, which saw no connection
    assert all(o.startswith("failed") for o in outcome), outcome
    assert listener.accepts == 0
    assert any(listener.netloc in b for b in task.blocked())


def test_websockets_to_loopback_over_ipv4_and_ipv6_are_refused(task: Task, site: EgressSite,
                                                               listener: Listener) -> None:
    try:
        listener6 = Listener("::1")
    except OSError:
        need(False, "IPv6 loopback (::1) is not available")
    try:
        # Given an allowed page
        task.goto(site.url("/blank"))
        # When it opens WebSockets to both loopback services
        states = task.computer.page.evaluate("""(urls) => Promise.all(urls.map(url => new Promise(resolve => {
            const ws = new WebSocket(url);
            ws.onopen = () => resolve('open'); ws.onerror = () => resolve('error');
        })))""", [listener.url("/ws", "ws"), listener6.url("/ws", "ws")])
        # Then neither opened nor reached its service, and both refusals are reported
        assert states == ["error", "error"]
        assert (listener.accepts, listener6.accepts) == (0, 0)
        blocked = task.blocked()
        assert any(listener.netloc in b for b in blocked) and any(f"[::1]:{listener6.port}" in b for b in blocked)
        assert {e["method"] for e in task.events} == {"CONNECT"}  # Chromium tunnels WebSockets
    finally:
        listener6.close()


def test_webrtc_sends_no_udp_of_its_own(task: Task, site: EgressSite) -> None:
    udp = UdpListener()
    try:
        task.goto(site.url("/blank"))
        candidates = task.computer.page.evaluate("""(port) => new Promise(resolve => {
            const pc = new RTCPeerConnection({iceServers: [{urls: 'stun:127.0.0.1:' + port}]});
            pc.createDataChannel('x');
            const found = [];
            pc.onicecandidate = (e) => e.candidate ? found.push(e.candidate.candidate) : resolve(found);
            pc.createOffer().then((offer) => pc.setLocalDescription(offer));
        })""", udp.port)
        assert candidates == [] and udp.datagrams == 0
    finally:
        udp.close()


# --- names that mean loopback, and redirects of the main page -----------------------------------------------------
NAMES = ["localhost.", "foo.localhost", "LOCALHOST.", "loopback.test"]


@pytest.mark.parametrize("name", NAMES)
def test_a_name_for_loopback_is_refused_when_navigated_to(task: Task, listener: Listener, name: str) -> None:
    result = task.goto(f"http://{name}:{listener.port}/")
    assert not result.ok and f"host '{name.lower()}'" in (result.error or "").lower(), result
    assert "loopback" in (result.error or "")
    assert listener.accepts == 0 and task.events and task.events[0]["host"].lower() == name.lower()


@pytest.mark.parametrize("name", NAMES)
def test_a_name_for_loopback_is_refused_when_a_page_loads_it(task: Task, site: EgressSite, listener: Listener,
                                                            name: str) -> None:
    # Given an allowed page that frames the service under a name that means loopback (Chromium asks the proxy)
    task.goto(site.page(f'<iframe src="http://{name}:{listener.port}/"></iframe>'))
    task.wait_for_refusal(f":{listener.port}")
    assert listener.accepts == 0
    assert SECRET.decode() not in task.computer.page.content()


def test_a_302_of_the_main_page_to_loopback_fails_the_navigation_before_any_connection(
        task: Task, site: EgressSite, listener: Listener) -> None:
    result = task.goto(site.redirect(listener.url("/admin")))
    assert not result.ok and listener.url("/admin") in (result.error or "") and "loopback" in (result.error or "")
    assert listener.accepts == 0
    assert SECRET.decode() not in task.computer.page.content()  # the page shows the proxy's refusal


def test_a_redirect_chain_ending_on_the_metadata_address_is_refused(task: Task, site: EgressSite) -> None:
    metadata = "http://169.254.169.254/latest/meta-data/"
    result = task.goto(site.redirect(site.redirect(metadata)))
    assert not result.ok and "169.254.169.254" in (result.error or "") and "link-local" in (result.error or "")
    assert sum(h.path.startswith("/redirect") for h in site.hits[-2:]) == 2  # both allowed hops were served
    assert [e["host"] for e in task.events] == ["169.254.169.254"]


def test_a_307_does_not_resend_a_post_to_loopback(task: Task, site: EgressSite, listener: Listener) -> None:
    # Given a page that posts a form to its own site, which answers 307 to a loopback service
    action = site.redirect(listener.url("/steal"), code=307)
    task.goto(site.page(f'<form method="post" action="{action}"><input name="secret" value="s3cret"></form>'
                        "<script>document.forms[0].submit()</script>"))
    # Then the site got the POST, the service got nothing, and the refused POST is reported
    task.wait_for_refusal(listener.netloc)
    assert any(h.method == "POST" and h.body == b"secret=s3cret" for h in site.hits)
    assert listener.accepts == 0
    assert [e["method"] for e in task.events if listener.netloc in e["url"]] == ["POST"]


# --- allowed domains --------------------------------------------------------------------------------------------
def test_a_task_limited_to_one_host_cannot_load_another(host: BrowserHost, site: EgressSite) -> None:
    # Given two names for the same allowed site, and a task limited to the first
    t = Task(host, allowed_domains=("site-a.test",))
    try:
        before = len(site.hits)
        # When its page on the first name loads an image from the second, and it navigates to the second
        page = t.goto(site.page(f'<img src="{site.url("/pixel.png", "site-b.test")}">', "site-a.test"))
        t.wait_for_refusal("site-b.test")
        direct = t.goto(site.url("/other", "site-b.test"))
        # Then the first loads, the second is refused by name both times, and the site never saw the second name
        assert page.ok and not direct.ok
        assert "'site-b.test' is not in the task's allowed_domains" in (direct.error or "")
        assert {h.host.split(":")[0] for h in site.hits[before:]} == {"site-a.test"}
        assert [e["host"] for e in t.events] == ["site-b.test"]  # reported once per host and port
    finally:
        t.computer.close()


def test_the_tenants_allowed_domains_apply_too(host: BrowserHost, site: EgressSite) -> None:
    t = Task(host, allowed_domains=("*.test",), tenant_domains=("site-a.test",))
    try:
        assert t.goto(site.url("/a", "site-a.test")).ok
        refused = t.goto(site.url("/b", "site-b.test"))
        assert not refused.ok and "not in its tenant's allowed_domains" in (refused.error or "")
    finally:
        t.computer.close()


# --- the proxy on its own ---------------------------------------------------------------------------------------
def _get(gate_url: str, url: str) -> requests.Response:
    return requests.get(url, proxies={"http": gate_url, "https": gate_url}, timeout=10)


def test_a_rebinding_name_is_resolved_once_and_the_checked_address_is_the_one_reached(site: EgressSite) -> None:
    # Given a name whose resolver answers an allowed address first and another loopback address after
    try:
        other = Listener("127.0.0.2", site.port)
    except OSError:
        need(False, "cannot listen on 127.0.0.2")
    answers: list[str] = []

    def rebinding(name: str) -> list[Any]:
        answers.append(name)
        return [ipaddress.ip_address("127.0.0.1" if len(answers) == 1 else "127.0.0.2")]

    proxy = EgressProxy(EgressPolicy(False, [f"127.0.0.1:{site.port}"], resolver=rebinding))
    gate = proxy.gate()
    try:
        gate.open(EgressRules("t"))
        # When a request goes through the proxy
        answer = _get(gate.url, f"http://rebind.test:{site.port}/once")
        # Then it was served by the address that was checked, and the name was resolved once
        assert answer.status_code == 200 and answers == ["rebind.test"] and other.accepts == 0
    finally:
        proxy.close()
        other.close()


def test_an_allowed_connect_tunnel_carries_bytes_both_ways(site: EgressSite) -> None:
    # Given a gate with a task's rules, and a client that tunnels (as Chromium does for HTTPS and WebSockets)
    proxy = EgressProxy(EgressPolicy(False, [f"127.0.0.1:{site.port}"]))
    gate = proxy.gate()
    try:
        gate.open(EgressRules("t"))
        conn = socket.create_connection(("127.0.0.1", gate.port), timeout=10)
        conn.sendall(f"CONNECT 127.0.0.1:{site.port} HTTP/1.1\r\nHost: 127.0.0.1:{site.port}\r\n\r\n".encode())
        assert conn.recv(1024).startswith(b"HTTP/1.1 200")
        # When it speaks HTTP inside the tunnel, keeping the connection alive for two requests
        received = b""
        for path in ("/one", "/two"):
            conn.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{site.port}\r\n\r\n".encode())
            while f"site {path}".encode() not in received:  # bounded by the socket's 10 s timeout
                chunk = conn.recv(65536)
                assert chunk, received
                received += chunk
        # Then both reached the site through the one tunnel
        assert received.count(b"HTTP/1.1 200 OK") == 2
        conn.close()
    finally:
        proxy.close()


def test_a_closed_gate_refuses_everything_and_reports_nothing(site: EgressSite) -> None:
    proxy = EgressProxy(EgressPolicy(True))
    gate = proxy.gate()
    try:
        answer = _get(gate.url, site.url("/closed"))
        assert answer.status_code == 403 and "no task is running" in answer.text
        assert answer.headers["X-Lodestar-Egress"] == "refused" and not any(h.path == "/closed" for h in site.hits)
        events: list[dict[str, Any]] = []
        gate.open(EgressRules("t", on_block=events.append))
        assert _get(gate.url, site.url("/open")).status_code == 200 and events == []
    finally:
        proxy.close()


def test_rules_switch_per_task_and_a_previous_tasks_connections_are_cut(site: EgressSite) -> None:
    proxy = EgressProxy(EgressPolicy(False, [f"127.0.0.1:{site.port}"]))
    gate = proxy.gate()
    try:
        gate.open(EgressRules("first"))
        # Given a connection made while the first task ran, still idle, and one with a request half sent
        idle = socket.create_connection(("127.0.0.1", gate.port))
        pending = socket.create_connection(("127.0.0.1", gate.port))
        pending.sendall(f"GET {site.url('/leftover')} HTTP/1.1\r\nHost: 127.0.0.1:{site.port}\r\n".encode())
        eventually(lambda: gate.connections == 2, what="the proxy accepting both connections")
        # When the next task's rules come in
        gate.open(EgressRules("second", allowed_domains=("example.com",)))
        # Then both old connections are closed without an answer, and the site never saw the leftover request
        for conn in (idle, pending):
            conn.settimeout(10)
            assert conn.recv(1024) == b""
            conn.close()
        assert not any(h.path == "/leftover" for h in site.hits)
        # And a new connection gets the second task's rules
        assert "not in the task's allowed_domains" in _get(gate.url, site.url("/x")).text
    finally:
        proxy.close()


def test_a_closed_context_leaves_nothing_listening(host: BrowserHost) -> None:
    t = Task(host)
    port = t.computer.gate.port
    t.computer.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_a_refusal_is_recorded_as_a_json_ready_event(task: Task, listener: Listener) -> None:
    task.goto(listener.url("/x"))
    event = task.events[0]
    assert json.loads(json.dumps(event)) == {"type": "blocked", "url": listener.url("/x"), "host": "127.0.0.1",
                                             "port": listener.port, "method": "NAVIGATE", "reason": event["reason"]}


# --- a task's rules from the store ------------------------------------------------------------------------------
@pytest.mark.redis
def test_a_tasks_rules_come_from_its_record_and_tenant_and_report_only_while_it_runs(store: Any) -> None:
    from shared.states import ExitCode, Status
    from tests.conftest import make_task
    from worker.egress import rules_for

    # Given a running task limited to a.test, of a tenant limited to *.test
    store.tenants.set_limits("t_test", allowed_domains="*.test")
    task_id = make_task(store, Status.RUNNING, allowed_domains=["a.test"])
    rules = rules_for(store, store.get(task_id))
    assert (rules.task_id, rules.allowed_domains, rules.tenant_domains) == (task_id, ("a.test",), ("*.test",))
    # When a block is reported while it runs, and again after it ended
    assert rules.on_block is not None
    rules.on_block({"type": "blocked", "url": "http://b.test/", "host": "b.test", "port": 80, "method": "GET",
                    "reason": "r"})
    store.finish(task_id, ExitCode.COMPLETED)
    rules.on_block({"type": "blocked", "url": "http://c.test/", "host": "c.test", "port": 80, "method": "GET",
                    "reason": "r"})
    # Then only the first is in its event log, before the end event
    types = [(e["type"], e.get("host")) for _, e in store.read_events(task_id)]
    assert types[-2:] == [("blocked", "b.test"), ("end", None)]
