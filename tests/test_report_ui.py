"""The report seen through the dashboards: a real `mlflow server` and headless Chromium.

* ``mlflow server`` (``--workers 1``, job execution off) is started on a free
  127.0.0.1 port against a store written by the tests; the runs are found
  through its REST API and the report is built through it.
* ``report.html`` is opened in headless Chromium driven over the DevTools
  protocol on a pipe (``--remote-debugging-pipe``: no extra package); the test
  checks the screenshot is not blank, that no console error, script dialog or
  non-local request occurred, and that the matrix and every figure are there.
"""

import base64
import fcntl
import io
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import report_fixtures as fx
from transferlab.report import write_report

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                  "--hide-scrollbars", "--window-size=1280,1600", "--remote-debugging-pipe"]
SERVER_START_TIMEOUT = 90


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return fx.build_store(tmp_path_factory.mktemp("ui-store"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url, payload):
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _stop(proc: subprocess.Popen) -> None:
    """Stops the process group this test started (server + its worker)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def mlflow_server(store, tmp_path_factory):
    work = tmp_path_factory.mktemp("server")
    port = _free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    log = open(work / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store.uri,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail("mlflow server exited early:\n"
                            + (work / "server.log").read_text(errors="replace")[-3000:])
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not ready after {SERVER_START_TIMEOUT} s:\n"
                            + (work / "server.log").read_text(errors="replace")[-3000:])
            time.sleep(0.25)
        yield url
    finally:
        _stop(proc)
        log.close()


def test_server_rest_api_finds_the_runs_and_the_report_reads_them(store, mlflow_server,
                                                                  tmp_path):
    api = mlflow_server + "/api/2.0/mlflow"
    with urllib.request.urlopen(f"{api}/experiments/get-by-name?experiment_name="
                                f"{fx.EXPERIMENT}", timeout=30) as r:
        exp = json.loads(r.read())
    exp_id = exp["experiment"]["experiment_id"]
    found = _post(api + "/runs/search", {"experiment_ids": [exp_id], "max_results": 1000,
                                         "filter": f"tags.sweep_id = '{fx.SWEEP_ID}'"})
    ids = {r["info"]["run_id"] for r in found["runs"]}
    jobs = set(store.runs.values()) | {store.failed_run_id, store.running_run_id}
    assert ids == jobs | {store.parent_run_id}
    statuses = {r["info"]["run_id"]: r["info"]["status"] for r in found["runs"]}
    assert statuses[store.failed_run_id] == "FAILED"
    with urllib.request.urlopen(mlflow_server + "/", timeout=30) as r:   # the UI itself
        assert r.status == 200 and b"<html" in r.read().lower()
    via_server = write_report(mlflow_server, tmp_path / "http", sweep_id=fx.SWEEP_ID,
                              ui_url=mlflow_server)
    via_sqlite = write_report(store.uri, tmp_path / "sqlite", sweep_id=fx.SWEEP_ID,
                              ui_url=mlflow_server)
    assert via_server["csv"].read_bytes() == via_sqlite["csv"].read_bytes()
    assert f'href="{mlflow_server}/#/experiments/{exp_id}/runs/' in via_server["html"].read_text()


def _high_fd(fd: int) -> int:
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class PipeBrowser:
    """Headless Chromium driven over the DevTools protocol on fds 3/4 (NUL-framed JSON)."""

    def __init__(self, user_data_dir: Path):
        to_r, self._to_w = os.pipe()
        self._from_r, from_w = os.pipe()
        to_r, from_w = _high_fd(to_r), _high_fd(from_w)  # never 3 or 4 themselves
        args = CHROMIUM_FLAGS + [f"--user-data-dir={user_data_dir}", "about:blank"]
        # bash (dash rejects fds >= 10) moves our pipe ends to fds 3 and 4 for Chromium
        script = f'exec "$0" "$@" 3<&{to_r} 4>&{from_w} {to_r}<&- {from_w}>&-'
        self.proc = subprocess.Popen(["/bin/bash", "-c", script, str(CHROMIUM), *args],
                                     pass_fds=(to_r, from_w), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(to_r)
        os.close(from_w)
        self._id = 0
        self._replies: dict[int, dict] = {}
        self.events: "queue.Queue[dict]" = queue.Queue()
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        with os.fdopen(self._from_r, "rb", buffering=0) as fh:
            while chunk := fh.read(65536):
                buf += chunk
                while b"\0" in buf:
                    raw, buf = buf.split(b"\0", 1)
                    msg = json.loads(raw)
                    if "id" in msg:
                        with self._cond:
                            self._replies[msg["id"]] = msg
                            self._cond.notify_all()
                    else:
                        self.events.put(msg)

    def send(self, method, params=None, session=None, timeout=30.0):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_w, json.dumps(msg).encode() + b"\0")
        with self._cond:
            if not self._cond.wait_for(lambda: self._id in self._replies, timeout):
                raise TimeoutError(f"no reply to {method} within {timeout} s")
            reply = self._replies.pop(self._id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def close(self):
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        os.close(self._to_w)


def _render(browser: PipeBrowser, html: Path, timeout=30.0):
    """Loads ``html``; returns (dom facts, screenshot PNG bytes, problems)."""
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    sid = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"]
    for domain in ("Runtime", "Log", "Page", "Network"):
        browser.send(f"{domain}.enable", session=sid)
    browser.send("Page.navigate", {"url": html.resolve().as_uri()}, session=sid)
    problems, loaded, deadline = [], False, time.monotonic() + timeout
    while not loaded:
        try:
            ev = browser.events.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(f"{html.name} did not finish loading in {timeout} s") from None
        problems += _problem(ev)
        if ev.get("method") == "Page.javascriptDialogOpening":   # an alert() blocks loading
            browser.send("Page.handleJavaScriptDialog", {"accept": False}, session=sid)
        loaded = ev.get("method") == "Page.loadEventFired" and ev.get("sessionId") == sid
    js = """JSON.stringify({
      title: document.title,
      matrices: Array.from(document.querySelectorAll('table.matrix')).map(t => t.rows.length),
      figures: Array.from(document.querySelectorAll('figure.report-figure')).map(f => {
        const i = f.querySelector('img');
        return {id: f.id, ok: !!i && i.complete && i.naturalWidth > 100 && i.naturalHeight > 100};
      }),
      leaderboard: document.querySelectorAll('#leaderboard-table tbody tr').length,
      incomplete: document.querySelectorAll('#incomplete-table tbody tr').length,
      scripts: document.scripts.length,
      text: document.body.innerText})"""
    res = browser.send("Runtime.evaluate", {"expression": js, "returnByValue": True},
                       session=sid)
    facts = json.loads(res["result"]["value"])
    shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=sid)
    time.sleep(0.2)                          # late console messages
    while not browser.events.empty():
        problems += _problem(browser.events.get())
    browser.send("Target.closeTarget", {"targetId": target})
    return facts, base64.b64decode(shot["data"]), problems


def _problem(ev: dict) -> list[str]:
    m, p = ev.get("method"), ev.get("params", {})
    if m == "Runtime.exceptionThrown":
        return [f"exception: {p['exceptionDetails'].get('text')}"]
    if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
        return [f"console.{p['type']}: {p.get('args')}"]
    if m == "Log.entryAdded" and p["entry"].get("level") == "error":
        return [f"log error: {p['entry'].get('text')} {p['entry'].get('url', '')}"]
    if m == "Page.javascriptDialogOpening":
        return [f"script dialog opened: {p.get('message')}"]
    if m == "Network.requestWillBeSent":
        url = p["request"]["url"]
        if not url.startswith(("file:", "data:", "about:")):
            return [f"non-local request: {url}"]
    return []


def _not_blank(png: bytes) -> tuple[float, float]:
    from matplotlib.image import imread
    img = imread(io.BytesIO(png))[..., :3]
    non_white = float((img.min(axis=-1) < 0.95).mean())
    return float(img.std()), non_white


@pytest.mark.skipif(not CHROMIUM.exists(),
                    reason="needs headless Chromium at /usr/bin/chromium "
                           "(apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(store, tmp_path):
    sweep = write_report(store.uri, tmp_path / "sweep", sweep_id=fx.SWEEP_ID,
                         ui_url="http://127.0.0.1:5000")
    evil = write_report(store.uri, tmp_path / "evil", experiment=fx.EVIL_EXPERIMENT)
    n_figures = sweep["html"].read_text().count('class="report-figure"')
    assert n_figures >= 4            # 2 curve figures, cost, confusion matrices
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        browser = PipeBrowser(Path(profile))
        try:
            browser.send("Browser.getVersion", timeout=60)
            facts, png, problems = _render(browser, sweep["html"])
            evil_facts, _, evil_problems = _render(browser, evil["html"])
        finally:
            browser.close()
    assert problems == [], problems
    assert facts["title"].startswith("transferlab report")
    assert facts["matrices"] == [3]                   # header + 2 backbones
    assert len(facts["figures"]) == n_figures
    assert all(f["ok"] for f in facts["figures"]), facts["figures"]
    assert facts["leaderboard"] == 10 and facts["incomplete"] == 2
    assert facts["scripts"] == 0
    assert "Is the difference real?" in facts["text"]
    std, non_white = _not_blank(png)
    assert std > 0.02 and non_white > 0.01, (std, non_white)
    # malicious names: shown as text, no script ran, no dialog opened
    assert evil_problems == [], evil_problems
    assert evil_facts["scripts"] == 0
    assert fx.EVIL_NAME in evil_facts["text"] and fx.EVIL_BACKBONE in evil_facts["text"]


def _wait_for(browser, sid, js: str, timeout: float):
    """Polls ``js`` (an expression) in the page until it is truthy; returns its value."""
    deadline, value = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        res = browser.send("Runtime.evaluate", {"expression": js, "returnByValue": True},
                           session=sid)
        value = res.get("result", {}).get("value")
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"{js!r} still falsy after {timeout} s (last: {value!r})")


@pytest.mark.skipif(not CHROMIUM.exists(),
                    reason="needs headless Chromium at /usr/bin/chromium "
                           "(apt-get install -y chromium)")
def test_mlflow_runs_view_lands_on_the_runs_with_curve_charts(store, mlflow_server, tmp_path):
    from mlflow import MlflowClient
    from omegaconf import OmegaConf

    from transferlab.runner import tracking

    cfg = OmegaConf.create({"tracking": {"uri": store.uri, "experiment": fx.EXPERIMENT,
                                         "artifact_root": None}, "root_dir": str(tmp_path)})
    exp_id = tracking.ensure_experiment(cfg)   # transferlab's own: tags the experiment's kind
    kind = MlflowClient(store.uri).get_experiment(exp_id).tags[tracking.EXPERIMENT_KIND]
    assert kind == "custom_model_development"
    jobs = ["vgg19-last4-lr1e-05-s1", "mobilenetv2-all-lr1e-05-s2"]
    url = tracking.runs_view_url(mlflow_server, exp_id)   # what a sweep prints
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        browser = PipeBrowser(Path(profile))
        try:
            browser.send("Browser.getVersion", timeout=60)
            target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            sid = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"]
            browser.send("Runtime.enable", session=sid)
            browser.send("Page.enable", session=sid)
            browser.send("Page.navigate", {"url": url}, session=sid)
            # the runs view (not GenAI traces), the jobs listed themselves, not folded
            # under their sweep's parent run, and line charts of their per-epoch metrics
            cond = " && ".join(f"document.body.innerText.includes({j!r})" for j in jobs)
            _wait_for(browser, sid, cond, 90)
            charts = _wait_for(browser, sid, "document.body.innerText.includes('Step') && "
                               "document.querySelectorAll('.js-plotly-plot').length >= 2 && "
                               "document.querySelectorAll('.js-plotly-plot').length", 60)
            text = _wait_for(browser, sid, "document.body.innerText", 5)
            where = _wait_for(browser, sid, "location.hash", 5)
            shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=sid)
        finally:
            browser.close()
    assert "/runs" in where and "/traces" not in where, where
    assert "Step" in text and "Sort: val_acc" in text
    assert charts >= 2
    std, non_white = _not_blank(base64.b64decode(shot["data"]))
    assert std > 0.02 and non_white > 0.01, (std, non_white)
