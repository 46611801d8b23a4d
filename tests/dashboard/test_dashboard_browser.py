"""The study page in Debian's Chromium while a real search runs: it updates by itself."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from _helpers import small_space
from dash_helpers import start_search, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.read()
    except OSError:
        return None


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is required in CI")
        pytest.skip(f"{CHROMIUM} not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM,
                              args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


def _stop(proc: subprocess.Popen, sig: int = signal.SIGINT, wait: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_study_page_updates_live(browser, tmp_path):
    db = tmp_path / "studies" / "atml.db"
    url = f"sqlite:///{db}"
    space = small_space("live", n_trials=12, epochs=2)
    space["train"]["patience"] = 5
    search = start_search(tmp_path, url, "live", space=space)
    port = _free_port()
    dash = None
    try:
        assert wait_for(lambda: db.exists() or search.poll() is not None, timeout=90) and search.poll() is None, \
            (tmp_path / "live-search.log").read_text()[-2000:]
        dash = subprocess.Popen([sys.executable, "-m", "atml", "dashboard", "--storage", url, "--port", str(port)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
        base = f"http://127.0.0.1:{port}"
        assert wait_for(lambda: b"live" in (_get(f"{base}/api/studies") or b""), timeout=60), "dashboard or study did not come up"
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base}/studies/live")
        page.evaluate("window.__notReloaded = true")
        first = int(page.inner_text("#total-trials"))
        # the count grows while the search runs, and the page was never reloaded
        page.wait_for_function(f"Number(document.getElementById('total-trials').textContent) > {first}", timeout=60_000)
        assert page.evaluate("window.__notReloaded") is True
        # a completed trial appears, and the history chart is drawn as SVG by plotly.js
        page.wait_for_function("document.querySelectorAll('#trials-body .st-COMPLETE').length > 0", timeout=60_000)
        page.wait_for_selector("#plot-history.js-plotly-plot svg.main-svg .scatterlayer .trace", timeout=60_000)
        assert page.locator(".js-plotly-plot svg").count() >= 3
        # charts follow the study: once 3 trials have completed, importances are computed (bars, or
        # the note that no parameter explains anything yet) instead of "needs at least 3 ..."
        page.wait_for_function("""() => {
            const n = Number((document.querySelector('#counts [data-state=COMPLETE]')?.textContent || '0').split(' ')[1]);
            const imp = document.getElementById('plot-importance');
            return n >= 3 && imp.querySelector('svg.main-svg') && !imp.textContent.includes('needs at least');
        }""", timeout=90_000)
        page.wait_for_selector("#plot-pareto.js-plotly-plot svg .scatterlayer .trace", timeout=90_000)
        clock = page.inner_text("#live")
        # one more poll (every 2 s, longer while two workers load both cores): the clock moves, the page
        # still says live, and the screenshot is current
        page.wait_for_function("(c) => document.getElementById('live').textContent !== c", arg=clock, timeout=60_000)
        assert page.inner_text("#live").startswith("live")
        shot = tmp_path / "study-page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 20_000
        page.click("#trials-body a >> nth=0")
        page.wait_for_selector("#plot-curves.js-plotly-plot svg.main-svg", timeout=60_000)
        page.screenshot(path=str(tmp_path / "trial-page.png"), full_page=True)
        keep = os.environ.get("ATML_SCREENSHOTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            for name in ("study-page.png", "trial-page.png"):
                shutil.copy(tmp_path / name, Path(keep) / name)
    finally:
        _stop(search)
        if dash is not None:
            _stop(dash, signal.SIGTERM, 10)


def test_finished_study_shows_why_it_ended_not_a_countdown(browser, tmp_path):
    import time as _time

    from dash_helpers import make_study

    from atml import records

    url = f"sqlite:///{tmp_path / 'done.db'}"
    study = make_study(url, "done", n=4)  # its stored space has n_trials 4: the budget is spent
    study.set_user_attr(records.DEADLINE, _time.time() + 1800)  # the run's deadline, still ahead
    port = _free_port()
    dash = subprocess.Popen([sys.executable, "-m", "atml", "dashboard", "--storage", url, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_for(lambda: b"done" in (_get(f"{base}/api/studies") or b""), timeout=60)
        page = browser.new_page()
        page.goto(f"{base}/studies/done")
        assert page.inner_text("#time-left") == "ended: n_trials reached (4)"
        assert page.inner_text("#status-badge") == "n_trials reached (4)"
        # after the page's own poll re-renders the header from the API: still no countdown
        page.wait_for_function("document.getElementById('live').textContent.startsWith('live')", timeout=30_000)
        page.wait_for_timeout(2500)
        assert "s left" not in page.inner_text("#time-left")
        assert page.inner_text("#time-left") == "ended: n_trials reached (4)"
        # a study stopped by hand says so
        study.set_user_attr(records.STOP, "stopped from the dashboard")
        page.wait_for_function("document.getElementById('time-left').textContent.includes('stopped from')",
                               timeout=30_000)
    finally:
        _stop(dash, signal.SIGTERM, 10)
