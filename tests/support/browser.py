"""A person's path through JupyterHub and labd, in a real headless Chromium.

Debian's ``chromium`` driven by Debian's ``chromedriver`` through Selenium
(``scripts/ensure-browser`` installs both). The driver's path is always
given to Selenium, so Selenium Manager never runs: it would try to download
a driver, and the test machines reach nothing but package registries.
Chromium's own background traffic (component updates, sync, QUIC probes)
is switched off for the same reason; the browser only talks to loopback
and, on the real node, the pods' network.

`HubBrowser` is a small page object over the hub's pages as labd fills
them: the login page, labd's lab form on the spawn page, the progress page
with labd's events, the home page's "Stop My Server". Where the path ends
depends on the lab: in ``labd dev`` a simulated single-user server, on the
real node JupyterLab, where `run_in_notebook` types a cell and reads its
output. Every wait has a deadline and fails with what the page showed.

The whole path, as a test writes it::

    with chromium() as driver:
        browser = HubBrowser(driver=driver, hub_url=hub.url, screenshots=None)
        browser.login("carol")
        browser.open_spawn_page()
        browser.choose_image_from_dropdown(reference)
        browser.choose_size("large")
        browser.start()
        browser.wait_for_progress("Created Kubernetes objects for user lab")
        browser.wait_for_lab("carol")
        assert run_in_notebook(driver, "1 + 1") == "2"  # JupyterLab only
        browser.stop_server()
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, TypeVar
from urllib.parse import urlsplit

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from labd.lab.protocol import DROPDOWN_SENTINEL

__all__ = [
    "CHROMEDRIVER",
    "CHROMIUM",
    "HubBrowser",
    "Progress",
    "chromium",
    "hub_browser",
    "missing_browser",
    "run_in_notebook",
    "save_notebook",
]

CHROMIUM: Final = Path("/usr/bin/chromium")
"""Debian's Chromium (package ``chromium``)."""

CHROMEDRIVER: Final = Path("/usr/bin/chromedriver")
"""Debian's ChromeDriver of the same version (package ``chromium-driver``)."""

FLAGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
"""Headless, as root, and without any connection of Chromium's own."""

T = TypeVar("T")


def missing_browser() -> str | None:
    """Return why the browser tests cannot run here, or None when they can."""
    absent = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if absent:
        return (
            f"{' and '.join(absent)} not installed: run scripts/ensure-browser "
            "(Debian's chromium and chromium-driver)"
        )
    return None


@contextmanager
def chromium(*, width: int = 1280, height: int = 860) -> Iterator[WebDriver]:
    """Run a headless Chromium with a new, empty profile; quit it and remove the profile."""
    profile = Path(tempfile.mkdtemp(prefix="labd-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    try:
        driver = webdriver.Chrome(options=options, service=service)
        try:
            yield driver
        finally:
            driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@dataclass(frozen=True)
class Progress:
    """What the hub's progress page showed of a spawn."""

    messages: list[str]
    """The event log, one message per event, oldest first."""
    percent: int
    """The progress bar's value (``aria-valuenow``)."""


@dataclass
class HubBrowser:
    """A person using JupyterHub in a browser: each method is one step of the path.

    Parameters
    ----------
    driver
        The browser, from `chromium`.
    hub_url
        The hub's public URL (its proxy), without a trailing slash.
    screenshots
        Where `screenshot` saves PNG files; None saves nothing.
    timeout
        Seconds any one step may take.
    """

    driver: WebDriver
    hub_url: str
    screenshots: Path | None = None
    timeout: float = 60.0

    def open(self, path: str) -> None:
        """Go to a path of the hub's public URL."""
        self.driver.get(f"{self.hub_url}{path}")

    @property
    def path(self) -> str:
        """The path of the page shown now."""
        return urlsplit(self.driver.current_url).path

    def login(self, username: str, password: str = "any password") -> None:
        """Log in on the hub's login page (the dummy authenticator takes any password)."""
        self.open("/hub/login")
        self.find(By.ID, "username_input").send_keys(username)
        self.find(By.ID, "password_input").send_keys(password)
        self.find(By.ID, "login_submit").click()
        self.wait(lambda: not self.path.startswith("/hub/login"), what=f"{username} logged in")

    def open_spawn_page(self) -> WebElement:
        """Show the spawn page (if the hub did not land there) and return its form."""
        if not self.path.startswith("/hub/spawn"):
            self.open("/hub/spawn")
        return self.find(By.ID, "spawn_form")

    def choose_image(self, reference: str) -> None:
        """Pick a featured image from the form's radio list."""
        self.find(By.CSS_SELECTOR, f'input[name="image_list"][value="{reference}"]').click()

    def choose_image_from_dropdown(self, reference: str) -> None:
        """Pick any image: the radio that defers to the dropdown, then the dropdown."""
        self.choose_image(DROPDOWN_SENTINEL)
        Select(self.find(By.NAME, "image_dropdown")).select_by_value(reference)

    def choose_size(self, size: str) -> None:
        """Pick a lab size (the size's name, e.g. ``large``)."""
        Select(self.find(By.NAME, "size")).select_by_value(size)

    def start(self) -> None:
        """Submit the spawn form and wait for the hub's progress page."""
        self.find(By.CSS_SELECTOR, '#spawn_form button[type="submit"]').click()
        self.wait(lambda: "/spawn-pending/" in self.path, what="the progress page")
        self.find(By.ID, "progress-bar")
        # A person opens the event log to read every step, not only the last.
        self.find(By.CSS_SELECTOR, "#progress-details summary").click()

    def progress(self) -> Progress:
        """Read the progress page as it is now."""
        events = self.driver.find_elements(By.CSS_SELECTOR, "#progress-log .progress-log-event")
        bar = self.find(By.ID, "progress-bar")
        return Progress(
            messages=[str(event.get_attribute("textContent")).strip() for event in events],
            percent=int(bar.get_attribute("aria-valuenow") or 0),
        )

    def wait_for_progress(self, *messages: str) -> Progress:
        """Wait until the progress page's log holds every message, each as a prefix of one."""

        def shown() -> Progress | None:
            progress = self.progress()
            every = all(
                any(line.startswith(message) for line in progress.messages) for message in messages
            )
            return progress if every else None

        return self.wait(shown, what=f"progress events {list(messages)}")

    def follow_progress(self, username: str) -> list[str]:
        """Read the progress page until the hub sends the browser to the lab.

        Returns every message the page showed, in order, across the page's
        reloads: a step shown for a moment between two reads of
        `wait_for_progress` is not lost.
        """
        seen: list[str] = []
        prefix = f"/user/{username}/"

        def at_lab() -> bool:
            if self.path.startswith(prefix):
                return True
            try:
                events = self.driver.find_elements(
                    By.CSS_SELECTOR, "#progress-log .progress-log-event"
                )
                shown = [str(event.get_attribute("textContent")).strip() for event in events]
            except StaleElementReferenceException:
                return False  # The page is reloading: read it again.
            seen.extend(message for message in shown[len(seen) :] if message)
            return False

        self.wait(at_lab, what=f"the browser at {prefix}")
        return seen

    def wait_for_lab(self, username: str) -> str:
        """Wait for the hub to send the browser to the user's server; return the URL's path."""
        prefix = f"/user/{username}/"
        self.wait(lambda: self.path.startswith(prefix), what=f"the browser at {prefix}")
        return self.path

    def page_text(self) -> str:
        """The text of the page's body, as shown."""
        return self.find(By.TAG_NAME, "body").text

    def stop_server(self) -> None:
        """Press "Stop My Server" on the hub's home page; wait until the hub says stopped."""
        self.open("/hub/home")
        stop = self.find(By.ID, "stop")
        stop.click()
        start = self.find(By.ID, "start")
        self.wait(
            lambda: not stop.is_displayed() and start.text.strip() == "Start My Server",
            what='the home page showing "Start My Server" only',
        )

    def screenshot(self, name: str) -> Path | None:
        """Save the page as ``<screenshots>/<name>.png``, if screenshots are wanted."""
        if self.screenshots is None:
            return None
        self.screenshots.mkdir(parents=True, exist_ok=True)
        path = self.screenshots / f"{name}.png"
        path.write_bytes(self.driver.get_screenshot_as_png())
        return path

    def find(self, by: str, value: str) -> WebElement:
        """Wait for an element to be on the page and return it."""
        return self.wait(
            lambda: next(iter(self.driver.find_elements(by, value)), None),
            what=f"{value!r} on the page",
        )

    def wait(self, check: Callable[[], T | None], *, what: str) -> T:
        """Poll ``check`` until it returns something true; fail after `timeout` seconds."""
        return wait_for(self.driver, check, what=what, timeout=self.timeout)


@contextmanager
def hub_browser(hub_url: str, *, timeout: float = 60.0) -> Iterator[HubBrowser]:
    """A person's browser on a hub, saving screenshots where ``LABD_SCREENSHOTS`` says.

    With ``LABD_SCREENSHOTS=<directory>`` `HubBrowser.screenshot` saves PNG
    files there (the docs' pictures come from ``LABD_SCREENSHOTS=docs/images``);
    otherwise it saves nothing.
    """
    screenshots = os.environ.get("LABD_SCREENSHOTS")
    with chromium() as driver:
        yield HubBrowser(
            driver=driver,
            hub_url=hub_url,
            screenshots=Path(screenshots) if screenshots else None,
            timeout=timeout,
        )


def wait_for(driver: WebDriver, check: Callable[[], T | None], *, what: str, timeout: float) -> T:
    """Poll ``check`` until it returns something true, or fail with the page's text.

    A page that changes while it is read (the progress page reloads when the
    lab is ready) only means "not yet".
    """

    def poll(_: WebDriver) -> T | Literal[False]:
        try:
            result = check()
        except StaleElementReferenceException:
            return False
        return False if result is None else result

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(poll)
    except TimeoutException:
        body = driver.find_elements(By.TAG_NAME, "body")
        shown = body[0].text if body else "(no page)"
        raise AssertionError(
            f"{what}: not within {timeout} s, at {driver.current_url}\n{shown[-2000:]}"
        ) from None


def run_in_notebook(driver: WebDriver, code: str, *, timeout: float = 120.0) -> str:
    """In JupyterLab 4, open a new notebook, run ``code`` in its first cell; return the output.

    Starts from any JupyterLab page that shows the launcher (a new lab
    does). Waits for the status bar to show the kernel idle before typing,
    and returns the text of the cell's first output. A cell run before the
    notebook is attached to its kernel is not executed at all (its prompt
    stays ``[ ]``), so a cell that shows neither output nor a busy prompt
    after a while is run again, as a person would.
    """
    panel = ".jp-NotebookPanel:not(.lm-mod-hidden)"

    def step(check: Callable[[], T | None], what: str, *, within: float = timeout) -> T:
        return wait_for(driver, check, what=what, timeout=within)

    def first(selector: str) -> WebElement | None:
        return next(iter(driver.find_elements(By.CSS_SELECTOR, selector)), None)

    def kernel_idle() -> bool:
        items = driver.find_elements(By.CSS_SELECTOR, ".jp-StatusBar-TextItem")
        return any(str(item.text).endswith("| Idle") for item in items)

    step(
        lambda: first('.jp-LauncherCard[data-category="Notebook"]'),
        "JupyterLab's launcher with a notebook kernel",
    ).click()
    step(lambda: first(f"{panel} .jp-Cell .cm-content") and kernel_idle(), "the kernel idle")
    editor = step(lambda: first(f"{panel} .jp-Cell .cm-content"), "the notebook's first cell")
    editor.click()
    editor.send_keys(code)
    deadline = time.monotonic() + timeout
    while True:
        editor.send_keys(Keys.SHIFT, Keys.ENTER)
        try:
            output = step(
                lambda: first(f"{panel} .jp-Cell:first-child .jp-OutputArea-output"),
                f"the output of {code!r}",
                within=max(1.0, min(20.0, deadline - time.monotonic())),
            )
        except AssertionError:
            prompt = first(f"{panel} .jp-Cell:first-child .jp-InputPrompt")
            busy = prompt is not None and "*" in str(prompt.text)
            if time.monotonic() >= deadline:
                raise
            if busy:
                output = step(
                    lambda: first(f"{panel} .jp-Cell:first-child .jp-OutputArea-output"),
                    f"the output of {code!r}",
                    within=max(1.0, deadline - time.monotonic()),
                )
                return str(output.text).strip()
            editor.click()  # Back in the first cell, to run it again.
            continue
        return str(output.text).strip()


def save_notebook(driver: WebDriver, *, timeout: float = 60.0) -> None:
    """Save the notebook shown in JupyterLab (Ctrl+S); wait until its tab is clean.

    A person saves before leaving; an unsaved notebook also makes JupyterLab
    ask "leave the page?" when the browser goes elsewhere. The first save of
    a new notebook asks for a name: the proposed one is accepted.
    """
    ActionChains(driver).key_down(Keys.CONTROL).send_keys("s").key_up(Keys.CONTROL).perform()

    def saved() -> bool:
        for accept in driver.find_elements(By.CSS_SELECTOR, ".jp-Dialog button.jp-mod-accept"):
            accept.click()
            return False
        return not driver.find_elements(By.CSS_SELECTOR, ".jp-mod-current.jp-mod-dirty")

    wait_for(driver, saved, what="the notebook saved", timeout=timeout)
