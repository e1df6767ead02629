"""Headless Chromium driven through the DevTools protocol over a pipe (--remote-debugging-pipe: no port, no
websocket library), for the browser tests, the page benchmark (benchmarks/bench_pages.py) and the README's
screenshot (scripts/screenshot_display.py).

The browser runs with networking off: every host resolves to nothing, a proxy that does not exist, and the
page's network emulated offline; every request the page makes is recorded (``requests``), as are console
errors and uncaught exceptions (``errors``).
"""
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
#: Debian's /usr/bin/chromium is a shell launcher that loses the DevTools pipe; the binary behind it keeps it.
BINARY = "/usr/lib/chromium/chromium" if os.access("/usr/lib/chromium/chromium", os.X_OK) else CHROMIUM
SKIP_REASON = "needs Chromium (apt-get install chromium; scripts/setup.sh installs it)"
#: URL schemes a self-contained page may load (itself, data URIs, plotly's in-page blobs).
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


class Chromium:
    """One headless Chromium with one page (a tab); use as a context manager."""

    def __init__(self, width=1280, height=900, timeout=120.0):
        if CHROMIUM is None:
            raise RuntimeError(SKIP_REASON)
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="postsvd-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [BINARY, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--hide-scrollbars",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--proxy-server=http://127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
                f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "--remote-debugging-pipe",
                "about:blank"]
        # fd 3: the browser reads commands; fd 4: it writes answers and events.
        # Moved to 10 and 11 first: the pipe may already sit on 3 or 4.
        shell = (f'exec 10<&{to_browser_r} 11>&{from_browser_w}; exec "$0" "$@" 3<&10 4>&11 10<&- 11>&-'
                 if {to_browser_r, from_browser_w}.isdisjoint({10, 11}) else None)
        if shell is None:
            raise RuntimeError("unexpected pipe descriptors 10 or 11")
        self.process = subprocess.Popen(["/bin/bash", "-c", shell, *args], pass_fds=(to_browser_r, from_browser_w),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events = []
        self.requests, self.errors = [], []
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for method in ("Page.enable", "Runtime.enable", "Log.enable", "Network.enable"):
            self.call(method)
        self.call("Network.emulateNetworkConditions", {"offline": True, "latency": 0, "downloadThroughput": -1,
                                                       "uploadThroughput": -1})
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False})

    # ------------------------------------------------------------------ protocol

    def _send(self, message):
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")

    def _read_message(self, deadline):
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message = json.loads(raw)
        if "method" in message:
            self._note(message)
        return message

    def _note(self, event):
        self.events.append(event)
        method, params = event["method"], event.get("params", {})
        if method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append("exception: " + (details.get("exception", {}).get("description") or details["text"]))
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.errors.append("console: " + " ".join(str(a.get("value", a.get("description", "")))
                                                      for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append("log: " + params["entry"]["text"])

    def _call(self, method, params=None, session=None):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._send(message)
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._read_message(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def call(self, method, params=None):
        """A DevTools command on the page; its result."""
        return self._call(method, params, self.session)

    # ------------------------------------------------------------------ page

    def evaluate(self, expression, await_promise=False):
        """The value of a JavaScript expression in the page (an exception there raises here)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": await_promise})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression, timeout=60.0, interval=0.05):
        """Waits until `expression` is truthy in the page; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"not true after {timeout} s: {expression}")
            time.sleep(interval)

    def open(self, path):
        """Navigates to a local file and waits for its load event."""
        url = "file://" + os.path.abspath(path)
        self.call("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete'")
        return url

    def wait_for_figures(self, timeout=60.0):
        """Waits until every interactive figure of the page has drawn; their number."""
        return self.wait_for("(function () { var n = document.querySelectorAll('div.iplot').length; "
                             "return n > 0 && (window.postsvdDrawn || 0) >= n ? n : 0; })()", timeout)

    def mouse(self, kind, x, y, buttons=0, button="none", clicks=0):
        self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": button, "buttons": buttons,
                                               "clickCount": clicks})

    def hover(self, x, y):
        """Moves the mouse onto (x, y); plotly throttles hover events, so each move waits a little."""
        self.mouse("mouseMoved", x - 3, y - 3)
        time.sleep(0.15)
        self.mouse("mouseMoved", x, y)
        time.sleep(0.15)

    def click(self, x, y):
        self.hover(x, y)
        self.mouse("mousePressed", x, y, buttons=1, button="left", clicks=1)
        self.mouse("mouseReleased", x, y, button="left", clicks=1)

    def position(self, div_id, trace, x_index, y_index):
        """Page coordinates (x, y) of the point of trace `trace` of a figure at x[x_index], y[y_index] (a scatter
        point: both its index; a heatmap cell: its column and row), after scrolling the figure into view."""
        return self.evaluate(f"""(function () {{
            var gd = document.getElementById({json.dumps(div_id)});
            gd.scrollIntoView({{block: 'center'}});
            var t = gd._fullData[{trace}], L = gd._fullLayout;
            var xa = L[t.xaxis.replace('x', 'xaxis')], ya = L[t.yaxis.replace('y', 'yaxis')];
            var box = gd.getBoundingClientRect();
            return [box.left + xa._offset + xa.d2p(t.x[{x_index}]), box.top + ya._offset + ya.d2p(t.y[{y_index}])];
        }})()""")

    def element_center(self, selector, index=0):
        """Page coordinates of the center of the `index`-th element matching a CSS selector (scrolled into view)."""
        return self.evaluate(f"""(function () {{
            var e = document.querySelectorAll({json.dumps(selector)})[{index}];
            e.scrollIntoView({{block: 'center'}});
            var box = e.getBoundingClientRect();
            return [box.left + box.width / 2, box.top + box.height / 2];
        }})()""")

    def hover_text(self, div_id):
        return self.evaluate(f"(function () {{ var g = document.getElementById({json.dumps(div_id)}); "
                             "var h = g.querySelector('.hoverlayer'); return h ? h.textContent : ''; })()")

    def screenshot(self, path, clip=None):
        """A PNG of the viewport (or of `clip`: {x, y, width, height} in page coordinates, inside the viewport)."""
        params = {"format": "png", "captureBeyondViewport": False}  # a resized viewport would redraw (no hover)
        if clip:
            params["clip"] = dict(clip, scale=1)
        data = self.call("Page.captureScreenshot", params)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def external_requests(self):
        """Requests to anything but the page itself and in-page data."""
        return [url for url in self.requests if not url.startswith(LOCAL_SCHEMES)]

    def close(self):
        try:
            self._send({"id": 0, "method": "Browser.close"})
        except OSError:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
