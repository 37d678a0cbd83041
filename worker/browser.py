"""The Playwright implementation of ``Computer``: one Chromium per worker process, one fresh context per task.

Chromium is Debian's (``LODESTAR_CHROMIUM_PATH``, default /usr/bin/chromium) or Playwright's own when the path is
empty. Screenshots use CDP ``Page.captureScreenshot`` (JPEG, ``optimizeForSpeed``), about twice as fast as
``page.screenshot`` (STACK-NOTES: ~17 ms against ~33 ms at 1280x720).

Every request goes through the worker process's egress proxy (``worker/egress/``): each context has a gate of its
own (a proxy port, with the task's rules from :meth:`BrowserHost.open` until the context closes), and Chromium's own
background requests go to a gate that is never opened. Loopback is proxied too (``<-loopback>``), WebSockets are
tunnelled through it, and WebRTC may not send UDP of its own.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

from playwright.sync_api import Browser, BrowserContext, Locator, Page, Playwright, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from shared.settings import Settings
from worker.computer import CLICKABLE_ROLES, FIELD_ROLES, ActionError, Observation, Target
from worker.egress import EgressPolicy, EgressProxy, EgressRules, Gate, chromium_proxy_args, process_proxy
from worker.egress.server import BYPASS_NOTHING

log = logging.getLogger(__name__)

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]
"""Flags from STACK-NOTES: without the background-networking ones Chromium floods a closed network."""


class BrowserHost:
    """Owns Playwright and one Chromium for the life of a worker process; relaunches Chromium if it dies.

    ``proxy``: the egress proxy the contexts' requests go through (default: this process's, ``process_proxy``); its
    gates apply the policy of ``settings``. Not thread-safe (Playwright's sync API is bound to the thread that
    started it).

    Raises (at construction):
        ValueError: a malformed ``LODESTAR_EGRESS_HOSTS`` entry.
    """

    def __init__(self, settings: Settings, proxy: EgressProxy | None = None):
        self.settings = settings
        self.policy = EgressPolicy.from_settings(settings)
        self._proxy = proxy
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._browser_gate: Gate | None = None
        self._spare: BrowserComputer | None = None

    @property
    def proxy(self) -> EgressProxy:
        """The egress proxy (started on first use)."""
        if self._proxy is None:
            self._proxy = process_proxy(self.settings)
        return self._proxy

    @property
    def playwright(self) -> Playwright:
        """This host's Playwright (started on first use); one per thread, so a tool that needs a second browser
        (the bench's baseline) launches it from here."""
        if self._playwright is None:
            self._playwright = sync_playwright().start()
        return self._playwright

    def browser(self) -> Browser:
        """The running Chromium, launched on first use (~175 ms) or again after a crash. Its own requests (not a
        context's) go to a gate of the egress proxy that refuses everything."""
        if self._browser is not None and self._browser.is_connected():
            return self._browser
        if self._browser_gate is None or self._browser_gate.closed:
            self._browser_gate = self.proxy.gate(self.policy)
        args = [*CHROMIUM_ARGS, *chromium_proxy_args(self._browser_gate.url)]
        options: dict[str, Any] = {"headless": self.settings.headless, "args": args}
        if self.settings.chromium_path:
            options["executable_path"] = self.settings.chromium_path
        started = time.perf_counter()
        self._browser = self.playwright.chromium.launch(**options)
        log.info("chromium %s launched in %.0f ms", self._browser.version, (time.perf_counter() - started) * 1000)
        return self._browser

    def open(self, width: int, height: int, *, persistent: bool = False, owner: str = "",
             egress: EgressRules | None = None, state: bytes | None = None) -> BrowserComputer:
        """A fresh, isolated browser context with one page at ``width`` x ``height`` CSS pixels, its requests under
        ``egress`` (the task's rules; None: the deployment's rules only, nothing reported) until it closes
        (``persistent`` and ``owner`` are accepted for the ``Host`` protocol; a context is never kept: a
        persistent task's state is saved with :meth:`BrowserComputer.save_state`). ``state``: a saved environment's
        Playwright storage state (JSON bytes: cookies, localStorage, IndexedDB, OPFS) the context starts with.

        Takes the spare context :meth:`warm` prepared (never used by another task) when there is one and no
        ``state`` is given: creating a context costs ~130 ms that would otherwise delay the task's first step.

        Raises:
            ValueError: ``state`` is not a storage state (JSON object).
        """
        if state is not None:
            storage = json.loads(state)
            if not isinstance(storage, dict):
                raise ValueError("the saved environment's storage state is not a JSON object")
            restored = BrowserComputer(self.browser(), width, height, self.settings, self.proxy.gate(self.policy),
                                       storage_state=storage)
            restored.gate.open(egress or EgressRules())
            return restored
        spare, self._spare = self._spare, None
        computer = None
        if spare is not None:
            try:
                if self._browser is None or not self._browser.is_connected():
                    raise RuntimeError("its browser is gone")
                spare.resize(width, height)
                computer = spare
            except Exception as exc:  # the spare died with its renderer or browser: make a new one
                log.info("spare context unusable (%s); opening a new one", exc)
                spare.close()
        if computer is None:
            computer = BrowserComputer(self.browser(), width, height, self.settings, self.proxy.gate(self.policy))
        computer.gate.open(egress or EgressRules())
        return computer

    def warm(self) -> None:
        """Prepare a spare context for the next task (call between tasks). Errors are logged, not raised."""
        if self._spare is not None:
            return
        try:
            self._spare = BrowserComputer(self.browser(), 1280, 720, self.settings, self.proxy.gate(self.policy))
        except Exception as exc:
            log.warning("could not prepare a spare browser context: %s", exc)

    def close(self) -> None:
        """Close the spare context, Chromium and Playwright (the egress proxy stays: it is the process's)."""
        if self._spare is not None:
            self._spare.close()
            self._spare = None
        try:
            if self._browser is not None:
                self._browser.close()
        finally:
            self._browser = None
            if self._browser_gate is not None:
                self._browser_gate.close()
            if self._playwright is not None:
                self._playwright.stop()
                self._playwright = None


class BrowserComputer:
    """``Computer`` over one Playwright browser context, whose requests all go through ``gate`` (closed with the
    context). Follows the newest tab when a click opens one."""

    def __init__(self, browser: Browser, width: int, height: int, settings: Settings, gate: Gate,
                 storage_state: dict[str, Any] | None = None):
        self.width = width
        self.height = height
        self.gate = gate
        self._timeout_ms = settings.action_timeout * 1000
        self._quality = settings.screenshot_quality
        self._may_navigate = False
        try:
            self._context: BrowserContext = browser.new_context(
                viewport={"width": width, "height": height}, proxy={"server": gate.url, "bypass": BYPASS_NOTHING},
                storage_state=storage_state)  # type: ignore[arg-type]
        except BaseException:
            gate.close()
            raise
        self._context.set_default_timeout(self._timeout_ms)
        self._context.on("page", self._adopt)
        self._page: Page = self._context.new_page()
        self._cdp = self._context.new_cdp_session(self._page)

    # -- plumbing ------------------------------------------------------------------------------------------------
    def take_refusals(self) -> list[str]:
        """What the egress proxy refused since the last call: "<url>: <reason>" each (the reason names the host)."""
        return [r.describe() for r in self.gate.take_refusals()]

    def _adopt(self, page: Page) -> None:
        self._page = page
        self._cdp = self._context.new_cdp_session(page)

    @property
    def page(self) -> Page:
        return self._page

    def resize(self, width: int, height: int) -> None:
        """Set the viewport to ``width`` x ``height`` CSS pixels."""
        if (width, height) != (self.width, self.height):
            self._page.set_viewport_size({"width": width, "height": height})
            self.width, self.height = width, height

    # -- seeing -------------------------------------------------------------------------------------------------
    def screenshot(self) -> bytes:
        """JPEG bytes of the viewport through CDP's fast path.

        Right after a navigation the page may not have painted a frame yet and CDP answers "Unable to capture
        screenshot": wait for an animation frame and try again (at most three times). Right after a click on a link
        the old document may be gone before the new one commits ("Not attached to an active page"): wait for the new
        one's DOMContentLoaded first. The first capture after a click on a link (:meth:`expect_navigation`, called
        by the click probe of ``worker/replay.py``) or an Enter key press goes through Playwright's own screenshot
        instead (see below).
        """
        if self._may_navigate:  # a click on a link or Enter may have started a navigation: a CDP capture sent
            self._may_navigate = False  # on this session while the page swaps documents can wait forever;
            try:  # Playwright's own capture follows the swap, with a timeout (~16 ms slower)
                return self._page.screenshot(type="jpeg", quality=self._quality, timeout=max(self._timeout_ms, 30_000))
            except PlaywrightError as exc:
                log.debug("screenshot after an action failed (%s); capturing through CDP", exc)
        params = {"format": "jpeg", "quality": self._quality, "optimizeForSpeed": True}
        for attempt in range(3):
            try:
                return base64.b64decode(self._cdp.send("Page.captureScreenshot", params)["data"])
            except Exception as exc:
                mid_navigation = "Not attached to an active page" in str(exc)  # a click on a link: the old
                if not (mid_navigation or "Unable to capture screenshot" in str(exc)) or attempt == 2:  # document
                    raise  # is gone, the new one not committed yet
                try:  # each wait bounded: a page that never commits or paints fails the step, not the worker
                    if mid_navigation:
                        self._page.wait_for_load_state("domcontentloaded", timeout=max(self._timeout_ms, 30_000))
                    self._page.wait_for_function("() => new Promise(r => requestAnimationFrame(() => r(true)))",
                                                 timeout=self._timeout_ms)
                except PlaywrightError as waited:
                    log.debug("waiting for a frame to capture failed: %s", waited)
        raise AssertionError("unreachable")

    def observe(self, accessibility: bool = True) -> Observation:
        """Screenshot and URL of the current page; with ``accessibility``, also its title and ARIA snapshot (each a
        further round trip to the browser, so a policy that needs neither does not pay for them).

        A page on a refused address shows the egress proxy's refusal (plain HTTP) or Chromium's error page: nothing
        of the refused host was fetched.
        """
        aria = None
        title = ""
        if accessibility:
            try:
                aria = self._page.locator("body").aria_snapshot(timeout=self._timeout_ms)
                title = self._page.title()
            except Exception as exc:  # a page mid-navigation has no body yet
                log.debug("aria snapshot failed: %s", exc)
                aria = aria or ""
        return Observation(
            screenshot=self.screenshot(), url=self._page.url, title=title, width=self.width, height=self.height,
            accessibility=aria,
        )

    def element_at(self, x: int, y: int) -> dict[str, str] | None:
        """The element under viewport point ``x``, ``y`` as the accessibility tree names it: ``{"role", "name"}``
        of the nearest clickable or field ancestor (``CLICKABLE_ROLES``, ``FIELD_ROLES``; the same names
        ``get_by_role`` and the ARIA snapshot use), else of the nearest named one; None when nothing there has a
        name. Two CDP calls (~5-10 ms)."""
        try:
            hit = self._cdp.send("DOM.getNodeForLocation", {"x": x, "y": y, "ignorePointerEventsNone": True})
            tree = self._cdp.send("Accessibility.getPartialAXTree",
                                  {"backendNodeId": hit["backendNodeId"], "fetchRelatives": True})
        except Exception as exc:  # no node there (outside the page), or a page mid-navigation
            log.debug("element_at(%s, %s) failed: %s", x, y, exc)
            return None
        return named_ancestor(tree.get("nodes", []), hit["backendNodeId"])

    # -- acting -------------------------------------------------------------------------------------------------
    def expect_navigation(self) -> None:
        """The next action may navigate (a click on a link): the screenshot after it takes the safe path."""
        self._may_navigate = True

    def click(self, x: int, y: int, button: str = "left", count: int = 1) -> None:
        self._page.mouse.click(x, y, button=button, click_count=count)  # type: ignore[arg-type]

    def double_click(self, x: int, y: int) -> None:
        self._page.mouse.dblclick(x, y)

    def scroll(self, x: int, y: int, dx: int, dy: int) -> None:
        self._page.mouse.move(x, y)
        self._page.mouse.wheel(dx, dy)

    def type(self, text: str) -> None:
        self._page.keyboard.type(text)

    def key(self, keys: str) -> None:
        self._may_navigate = self._may_navigate or "Enter" in keys  # Enter submits forms
        self._page.keyboard.press(keys)

    def move(self, x: int, y: int) -> None:
        self._page.mouse.move(x, y)

    def drag(self, x: int, y: int, x2: int, y2: int) -> None:
        mouse = self._page.mouse
        mouse.move(x, y)
        mouse.down()
        mouse.move(x2, y2, steps=10)
        mouse.up()

    def wait(self, seconds: float) -> None:
        self._page.wait_for_timeout(seconds * 1000)

    def navigate(self, url: str) -> None:
        """Open ``url`` and wait for DOMContentLoaded.

        Raises ``ActionError`` naming the host when the egress rules refuse ``url``, or the page a redirect took the
        main frame to (the proxy refused it: nothing of it was fetched).
        """
        if "://" not in url and not url.startswith(("about:", "data:")):
            url = "https://" + url
        reason = self.gate.check_url(url)
        if reason:
            raise ActionError(f"navigation to {url} refused: {reason}")
        mark = self.gate.mark()
        try:
            self._page.goto(url, wait_until="domcontentloaded", timeout=max(self._timeout_ms, 30_000))
        except PlaywrightError as exc:  # a refused HTTPS hop fails the load (ERR_TUNNEL_CONNECTION_FAILED)
            refused = self.gate.refusals_since(mark)
            if refused:
                raise ActionError(f"navigation to {url} refused: {refused[-1].describe()}") from exc
            raise
        landed = self._page.url
        for refusal in self.gate.refusals_since(mark):
            if refusal.matches(landed):
                raise ActionError(f"navigation to {url} refused: the page went to {landed}, and {refusal.reason}")

    # -- grounding targets ----------------------------------------------------------------------------------------
    def _candidates(self, target: Target, exact: bool) -> list[Locator]:
        page = self._page
        name = target.name
        if target.by == "role" and target.role:
            return [page.get_by_role(target.role, name=name, exact=exact)]  # type: ignore[arg-type]
        if target.by == "label":
            return [
                page.get_by_label(name, exact=exact),
                page.get_by_placeholder(name, exact=exact),
                *(page.get_by_role(role, name=name, exact=exact) for role in FIELD_ROLES),  # type: ignore[arg-type]
            ]
        return [
            *(page.get_by_role(role, name=name, exact=exact) for role in CLICKABLE_ROLES),  # type: ignore[arg-type]
            page.get_by_label(name, exact=exact),
            page.get_by_text(name, exact=exact),
        ]

    def _resolve(self, target: Target) -> Locator:
        for exact in (True, False) if target.exact else (False,):
            for candidate in self._candidates(target, exact):
                visible = candidate.filter(visible=True)
                if visible.count() > target.nth:
                    return visible.nth(target.nth)
        raise ActionError(f"no visible element matches {target.describe()}")

    def locate(self, target: Target) -> tuple[int, int]:
        """The centre of the first visible element matching ``target``, scrolled into view, in viewport pixels.

        Raises ``ActionError`` when nothing visible matches.
        """
        locator = self._resolve(target)
        locator.scroll_into_view_if_needed(timeout=self._timeout_ms)
        box = locator.bounding_box(timeout=self._timeout_ms)
        if box is None:
            raise ActionError(f"{target.describe()} has no box on screen")
        return int(box["x"] + box["width"] / 2), int(box["y"] + box["height"] / 2)

    def select(self, target: Target, option: str) -> None:
        """Choose the option labelled ``option`` in the <select> named by ``target``."""
        locator = self._resolve(target)
        try:
            locator.select_option(label=option, timeout=self._timeout_ms)
        except Exception as exc:
            raise ActionError(f'cannot select "{option}" in {target.describe()}: {str(exc).splitlines()[0]}') from exc

    def save_state(self) -> bytes:
        """The context's storage state as JSON bytes (Playwright's: cookies, every origin's localStorage, IndexedDB
        and origin private file system), what :meth:`BrowserHost.open` restores from."""
        state = self._context.storage_state(indexed_db=True, opfs=True)
        return json.dumps(state, separators=(",", ":")).encode()

    def close(self) -> None:
        """Close the context and its gate: requests it still had in flight are cut."""
        try:
            self._context.close()
        except Exception as exc:  # the browser may already be gone
            log.debug("context close failed: %s", exc)
        finally:
            self.gate.close()


_ROLES_WANTED = frozenset((*CLICKABLE_ROLES, *FIELD_ROLES))


def named_ancestor(nodes: list[dict[str, Any]], backend_id: int) -> dict[str, str] | None:
    """From CDP ``Accessibility.getPartialAXTree`` ``nodes`` (with relatives) of DOM node ``backend_id``: the
    ``{"role", "name"}`` of the nearest node, it or an ancestor, with a clickable or field role; else of the nearest
    one with a name; None when none has a name."""
    by_id = {n.get("nodeId"): n for n in nodes}
    node = next((n for n in nodes if n.get("backendDOMNodeId") == backend_id), nodes[0] if nodes else None)
    first_named = None
    while node is not None:
        if not node.get("ignored"):
            role = str((node.get("role") or {}).get("value") or "")
            name = str((node.get("name") or {}).get("value") or "").strip()
            if role in _ROLES_WANTED:
                return {"role": role, "name": name}
            if name and first_named is None and role not in ("StaticText", "RootWebArea"):
                first_named = {"role": role, "name": name}
        node = by_id.get(node.get("parentId"))
    return first_named
