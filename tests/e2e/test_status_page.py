"""The status page in headless Chromium, against ``rollout serve`` and the sandbox as processes.

The controller runs with tokens, so the page first asks for one. Two canaries are submitted over
HTTP while the page is open: a healthy one (promoted) and a regressed one (rolled back). The
test reads the live DOM: each rollout's card with its endpoint and phase, the progress bar on
the current step, the chart's lines for both arms with points and step markers, the verdict's
numbers; then both rollouts end and the page shows their final phases without a reload, and
says so when the controller goes away. Every request the browser made stayed on loopback.

A second test steers a rollout from the page: a viewer's card offers no command; an operator's
pauses, resumes and aborts a canary with long bakes, the destructive commands asking for a
second click, and the card follows each change without a reload.

A third promotes a canary fully over the API and reads the card: the steps the operator
skipped are marked skipped, never done.

Screenshots: ``test-artifacts/status-page.png`` (mid-rollout) and
``test-artifacts/status-page-operator.png`` (an abort waiting for its confirmation) on every run;
with ``ROLLOUT_DOCS_SCREENSHOT=1`` the first is also written to ``docs/status-page.png``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
OPERATOR = "e2e-operator-token"
VIEWER = "e2e-viewer-token"
POLICY = {
    "name": "e2e",
    "min_requests": 50,
    # The suite must not fail one run in a hundred because a healthy candidate drew badly:
    # a tenth of the default budget, still far more than the regressed arms need.
    "false_rollback_rate": "0.1%",
    "checks": [
        {"metric": "error_rate", "compare": "baseline", "max_ratio": 2, "max_increase": "1%"},
        {"metric": "latency_p99_ms", "compare": "baseline", "max_ratio": 2},
    ],
}
T = TypeVar("T")


def create_endpoint(admin: httpx.Client, name: str, candidate_error_rate: float) -> None:
    response = admin.post("/endpoints", json={
        "name": name,
        "served_entities": [{"name": "model-1", "entity_name": "main.ml.model",
                             "entity_version": "1", "workload_size": "Small",
                             "scale_to_zero_enabled": False}],
        "profiles": {"model-1": {"error_rate": 0.002},
                     "model-2": {"error_rate": candidate_error_rate}},
        "qps": 400,
    })
    assert response.status_code == 201, response.text


def plan(endpoint: str, label: str, bake: str = "8s") -> dict[str, Any]:
    return {
        "name": label,
        "endpoint": endpoint,
        "candidate": {"name": "model-2", "entity_name": "main.ml.model", "entity_version": "2",
                      "workload_size": "Small"},
        "strategy": "canary",
        "steps": [{"weight": 20, "bake": bake}, {"weight": 50, "bake": bake}],
        "policy": POLICY,
    }


@pytest.fixture
def daemon(sandbox_process: str, sandbox_token: str, tmp_path: Path) -> Iterator[
        tuple[str, subprocess.Popen[str]]]:
    """``rollout serve`` with a viewer and an operator token; yields its URL and process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "ROLLOUT_"))}
    env.update({
        "DATABRICKS_HOST": sandbox_process,
        "DATABRICKS_TOKEN": sandbox_token,
        "ROLLOUT_STORE_URL": f"sqlite:///{tmp_path / 'rollout.db'}",
        "ROLLOUT_API_PORT": "0",
        "ROLLOUT_API_TOKENS": f"{OPERATOR}:operator,{VIEWER}:viewer",
        "ROLLOUT_ENGINE_LOOK_INTERVAL": "0.5",
        "ROLLOUT_ENGINE_UPDATE_POLL": "0.25",
        "ROLLOUT_ENGINE_SCAN_INTERVAL": "0.2",
        # The healthy candidate matches its baseline: proving its pass takes as long as the
        # draw and a loaded machine make it, so wait for evidence rather than pause at bake x 3.
        "ROLLOUT_ENGINE_STEP_DEADLINE_FACTOR": "20",
        "ROLLOUT_SERVING_UPDATE_POLL_INTERVAL": "0.25",
        "ROLLOUT_LOG_FORMAT": "json",
    })
    log = tmp_path / "daemon.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "rollout.cli", "serve"],
        env=env, stdout=subprocess.PIPE, stderr=log.open("a"), text=True,
    )
    try:
        assert process.stdout is not None
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline and process.poll() is None:
            match = re.search(r"(http://127\.0\.0\.1:\d+)", process.stdout.readline())
            url = match.group(1) if match else None
        assert url, f"the daemon did not start: {log.read_text()[-2000:]}"
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--no-first-run", "--disable-default-apps",
                     f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(argument)
    # The performance log lists every request the page makes; the browser log its errors.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(20)
        # The same viewport on every machine: the screenshot is what a laptop shows.
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, condition: Callable[[], T | None], what: str,
             timeout: float = 30) -> T:
    """Poll ``condition`` until it returns something truthy; DOM churn counts as "not yet"."""

    def attempt(_driver: WebDriver) -> T | None:
        try:
            return condition()
        except (StaleElementReferenceException, WebDriverException):
            return None  # the page redrew a node between two reads: try again

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(
        attempt, message=f"waiting for {what}")


def card(driver: WebDriver, rollout_id: str) -> WebElement | None:
    found = driver.find_elements(By.ID, f"rollout-{rollout_id}")
    return found[0] if found else None


def phase_of(driver: WebDriver, rollout_id: str) -> str | None:
    element = card(driver, rollout_id)
    return None if element is None else element.get_attribute("data-phase")


def chart_state(element: WebElement) -> dict[str, Any]:
    """What the card's chart draws: points per arm and panel, and the step markers."""
    lines = {
        (path.find_element(By.XPATH, "..").get_attribute("data-metric"),
         path.get_attribute("data-arm")): int(path.get_attribute("data-points") or 0)
        for path in element.find_elements(By.CSS_SELECTOR, "svg.plot path.line")
    }
    paths = [path.get_attribute("d") or ""
             for path in element.find_elements(By.CSS_SELECTOR, "svg.plot path.line")]
    markers = [(m.get_attribute("data-kind"), m.get_attribute("data-weight"))
               for m in element.find_elements(By.CSS_SELECTOR, "svg.plot g.step-marker")]
    return {"lines": lines, "paths": paths, "markers": markers}


def requests_made(driver: WebDriver) -> list[dict[str, Any]]:
    """Every request (url, method, headers, postData) the browser made since the last call,
    but for its own start tab.

    Headless Chromium opens its built-in new-tab page (chrome:// documents loading chrome://
    resources, never the network) before the test navigates; requests made by those documents
    are the browser's, not the status page's.
    """
    requests = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") != "Network.requestWillBeSent":
            continue
        params = message["params"]
        if str(params.get("documentURL", "")).startswith("chrome://"):
            continue
        requests.append(params["request"])
    return requests


def request_urls(driver: WebDriver) -> list[str]:
    """Every URL the browser requested since the last call (see ``requests_made``)."""
    return [request["url"] for request in requests_made(driver)]


def assert_stayed_on_loopback(urls: list[str]) -> None:
    schemes = {urlsplit(u).scheme for u in urls}
    assert schemes <= {"http", "data"}, sorted(u for u in urls if not u.startswith("http:"))
    hosts = {urlsplit(u).hostname for u in urls if urlsplit(u).scheme == "http"}
    assert hosts == {"127.0.0.1"}, hosts


def severe_browser_errors(driver: WebDriver) -> list[str]:
    """The browser's errors, but for the 401s that ask for a token and a controller gone."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE"
            and not re.search(r"status of 401|ERR_CONNECTION_REFUSED", entry["message"])]


def require_chromium() -> None:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail("the status page test needs chromium and chromium-driver (.ci/run installs "
                    "them)")


def test_the_status_page_follows_rollouts_live(
    sandbox_process: str, daemon: tuple[str, subprocess.Popen[str]], browser: WebDriver,
) -> None:
    require_chromium()
    url, process = daemon
    with httpx.Client(base_url=f"{sandbox_process}/_sandbox/v1", timeout=10) as admin:
        create_endpoint(admin, "good-ep", 0.002)
        create_endpoint(admin, "bad-ep", 0.25)
    urls: list[str] = []

    # The API wants a token: the page asks for one, refuses a wrong one, keeps a good one.
    browser.get(f"{url}/")
    browser.execute_script("window.__sameDocument = true;")
    login = wait_for(browser, lambda: browser.find_element(By.ID, "login").is_displayed()
                     and browser.find_element(By.ID, "login"), "the token form")
    assert wait_for(browser, lambda: browser.find_element(By.ID, "connection")
                    .get_attribute("data-state") == "auth", "the connection to say 'auth'")
    field = browser.find_element(By.ID, "token-input")
    field.send_keys("not-a-token")
    login.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(browser, lambda: "refused" in browser.find_element(By.ID, "login-message").text,
             "the page to say the token was refused")
    assert browser.execute_script("return sessionStorage.getItem('rollout.api-token')") is None
    browser.find_element(By.ID, "token-input").send_keys(VIEWER)
    browser.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
    wait_for(browser, lambda: browser.find_element(By.ID, "empty").is_displayed(),
             "the empty list")
    assert not browser.find_element(By.ID, "login").is_displayed()
    stored = browser.execute_script("return sessionStorage.getItem('rollout.api-token')")
    assert stored == VIEWER

    # Two rollouts arrive while the page is open.
    headers = {"Authorization": f"Bearer {OPERATOR}"}
    ids = {}
    for endpoint, label in (("bad-ep", "bad-v2"), ("good-ep", "good-v2")):
        response = httpx.post(f"{url}/api/v1/rollouts", json=plan(endpoint, label),
                              headers=headers, timeout=30)
        assert response.status_code == 201, response.text
        ids[endpoint] = response.json()["id"]
    good, bad = ids["good-ep"], ids["bad-ep"]

    # Mid-rollout: the healthy canary's card, progress on its current step, a chart with both
    # arms and a step marker, and the verdict's numbers.
    def progressing_with_chart() -> dict[str, Any] | None:
        element = card(browser, good)
        if element is None or element.get_attribute("data-phase") != "progressing":
            return None
        chart = chart_state(element)
        points = chart["lines"]
        lines = [(metric, arm) for metric in ("error_rate", "p99_ms")
                 for arm in ("candidate", "baseline")]
        if not (all(points.get(line, 0) >= 2 for line in lines)
                and any(kind == "step" for kind, _ in chart["markers"])):
            return None
        current = element.find_elements(By.CSS_SELECTOR, "ol.steps li[aria-current=step]")
        if not current or not element.find_elements(By.CSS_SELECTOR, "table.checks tbody tr"):
            return None
        api = httpx.get(f"{url}/api/v1/rollouts/{good}", headers=headers, timeout=10).json()
        weight = current[0].get_attribute("data-weight")
        # The page and the API agree on where the rollout is (the page may lag one refresh).
        if api["phase"] != "progressing" or weight != str(api["candidate_weight"]):
            return None
        return {"element": element, "chart": chart, "weight": weight, "api": api}

    seen = wait_for(browser, progressing_with_chart, "the healthy canary mid-rollout", 45)
    element = seen["element"]
    assert element.find_element(By.CSS_SELECTOR, ".endpoint").text == "good-ep"
    assert element.find_element(By.CSS_SELECTOR, ".phase").text.endswith("progressing")
    steps = element.find_elements(By.CSS_SELECTOR, "ol.steps li")
    assert [s.get_attribute("data-weight") for s in steps] == ["20", "50", "100"]
    current_index = [s.get_attribute("aria-current") for s in steps].index("step")
    assert "current" in (steps[current_index].get_attribute("class") or "")
    assert steps[current_index].get_attribute("data-weight") == seen["weight"]
    assert all("done" in (s.get_attribute("class") or "") for s in steps[:current_index])
    split = element.find_element(By.CSS_SELECTOR, ".split").text
    assert f"candidate {seen['weight']} %" in split
    assert any(kind == "step" and weight in ("20", "50")
               for kind, weight in seen["chart"]["markers"])
    assert len(seen["chart"]["paths"]) == 4
    assert all(re.match(r"M[\d.]+ [\d.]+ ", d) and " L" in d for d in seen["chart"]["paths"])
    facts = element.find_element(By.CSS_SELECTOR, "dl.facts").text
    assert "model-2" in facts
    assert "model-1" in facts
    rows = element.find_elements(By.CSS_SELECTOR, "table.checks tbody tr")
    # The policy's two checks, then the 5xx ceiling that also judges the warm-up.
    assert len(rows) == 3
    assert "ceiling" in rows[2].text
    first = rows[0].text
    assert "error rate" in first
    assert re.search(r"(pass|fail|inconclusive)", first)
    assert re.search(r"n = [\d,]+", first)
    assert "%" in first
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(out / "status-page.png"))
    if os.environ.get("ROLLOUT_DOCS_SCREENSHOT"):
        # The README's picture: the healthy canary on its second step with a few windows
        # drawn, the regressed one rolled back below it.
        def second_step() -> bool:
            element = card(browser, good)
            return bool(
                element is not None
                and element.find_elements(By.CSS_SELECTOR,
                                          "ol.steps li[aria-current=step][data-weight='50']")
                and "candidate 50 %" in element.find_element(By.CSS_SELECTOR, ".split").text
                and int(element.find_element(By.CSS_SELECTOR, "svg.plot")
                        .get_attribute("data-windows") or 0) >= 8
                and phase_of(browser, bad) == "rolled_back"
            )

        wait_for(browser, second_step, "the healthy canary on its second step", 40)
        (ROOT / "docs").mkdir(exist_ok=True)
        assert browser.save_screenshot(str(ROOT / "docs" / "status-page.png"))
    urls += request_urls(browser)

    # Both end; the page shows it without being reloaded.
    wait_for(browser, lambda: phase_of(browser, bad) == "rolled_back"
             and phase_of(browser, good) == "succeeded", "both rollouts to end", 150)
    assert browser.execute_script("return window.__sameDocument === true"), "no reload"
    good_card, bad_card = card(browser, good), card(browser, bad)
    assert good_card is not None
    assert bad_card is not None
    assert good_card.find_element(By.CSS_SELECTOR, ".phase").text.endswith("succeeded")
    assert bad_card.find_element(By.CSS_SELECTOR, ".phase").text.endswith("rolled back")
    good_steps = good_card.find_elements(By.CSS_SELECTOR, "ol.steps li")
    assert all("done" in (s.get_attribute("class") or "") for s in good_steps)
    assert bad_card.find_elements(By.CSS_SELECTOR, "ol.steps li.stopped")
    assert "analysis failed" in bad_card.find_element(By.CSS_SELECTOR, ".note").text
    bad_verdict = bad_card.find_element(By.CSS_SELECTOR, "section.verdict").text
    assert "fail" in bad_verdict
    bad_markers = chart_state(bad_card)["markers"]
    assert ("rollback", None) in bad_markers
    assert ("baseline_restored", "0") in bad_markers
    assert ("promoted", "100") in chart_state(good_card)["markers"]
    assert browser.save_screenshot(str(out / "status-page-final.png"))
    summary = browser.find_element(By.ID, "summary").text
    assert "2 rollouts" in summary
    assert "1 succeeded" in summary
    assert "1 rolled back" in summary

    # The controller goes away: the page says so instead of showing stale numbers as live.
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    wait_for(browser, lambda: browser.find_element(By.ID, "connection")
             .get_attribute("data-state") == "down", "the page to notice the controller is gone",
             20)
    assert "unreachable" in browser.find_element(By.ID, "connection").text.lower()
    assert phase_of(browser, good) == "succeeded", "the last known state stays on the page"

    # Nothing left loopback; the page did use the API (list and series) and its own files.
    urls += request_urls(browser)
    assert_stayed_on_loopback(urls)
    paths = {urlsplit(u).path for u in urls}
    assert {"/", "/static/status.css", "/static/status.js", "/api/v1/rollouts",
            f"/api/v1/rollouts/{good}/series"} <= paths
    severe = severe_browser_errors(browser)
    assert not severe, severe


def log_in(driver: WebDriver, token: str) -> None:
    """Give the page's token form a token and wait until the page has taken it."""
    form = wait_for(driver, lambda: driver.find_element(By.ID, "login").is_displayed()
                    and driver.find_element(By.ID, "login"), "the token form")
    driver.find_element(By.ID, "token-input").send_keys(token)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(driver, lambda: not driver.find_element(By.ID, "login").is_displayed(),
             "the page to take the token")


def role_of_page(driver: WebDriver) -> str | None:
    return driver.find_element(By.TAG_NAME, "body").get_attribute("data-role")


def actions_of(driver: WebDriver, rollout_id: str) -> list[str]:
    element = card(driver, rollout_id)
    if element is None:
        return []
    return [button.get_attribute("data-action") or ""
            for button in element.find_elements(By.CSS_SELECTOR, ".actions button[data-action]")]


def button(driver: WebDriver, rollout_id: str, action: str) -> WebElement:
    element = card(driver, rollout_id)
    assert element is not None
    return element.find_element(By.CSS_SELECTOR, f".actions button[data-action='{action}']")


def press(driver: WebDriver, rollout_id: str, action: str) -> None:
    """Click a command's button; a redraw between finding and clicking it is retried."""

    def attempt() -> bool:
        target = button(driver, rollout_id, action)
        if not target.is_enabled():
            return False  # a command of this card is in flight
        target.click()
        return True

    wait_for(driver, attempt, f"the {action} button to take a click", 10)


def status_line(driver: WebDriver, rollout_id: str) -> str:
    element = card(driver, rollout_id)
    assert element is not None
    return element.find_element(By.CSS_SELECTOR, ".action-status").text


def test_an_operator_steers_a_rollout_from_the_page(
    sandbox_process: str, daemon: tuple[str, subprocess.Popen[str]], browser: WebDriver,
) -> None:
    require_chromium()
    url, _process = daemon
    with httpx.Client(base_url=f"{sandbox_process}/_sandbox/v1", timeout=10) as admin:
        create_endpoint(admin, "steer-ep", 0.002)
    headers = {"Authorization": f"Bearer {OPERATOR}"}
    # Ten-minute bakes: the canary stays on its first step unless someone steers it.
    response = httpx.post(f"{url}/api/v1/rollouts", json=plan("steer-ep", "steer-v2", "10m"),
                          headers=headers, timeout=30)
    assert response.status_code == 201, response.text
    rollout = response.json()["id"]

    def api_phase() -> str:
        answer = httpx.get(f"{url}/api/v1/rollouts/{rollout}", headers=headers, timeout=10)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["phase"])

    def both_say(phase: str) -> bool:
        return phase_of(browser, rollout) == phase and api_phase() == phase

    # A viewer watches the rollout and is offered no command.
    browser.get(f"{url}/")
    browser.execute_script("window.__sameDocument = true;")
    log_in(browser, VIEWER)
    wait_for(browser, lambda: role_of_page(browser) == "viewer" and both_say("progressing"),
             "the viewer's page with the canary progressing", 45)
    element = card(browser, rollout)
    assert element is not None
    assert not element.find_elements(By.CSS_SELECTOR, "button[data-action]")
    assert not element.find_element(By.CSS_SELECTOR, ".actions").is_displayed()
    assert not element.find_element(By.CSS_SELECTOR, ".action-status").is_displayed()
    assert "viewer" in browser.find_element(By.ID, "session").text

    # The same tab, with an operator's token instead: the commands of a progressing canary.
    browser.find_element(By.ID, "forget-token").click()
    log_in(browser, OPERATOR)
    wait_for(browser, lambda: role_of_page(browser) == "operator"
             and actions_of(browser, rollout) == ["pause", "promote", "promote_full", "abort"],
             "the operator's buttons")
    assert button(browser, rollout, "pause").get_attribute("aria-label") == (
        "Pause rollout steer-v2 on steer-ep")
    assert button(browser, rollout, "pause").get_attribute("type") == "button"
    assert "operator" in browser.find_element(By.ID, "session").text

    # Pause, then resume: each reaches the engine, and the card follows.
    press(browser, rollout, "pause")
    wait_for(browser, lambda: both_say("paused"), "the canary to pause", 30)
    assert "pause requested" in status_line(browser, rollout)
    wait_for(browser, lambda: actions_of(browser, rollout) == ["resume", "promote", "abort"],
             "a paused canary's buttons")
    press(browser, rollout, "resume")
    wait_for(browser, lambda: both_say("progressing"), "the canary to resume", 30)
    assert "resume requested" in status_line(browser, rollout)
    wait_for(browser, lambda: actions_of(browser, rollout)
             == ["pause", "promote", "promote_full", "abort"], "a progressing canary's buttons")

    # A destructive command asks first; a question left unanswered lapses, sending nothing.
    press(browser, rollout, "promote_full")
    promote_full = button(browser, rollout, "promote_full")
    assert promote_full.text == "Confirm promote fully?"
    assert promote_full.get_attribute("data-confirming") == "true"
    wait_for(browser, lambda: button(browser, rollout, "promote_full").text == "Promote fully",
             "the unanswered confirmation to lapse", 10)
    assert button(browser, rollout, "promote_full").get_attribute("data-confirming") == "false"

    # Abort: the first click only asks, and the question survives the page's refresh.
    press(browser, rollout, "abort")
    abort = button(browser, rollout, "abort")
    assert abort.text == "Confirm abort?"
    assert (abort.get_attribute("aria-label") or "").startswith("Confirm: abort rollout steer-v2")
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(out / "status-page-operator.png"))
    detail = browser.find_element(By.ID, "connection-detail").text
    wait_for(browser, lambda: browser.find_element(By.ID, "connection-detail").text != detail,
             "a refresh of the page", 4)
    assert button(browser, rollout, "abort").text == "Confirm abort?"
    assert api_phase() == "progressing"
    assert phase_of(browser, rollout) == "progressing"
    press(browser, rollout, "abort")
    wait_for(browser, lambda: both_say("aborted"), "the canary to be aborted", 45)
    assert browser.execute_script("return window.__sameDocument === true"), "no reload"
    assert actions_of(browser, rollout) == []
    assert "abort requested" in status_line(browser, rollout)
    element = card(browser, rollout)
    assert element is not None
    assert element.find_element(By.CSS_SELECTOR, ".phase").text.endswith("aborted")

    # Exactly the three commands sent, as JSON with the operator's token; nothing left loopback.
    requests = requests_made(browser)
    posts = [(urlsplit(r["url"]).path, r.get("postData"),
              {k.lower(): v for k, v in r["headers"].items()}) for r in requests
             if r["method"] == "POST"]
    assert [(path, body) for path, body, _ in posts] == [
        (f"/api/v1/rollouts/{rollout}/{action}", "{}") for action in ("pause", "resume", "abort")]
    for _path, _body, sent in posts:
        assert sent["content-type"] == "application/json"
        assert sent["authorization"] == f"Bearer {OPERATOR}"
    assert_stayed_on_loopback([r["url"] for r in requests])
    assert "/api/v1/session" in {urlsplit(r["url"]).path for r in requests}
    severe = severe_browser_errors(browser)
    assert not severe, severe


def test_steps_an_operator_skipped_are_shown_as_skipped_not_done(
    sandbox_process: str, daemon: tuple[str, subprocess.Popen[str]], browser: WebDriver,
) -> None:
    require_chromium()
    url, _process = daemon
    with httpx.Client(base_url=f"{sandbox_process}/_sandbox/v1", timeout=10) as admin:
        create_endpoint(admin, "skip-ep", 0.002)
    headers = {"Authorization": f"Bearer {OPERATOR}"}
    # Ten-minute bakes: only the operator's promotion ends the first step.
    response = httpx.post(f"{url}/api/v1/rollouts", json=plan("skip-ep", "skip-v2", "10m"),
                          headers=headers, timeout=30)
    assert response.status_code == 201, response.text
    rollout = response.json()["id"]

    def api_rollout() -> dict[str, Any]:
        answer = httpx.get(f"{url}/api/v1/rollouts/{rollout}", headers=headers, timeout=10)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    browser.get(f"{url}/")
    log_in(browser, VIEWER)
    wait_for(browser, lambda: phase_of(browser, rollout) == "progressing"
             and api_rollout()["candidate_weight"] == 20, "the canary on its first step", 45)
    promoted = httpx.post(f"{url}/api/v1/rollouts/{rollout}/promote", json={"full": True},
                          headers=headers, timeout=10)
    assert promoted.status_code == 202, promoted.text
    wait_for(browser, lambda: phase_of(browser, rollout) == "succeeded",
             "the promoted canary to succeed", 45)
    assert api_rollout()["skipped_steps"] == [0, 1]
    element = card(browser, rollout)
    assert element is not None
    steps = element.find_elements(By.CSS_SELECTOR, "ol.steps li")
    assert [(s.get_attribute("data-weight"), s.get_attribute("class")) for s in steps] == [
        ("20", "step skipped"), ("50", "step skipped"), ("100", "step done")]
    assert steps[0].get_attribute("title") == "Skipped by an operator: not judged"
    progress = element.find_element(By.CSS_SELECTOR, ".split").text
    assert "2 steps skipped by an operator" in progress, progress
    events = httpx.get(f"{url}/api/v1/rollouts/{rollout}/events", headers=headers,
                       timeout=10).json()["events"]
    promoting = next(e for e in events if e["kind"] == "promoting")
    assert promoting["reason"] == "promoted to 100 % by an operator (steps 1-2 of 2 skipped)"
    assert not any("passed" in e["reason"] for e in events)
    severe = severe_browser_errors(browser)
    assert not severe, severe
