"""A headless Debian chromium driven over the DevTools protocol (websocket-client), offline.

`Browser()` starts chromium with no proxy reachable and every host name unresolvable except
127.0.0.1, so a page that needs the network fails to load its assets; `evaluate` runs script in
the page, `screenshot` saves a PNG. Tests skip when chromium or websocket-client is absent.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium on PATH (Debian: apt-get install -y chromium; .ci/run installs it)")


class Browser:
    def __init__(self, width: int = 1100, height: int = 1300):
        websocket = pytest.importorskip("websocket")
        binary = chromium_path()
        self.profile = tempfile.mkdtemp(prefix="bertjax-chromium-")
        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-dev-shm-usage", f"--user-data-dir={self.profile}",
             "--remote-debugging-port=0", f"--window-size={width},{height}",
             # Offline: no proxy answers, no name resolves (loopback literals still work).
             "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1",
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        port = self._port()
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as r:
                    pages = [t for t in json.load(r) if t["type"] == "page"]
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.ws = websocket.create_connection(
            pages[0]["webSocketDebuggerUrl"], timeout=120, suppress_origin=True
        )
        self._id = 0
        self.failed_requests: list[str] = []
        self.call("Page.enable")
        self.call("Network.enable")

    def _port(self) -> int:
        deadline = time.monotonic() + 60
        for line in self.proc.stderr:  # "DevTools listening on ws://127.0.0.1:PORT/..."
            if "DevTools listening on" in line:
                return int(line.split("127.0.0.1:")[1].split("/")[0])
            if time.monotonic() > deadline:
                break
        raise RuntimeError("chromium did not start its DevTools endpoint")

    def call(self, method: str, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("method") == "Network.loadingFailed":
                self.failed_requests.append(message["params"].get("errorText", ""))
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def open(self, url: str, settle_s: float = 1.0) -> None:
        self.call("Page.navigate", url=url)
        # (the previous page is 'complete' too until the navigation commits)
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")
        time.sleep(settle_s)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 120.0):
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout_s}s for {expression}")
            time.sleep(0.2)

    def screenshot(self, path) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data["data"]))

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            shutil.rmtree(self.profile, ignore_errors=True)
