"""A PNG of the results dashboard, for the README: ``make dashboard-screenshot``.

Owns driving headless Chromium over a rendered ``index.html``: one run measures
the page's height (a copy of the page with a one-line script that writes
``scrollHeight`` into the DOM, read back with ``--dump-dom``), a second one
takes the screenshot at that height, so the picture holds the whole page
without blank space.  Every Chromium process of a run is killed afterwards
(they share a process group); the profile is a temporary directory.

    python -m bench.report.screenshot [--results DIR] [--out docs/dashboard.png] [--width 1400]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.report.dashboard import DashboardError, render
from harness import paths

CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--no-default-browser-check", "--disable-extensions", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-breakpad", "--hide-scrollbars", "--force-device-scale-factor=1")
_HEIGHT_PROBE = ('<script>document.addEventListener("DOMContentLoaded",()=>{const p='
                 'document.createElement("pre");p.id="cb-height";p.textContent='
                 'document.documentElement.scrollHeight;document.body.appendChild(p);});</script>')
MAX_HEIGHT = 16384


class ScreenshotError(RuntimeError):
    """Chromium is missing or failed."""


def chromium() -> str:
    found = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(found, os.X_OK):
        raise ScreenshotError("chromium is not installed (ci/install-deps.sh installs it)")
    return found


def run_chromium(args: list[str], profile: str, timeout: float = 60) -> str:
    """Stdout of one headless Chromium run with *args*, in its own session and
    *profile*; every process of the run is killed afterwards."""
    cmd = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        out, err = b"", f"did not finish in {timeout:.0f} s".encode()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)   # zygote and crashpad share the group
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise ScreenshotError(f"chromium exited {proc.returncode}: {tail[0]}")
    return out.decode(errors="replace")


def page_height(page: Path, width: int, profile: str) -> int:
    """The rendered height of *page* at *width* pixels."""
    with tempfile.TemporaryDirectory(prefix="cb-shot-") as tmp:
        probe = Path(tmp) / "probe.html"
        probe.write_text(page.read_text().replace("</body>", _HEIGHT_PROBE + "</body>", 1))
        dom = run_chromium([f"--window-size={width},1000", "--dump-dom", probe.as_uri()], profile)
    found = re.search(r'<pre id="cb-height">(\d+)</pre>', dom)
    if not found:
        raise ScreenshotError("could not measure the page's height")
    return min(int(found.group(1)), MAX_HEIGHT)


def screenshot(results: Path, out: Path, width: int = 1400) -> tuple[Path, int]:
    """Render the dashboard of *results* and write its PNG to *out*; return (out, height)."""
    results = Path(results).resolve()
    page = render(results, results / "index.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cb-chromium-") as profile:
        height = page_height(page, width, profile)
        run_chromium([f"--window-size={width},{height}", f"--screenshot={out.resolve()}", page.as_uri()],
             profile)
    if not out.exists() or out.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        raise ScreenshotError(f"{out}: chromium wrote no PNG")
    return out, height


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report.screenshot", description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=paths.RESULTS)
    parser.add_argument("--out", type=Path, default=paths.ROOT / "docs" / "dashboard.png")
    parser.add_argument("--width", type=int, default=1400)
    args = parser.parse_args(argv)
    try:
        out, height = screenshot(args.results, args.out, args.width)
    except (DashboardError, ScreenshotError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, DashboardError) else 1
    print(f"wrote {out} ({args.width}x{height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
