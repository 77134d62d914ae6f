"""``taskerctl dashboard`` in a real browser: a real taskerd, the real dashboard process, and
headless Chromium driven by selenium (Debian's ``chromium`` and ``chromium-driver``).

One daemon, one dashboard and one browser for the module. Screenshots of the main page and a
task page are kept in ``tests/dashboard/artifacts/``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskerctl import Client, TaskState
from tests.conftest import Daemon, running
from tests.daemon.test_prometheus import free_port

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "the browser tests need Debian's chromium and chromium-driver "
        "(apt-get install -y chromium chromium-driver)",
        allow_module_level=True,
    )
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:
    pytest.skip("the browser tests need selenium (pip install selenium)", allow_module_level=True)

pytestmark = pytest.mark.timeout(90)


class Dashboard:
    """A ``python -m taskerctl dashboard`` process on a free loopback port."""

    def __init__(self, daemon: Daemon, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = daemon.dir / f"dashboard-{self.port}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "taskerctl", "dashboard", "--socket", str(daemon.socket),
                 "--bind", f"127.0.0.1:{self.port}", *extra],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url + "/static/style.css", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the dashboard did not answer: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(Daemon(tmp_path_factory.mktemp("dash"), "--workers", "3")) as d:
        with Client(d.socket) as c:
            c.add_group("gpu", parallel=1)
        yield d


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[Client]:
    with Client(daemon.socket) as c:
        yield c


@pytest.fixture(scope="module")
def dashboard(daemon: Daemon) -> Iterator[Dashboard]:
    dash = Dashboard(daemon)
    yield dash
    dash.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--force-prefers-reduced-motion"):  # fmt: skip
        options.add_argument(arg)
    service = Service(str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
        if service.process is not None and service.process.poll() is None:
            service.process.kill()


def until(browser: WebDriver, what: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Wait until ``what()`` is truthy; return it."""
    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(lambda _: what())


def row(browser: WebDriver, task_id: int) -> WebElement | None:
    found = browser.find_elements(By.CSS_SELECTOR, f'#rows tr[data-id="{task_id}"]')
    return found[0] if found else None


def row_state(browser: WebDriver, task_id: int) -> str | None:
    return browser.execute_script(  # type: ignore[no-any-return]
        "const tr = document.querySelector(`#rows tr[data-id='${arguments[0]}']`);"
        "return tr ? tr.dataset.state : null;",
        task_id,
    )


def confirm(browser: WebDriver) -> None:
    dialog = until(browser, lambda: browser.find_element(By.ID, "confirm").get_attribute("open"))
    assert dialog is not None
    browser.find_element(By.ID, "confirm-ok").click()


def toast(browser: WebDriver) -> str:
    return until(browser, lambda: browser.find_element(By.ID, "toast").text)  # type: ignore[no-any-return]


def shot(browser: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    browser.save_screenshot(str(path))
    return path


def filter_by(browser: WebDriver, *, state: str = "", group: str = "", text: str = "") -> None:
    Select(browser.find_element(By.ID, "f-state")).select_by_value(state)
    Select(browser.find_element(By.ID, "f-group")).select_by_value(group)
    box = browser.find_element(By.ID, "f-text")
    box.clear()
    box.send_keys(text)
    browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()


def shown_ids(browser: WebDriver) -> list[int]:
    ids = browser.execute_script(
        "return [...document.querySelectorAll('#rows tr')].map(tr => Number(tr.dataset.id));"
    )
    return [int(i) for i in ids]


# -- the tests ------------------------------------------------------------------------------------


def test_submit_from_the_page_and_watch_it_finish(
    browser: WebDriver, dashboard: Dashboard, client: Client
) -> None:
    browser.get(dashboard.url + "/")
    until(browser, lambda: "live" in browser.find_element(By.ID, "conn").text)
    browser.find_element(By.CSS_SELECTOR, "#submit-box summary").click()
    form = browser.find_element(By.ID, "submit-form")
    form.find_element(By.NAME, "command").send_keys("sleep 0.6; echo submitted-from-the-page")
    form.find_element(By.NAME, "shell").click()
    form.find_element(By.NAME, "labels").send_keys("suite=dash")
    Select(form.find_element(By.NAME, "priority")).select_by_visible_text("high")
    browser.find_element(By.ID, "submit-button").click()
    confirm(browser)
    message = until(browser, lambda: "submitted task" in (t := toast(browser)) and t)
    task_id = int(message.split()[-1])
    # It appears without a reload, runs, and ends.
    until(browser, lambda: row_state(browser, task_id) in ("queued", "running", "succeeded"))
    until(browser, lambda: row_state(browser, task_id) == "succeeded")
    t = client.get(task_id, output=True)
    assert t.labels == {"suite": "dash"} and t.priority.name == "HIGH" and t.shell
    assert t.stdout == b"submitted-from-the-page\n"
    tr = row(browser, task_id)
    assert tr is not None and "suite=dash" in tr.text and "high" in tr.text


def test_submit_after_others_later_and_as_a_schedule(
    browser: WebDriver, dashboard: Dashboard, client: Client
) -> None:
    # The CLI's --after, --delay, --on-finish, --every: the same fields on the page.
    held = client.submit(["true"], stashed=True)
    browser.get(dashboard.url + "/")
    until(browser, lambda: "live" in browser.find_element(By.ID, "conn").text)
    browser.find_element(By.CSS_SELECTOR, "#submit-box summary").click()
    form = browser.find_element(By.ID, "submit-form")

    def submit(**fields: str) -> str:
        for name, value in fields.items():
            box = form.find_element(By.NAME, name)
            box.clear()
            box.send_keys(value)
        before = browser.find_element(By.ID, "toast").text
        browser.find_element(By.ID, "submit-button").click()
        confirm(browser)
        return until(browser, lambda: (t := toast(browser)) != before and t)  # type: ignore[no-any-return]

    message = submit(command="echo later", after=str(held.id), delay="1h", on_finish="true")
    assert "submitted task" in message, message
    later = client.get(int(message.split()[-1]))
    assert later.state in (TaskState.WAITING, TaskState.SCHEDULED) and later.after == (held.id,)
    assert later.start_at is not None and later.on_finish == "true"
    message = submit(command="echo tick", after="", delay="", every="1h", on_finish="")
    assert "made schedule" in message, message
    [schedule] = [x for x in client.schedules() if x.argv == ("echo", "tick")]
    assert schedule.every == 3600
    message = submit(command="echo tock", after=str(held.id), every="1h")
    assert "failed" in message and "takes no after" in message, message
    # The schedules table shows it (within a sample, a second), and removes it.
    selector = f'#schedules tr[data-schedule="{schedule.id}"]'
    listed = until(browser, lambda: browser.find_elements(By.CSS_SELECTOR, selector))
    assert "every 1h" in listed[0].text and "echo tick" in listed[0].text
    listed[0].find_element(By.TAG_NAME, "button").click()
    confirm(browser)
    until(browser, lambda: "removed schedule" in toast(browser))
    until(browser, lambda: not browser.find_elements(By.CSS_SELECTOR, selector))
    assert schedule.id not in {x.id for x in client.schedules()}
    client.cancel_many([held.id, later.id])


def test_an_action_error_is_shown(browser: WebDriver, dashboard: Dashboard, client: Client) -> None:
    browser.get(dashboard.url + "/")
    done = client.submit(["true"]).wait()
    until(browser, lambda: row_state(browser, done.id) == "succeeded")
    # The daemon's own message: a finished task cannot get a new priority (the page only offers
    # it to queued tasks, so ask through the page's action helper).
    browser.execute_script(
        "import('/static/common.js').then(m => m.act('priority', {ids: [arguments[0]], "
        "priority: 'high'}))",
        done.id,
    )
    text = until(browser, lambda: "failed" in (t := toast(browser)) and t)
    assert "only a task that has not started" in text
    assert browser.find_element(By.ID, "toast").get_attribute("role") == "alert"


def test_follow_live_output(browser: WebDriver, dashboard: Dashboard, client: Client) -> None:
    script = "for i in 1 2 3 4 5 6 7 8; do echo out $i; echo err $i >&2; sleep 0.25; done"
    handle = client.submit(script, shell=True, labels={"kind": "chatty"})
    browser.get(f"{dashboard.url}/task/{handle.id}")
    stdout = browser.find_element(By.ID, "stdout")
    until(browser, lambda: "out 2" in stdout.text)
    # Lines arrive while it runs, stdout and stderr apart.
    state = browser.find_element(By.ID, "state").text
    assert state == "running", state
    assert "err" not in stdout.text
    assert "err 1" in browser.find_element(By.ID, "stderr").text
    until(browser, lambda: "out 5" in stdout.text)
    shot(browser, "task-running.png")
    until(browser, lambda: browser.find_element(By.ID, "state").text == "succeeded", 10)
    assert stdout.text.split("\n") == [f"out {i}" for i in range(1, 9)]
    assert browser.find_element(By.ID, "follow").text == "ended"
    record = browser.find_element(By.ID, "record").text
    assert "kind=chatty" in record and "Exit code\n0" in record


def test_truncation_is_shown(browser: WebDriver, dashboard: Dashboard, client: Client) -> None:
    # More than the daemon's output_limit (1 MiB by default) on stdout.
    t = client.submit("head -c 1200000 /dev/zero | tr '\\0' x", shell=True).wait()
    assert t.stdout_truncated
    browser.get(f"{dashboard.url}/task/{t.id}")
    note = browser.find_element(By.ID, "stdout-note")
    until(browser, lambda: "Truncated" in note.text)
    assert "rest was dropped" in note.text


def test_cancel_a_running_task(browser: WebDriver, dashboard: Dashboard, client: Client) -> None:
    handle = client.submit(["sleep", "60"], labels={"suite": "cancel"})
    until(browser, lambda: client.get(handle.id).state.name == "RUNNING")
    browser.get(dashboard.url + "/")
    until(browser, lambda: row_state(browser, handle.id) == "running")
    tr = row(browser, handle.id)
    assert tr is not None
    tr.find_element(By.CSS_SELECTOR, '[data-act="cancel"]').click()
    confirm(browser)
    until(browser, lambda: "cancelled" in toast(browser))
    until(browser, lambda: row_state(browser, handle.id) == "cancelled")
    assert client.get(handle.id).state.name == "CANCELLED"


def test_a_new_connection_does_not_draw_the_chart_again(
    browser: WebDriver, dashboard: Dashboard, client: Client
) -> None:
    # A filter or a page opens a new event stream, which sends every sample again: the chart
    # drew them a second time after the newest, its line doubling back across the whole span.
    browser.get(dashboard.url + "/")
    chart = browser.find_element(By.ID, "chart-rate")
    until(browser, lambda: int(chart.get_attribute("data-points") or 0) >= 2)
    until(browser, lambda: "gpu" in browser.find_element(By.ID, "f-group").text)
    before = int(chart.get_attribute("data-points") or 0)
    filter_by(browser, group="gpu")
    filter_by(browser, group="")
    time.sleep(1.5)  # a sample or two more
    assert chart.get_attribute("data-ordered") == "true"
    assert int(chart.get_attribute("data-points") or 0) <= before + 3


def test_filter_by_state_group_and_text(
    browser: WebDriver, dashboard: Dashboard, client: Client
) -> None:
    gpu = client.submit(["true"], group="gpu", labels={"suite": "filter"}).wait()
    failed = client.submit(["false"], labels={"suite": "filter"}).wait()
    needle = client.submit(["echo", "find-the-needle"], labels={"suite": "filter"}).wait()
    browser.get(dashboard.url + "/")
    until(browser, lambda: row_state(browser, needle.id) == "succeeded")
    # Wait for the group list to reach the filter's choices.
    until(browser, lambda: "gpu" in browser.find_element(By.ID, "f-group").text)

    filter_by(browser, group="gpu")
    until(browser, lambda: shown_ids(browser) == [gpu.id])
    assert "group=gpu" in browser.current_url

    filter_by(browser, state="failed")
    until(browser, lambda: shown_ids(browser) == [failed.id])

    filter_by(browser, text="NEEDLE")
    until(browser, lambda: shown_ids(browser) == [needle.id])
    assert "looked at" in browser.find_element(By.ID, "scan-note").text

    # A new matching task appears without a reload.
    late = client.submit(["echo", "another-needle"]).wait()
    until(browser, lambda: shown_ids(browser) == [late.id, needle.id])

    browser.find_element(By.ID, "f-clear").click()
    until(browser, lambda: len(shown_ids(browser)) > 3)


def test_pages_and_screenshot(browser: WebDriver, dashboard: Dashboard, client: Client) -> None:
    handles = client.submit_many(
        [{"cmd": ["sleep", f"0.{i % 5}"], "labels": {"batch": str(i % 3)}} for i in range(70)]
    )
    long = [
        client.submit(["sleep", "30"], group="gpu", labels={"suite": "shot"}),
        client.submit(["sleep", "30"], group="gpu", priority="high"),
    ]
    browser.get(dashboard.url + "/")
    until(browser, lambda: row(browser, handles[-1].id) is not None)
    older = browser.find_element(By.ID, "p-next")
    until(browser, older.is_enabled)
    older.click()
    until(browser, lambda: row(browser, handles[-1].id) is None and len(shown_ids(browser)) > 0)
    assert max(shown_ids(browser)) < handles[-1].id
    browser.find_element(By.ID, "p-first").click()
    until(browser, lambda: row(browser, handles[-1].id) is not None)
    # Let the chart gather a few samples of work.
    client.wait_many([h.id for h in handles], timeout=20)
    time.sleep(1.5)
    browser.execute_script("window.scrollTo(0, 0)")
    path = shot(browser, "main.png")
    assert path.stat().st_size > 10_000
    client.cancel_many([h.id for h in long])


def test_keyboard_reaches_the_actions(
    browser: WebDriver, dashboard: Dashboard, client: Client
) -> None:
    task = client.submit(["true"])
    browser.get(dashboard.url + "/")
    until(browser, lambda: row(browser, task.id) is not None, timeout=20)
    seen: set[str] = set()
    # Tab goes to whatever has the focus (live updates re-render rows, keeping their focus).
    focused = (
        "const e = document.activeElement;"
        "return e.tagName.toLowerCase() + ':' + (e.id || e.textContent);"
    )
    for _ in range(30):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        seen.add(browser.execute_script(focused))
    assert any(s.startswith("input:") for s in seen)
    assert any("Pause" in s or "Resume" in s for s in seen)


def test_access_needs_the_token_off_loopback_and_when_given(daemon: Daemon) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "taskerctl", "dashboard", "--socket", str(daemon.socket),
         "--bind", "0.0.0.0:0"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "not a loopback address" in refused.stderr
    dash = Dashboard(daemon, "--token", "s3cret-token")
    try:
        with httpx.Client(base_url=dash.url) as web:
            assert web.get("/").status_code == 303
            assert web.get("/api/stream").status_code == 401
            assert web.post("/login", data={"token": "wrong"}).status_code == 401
            r = web.get("/?token=s3cret-token")
            assert r.status_code == 303 and r.headers["location"] == "/"
            assert "s3cret-token" not in r.headers["set-cookie"]
            assert web.get("/").status_code == 200  # the cookie
            bare = httpx.post(
                dash.url + "/api/actions/cancel", json={"ids": [1]},
                headers={"authorization": "Bearer s3cret-token"},
            )  # fmt: skip
            assert bare.status_code == 403  # no X-Tasker header: a cross-site form could do that
    finally:
        dash.stop()


def test_no_process_left(dashboard: Dashboard) -> None:
    """Runs last: the dashboard stops on SIGINT (the browser and driver go with the module)."""
    dashboard.stop()
    assert dashboard.proc.returncode is not None
    log = dashboard.log.read_text()
    assert "Traceback" not in log, log


def teardown_module() -> None:
    # Keep the best screenshots for the README.
    docs = Path(__file__).resolve().parents[2] / "docs"
    for name, target in (("main.png", "dashboard.png"), ("task-running.png", "dashboard-task.png")):
        if (ARTIFACTS / name).exists() and os.environ.get("TASKER_DASHBOARD_SHOTS"):
            shutil.copy(ARTIFACTS / name, docs / target)
