"""Open a page in headless Chromium and say what a person would see (used by the tests and docs).

:func:`inspect_page` starts Chromium with ``--remote-debugging-pipe`` (the DevTools protocol as
NUL-terminated JSON on file descriptors 3 and 4, so no websocket library and no port are
needed), loads the page, waits for it and for every image to decode, and returns a
:class:`PageCheck`: console messages and errors, uncaught exceptions, the size each image decoded
to, what a JavaScript expression of the caller's evaluates to, and a PNG screenshot.

Chromium runs with a fresh profile in a temporary folder and without background networking,
sync, component updates or QUIC, so nothing leaves the machine; the page's own CSP blocks every
fetch anyway.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
]
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """``GENLOOM_CHROMIUM`` if set, else the first Chromium on PATH (Debian's package: /usr/bin/chromium)."""
    env = os.environ.get("GENLOOM_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageCheck:
    """What loading a page showed."""

    console: list[dict] = field(default_factory=list)
    """Every console message and log entry: {"source", "level", "text"}."""
    exceptions: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    """Per <img>: {"alt", "naturalWidth", "naturalHeight", "decoded"}."""
    value: object = None
    """What the caller's expression evaluated to (JSON)."""
    screenshot: bytes = b""

    @property
    def errors(self) -> list[str]:
        """Console errors and uncaught exceptions (what a broken page shows)."""
        return [m["text"] for m in self.console if m["level"] == "error"] + self.exceptions


class _Pipe:
    def __init__(self, proc, to_browser: int, from_browser: int):
        self.proc, self.to_browser, self.from_browser = proc, to_browser, from_browser
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 20.0) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.to_browser, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self.read(timeout)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def read(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self.from_browser], [], [], left)
            if ready:
                chunk = os.read(self.from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium closed the DevTools pipe (exit code {self.proc.poll()})")
                self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(message)

    def wait_event(self, method: str, timeout: float) -> dict:
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            event = self.read(max(deadline - time.monotonic(), 0.001))
            if event.get("method") == method:
                return event
            self.events.append(event)


IMAGES_JS = """
(async () => {
  const imgs = Array.from(document.images);
  const decoded = await Promise.all(imgs.map(i => i.decode().then(() => true, () => false)));
  return imgs.map((i, k) => ({alt: i.alt, naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight, decoded: decoded[k]}));
})()
"""


def inspect_page(path, *, expression: str | None = None, width: int = 1280, height: int | None = None, chromium: str | None = None,
                 timeout: float = 30.0) -> PageCheck:
    """Load ``path`` in headless Chromium and return what it showed.

    ``expression`` (JavaScript, may return a Promise) is evaluated after the load and its JSON value
    kept in :attr:`PageCheck.value`. The screenshot is ``width`` wide and covers the whole page, or
    its first ``height`` pixels.
    """
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium found (install Debian's `chromium` package or set GENLOOM_CHROMIUM)")
    url = Path(path).resolve().as_uri()
    profile = tempfile.mkdtemp(prefix="genloom-chromium-")
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()

    def wire():  # in the child: the protocol reads fd 3 and writes fd 4 (moved out of the way first)
        import fcntl

        high_r, high_w = fcntl.fcntl(to_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_w, fcntl.F_DUPFD, 10)
        os.dup2(high_r, 3)  # dup2 leaves the copies inheritable; Python's own descriptors are not (PEP 446)
        os.dup2(high_w, 4)
        os.close(high_r)
        os.close(high_w)

    proc = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=wire, close_fds=False)
    os.close(to_r)
    os.close(from_w)
    pipe = _Pipe(proc, to_w, from_r)
    check = PageCheck()
    try:
        target = pipe.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
        session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            pipe.send(f"{domain}.enable", session=session)
        pipe.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height or 900, "deviceScaleFactor": 1, "mobile": False}, session=session)
        pipe.send("Page.navigate", {"url": url}, session=session)
        pipe.wait_event("Page.loadEventFired", timeout)
        result = pipe.send("Runtime.evaluate", {"expression": IMAGES_JS, "awaitPromise": True, "returnByValue": True}, session=session)
        check.images = result.get("result", {}).get("value") or []
        if expression:
            result = pipe.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True}, session=session)
            if "exceptionDetails" in result:
                raise RuntimeError(f"the check expression failed: {result['exceptionDetails'].get('text')}")
            check.value = result.get("result", {}).get("value")
        metrics = pipe.send("Page.getLayoutMetrics", session=session)
        size = metrics.get("cssContentSize") or metrics.get("contentSize")
        full = int(size["height"])
        clip = {"x": 0, "y": 0, "width": width, "height": min(full, height) if height else full, "scale": 1}
        shot = pipe.send("Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True}, session=session, timeout=timeout)
        check.screenshot = base64.b64decode(shot["data"])
        for event in pipe.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled":
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                check.console.append({"source": "console", "level": "error" if params.get("type") in ("error", "assert") else params.get("type"), "text": text})
            elif method == "Log.entryAdded":
                entry = params.get("entry", {})
                check.console.append({"source": entry.get("source"), "level": entry.get("level"), "text": entry.get("text", "")})
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                check.exceptions.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
        try:
            pipe.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError):
            pass
    finally:
        for fd in (to_w, from_r):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
    return check
