"""Helpers for the real-browser test: a `streamlit run` server, Debian's chromium, waits.

The browser is Debian's ``/usr/bin/chromium`` driven by Playwright (python); Playwright's own
browser downloads are never used. ``scripts/install.sh`` installs both.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS_ENV = "FSL_APP_SCREENSHOTS"
INSTALL_HINT = "run `bash scripts/install.sh` (it installs Debian's chromium and playwright)"


def require_browser():
    """Playwright's ``sync_playwright``; fails (never skips) when it or chromium is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        pytest.fail(f"The browser test needs playwright (python): {err}; {INSTALL_HINT}.")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"The browser test needs chromium at {CHROMIUM}; {INSTALL_HINT}.")
    return sync_playwright


def screenshot_dir() -> Path:
    """``$FSL_APP_SCREENSHOTS``, else ``<repo>/test-artifacts/browser``; old PNGs removed."""
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or REPO / "test-artifacts" / "browser")
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    return folder


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StreamlitServer:
    """``streamlit run app.py`` on a free localhost port with its own data folder and cache."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = dict(os.environ)
        env.update(
            FSL_APP_DATA=str(data_dir),
            FSL_APP_CACHE=str(data_dir / "embeddings.sqlite"),
            HF_HUB_OFFLINE="1",
        )
        command = [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.headless",
            "true",
            "--server.port",
            str(self.port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
            # Others may edit the checkout while the test runs: no reruns or prompts from that.
            "--server.fileWatcherType",
            "none",
        ]
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as a whole in stop()
        )

    def log_tail(self, lines: int = 40) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def wait_healthy(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"streamlit exited with status {self.process.returncode} before answering:\n"
                    + self.log_tail()
                )
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=5) as reply:
                    if reply.read().decode().strip() == "ok":
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        pytest.fail(f"streamlit did not answer 'ok' within {timeout:.0f} s:\n" + self.log_tail())

    def stop(self) -> None:
        """SIGTERM to the server's process group; SIGKILL to it if it is still there in 15 s."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=15)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)
        self._log.close()


def wait_idle(page, timeout_ms: float = 120_000) -> None:
    """Wait until the app is connected and its script is not running (nor asked to rerun)."""
    page.locator(
        '[data-testid="stApp"][data-test-connection-state="CONNECTED"]'
        '[data-test-script-state="notRunning"]'
    ).wait_for(state="attached", timeout=timeout_ms)


def wait_text(page, text: str | re.Pattern, timeout_ms: float = 120_000):
    """The first visible element showing ``text``, once it is there; then the app is idle."""
    found = page.get_by_text(text).first
    found.wait_for(state="visible", timeout=timeout_ms)
    wait_idle(page, timeout_ms)
    return found


class Screenshots:
    """Numbered full-page screenshots, one per step, in one folder."""

    def __init__(self, page, folder: Path) -> None:
        self.page = page
        self.folder = folder
        self.taken: list[Path] = []

    def take(self, name: str) -> Path:
        """Screenshot the whole page: Streamlit scrolls inside its own container, not the
        document, so the window is made as tall as that content for the shot."""
        path = self.folder / f"{len(self.taken) + 1:02d}-{name}.png"
        viewport = self.page.viewport_size
        height = self.page.evaluate(_CONTENT_HEIGHT_JS)
        if viewport and height > viewport["height"]:
            self.page.set_viewport_size({"width": viewport["width"], "height": height})
        try:
            self.page.screenshot(path=str(path), full_page=True)
        finally:
            if viewport:
                self.page.set_viewport_size(viewport)
        self.taken.append(path)
        return path


# The tallest scrolled content on the page (capped, so one screenshot stays a sane size).
_CONTENT_HEIGHT_JS = """() => {
    let height = document.documentElement.scrollHeight;
    for (const el of document.querySelectorAll("*")) {
        const overflow = getComputedStyle(el).overflowY;
        if ((overflow === "auto" || overflow === "scroll") && el.scrollHeight > el.clientHeight) {
            height = Math.max(height, el.scrollHeight + (window.innerHeight - el.clientHeight));
        }
    }
    return Math.min(Math.ceil(height), 8000);
}"""
