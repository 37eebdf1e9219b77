"""The portfolio's checks: every page opened in headless Chromium (selenium and Debian's chromedriver) with its
console errors, links and images counted, a screenshot of the index; and every number a page printed from a
record formatted again from that record and compared, page by page as many as the build printed."""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlparse

from impl.core.errors import MilestonesError
from impl.core.scorecard import format_number
from impl.w23_portfolio.site import NUMBER_MARKUP, SOURCE_DIR, printed_numbers, resolve

IDS = re.compile(r'\b(?:id|name)="([^"]+)"')


class BrowserMissing(MilestonesError):
    pass


def browser_paths() -> tuple[str, str]:
    """Debian's chromium and chromedriver (bootstrap.sh installs both), or BrowserMissing saying what to install."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
    missing = [n for n, p in (("chromium", chromium), ("chromium-driver", driver)) if p is None]
    if missing:
        raise BrowserMissing(f"no {' or '.join(missing)} on this machine: apt-get install {' '.join(missing)} "
                             f"(bash bootstrap.sh does it as root)")
    return chromium, driver


def pages_of(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob("*.html") if SOURCE_DIR not in p.relative_to(site).parts)


@lru_cache(maxsize=256)
def _ids(path: str, mtime: float) -> frozenset:
    return frozenset(html.unescape(i) for i in IDS.findall(Path(path).read_text(errors="replace")))


def link_problem(url: str, site: Path) -> str | None:
    """Why a link the browser resolved is broken, or None: it must stay on the site, reach a file, and its
    fragment must be an id on the page it names."""
    u = urlparse(url)
    if u.scheme in ("javascript", "data", "about", "blob"):
        return None
    if u.scheme != "file":
        return f"{url}: leaves the site (it must render offline)"
    path = Path(unquote(u.path))
    if path.is_dir():
        path = path / "index.html"
    try:
        path.resolve().relative_to(site.resolve())
    except ValueError:
        return f"{url}: outside the site"
    if not path.is_file():
        return f"{url}: no such file"
    frag = unquote(u.fragment)
    if frag and path.suffix == ".html" and frag not in _ids(str(path), path.stat().st_mtime):
        return f"{url}: no element with id {frag!r}"
    return None


IMAGES_JS = ("return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
             ".map(i => i.currentSrc || i.src)")
LINKS_JS = "return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"
RESOURCES_JS = ("return Array.from(document.querySelectorAll('link[rel=stylesheet][href], script[src]'))"
                ".map(e => e.href || e.src)")


def browse(site: Path, screenshot: Path | None = None, window: tuple[int, int] = (1200, 900)) -> dict:
    """Open every page of the built site from disk; returns pages, console_errors, broken_links, broken_images
    (each a list of 'page: what'), links and images checked, and the screenshot's path."""
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = browser_paths()
    site = Path(site).resolve()
    pages = pages_of(site)
    profile = tempfile.mkdtemp(prefix="w23-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
              "--allow-file-access-from-files", f"--window-size={window[0]},{window[1]}", f"--user-data-dir={profile}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    out = {"pages": len(pages), "console_errors": [], "broken_links": [], "broken_images": [], "links_checked": 0,
           "images_checked": 0, "screenshot": None}
    try:
        driver = webdriver.Chrome(options=opts, service=Service(driver_path))
    except WebDriverException as e:
        shutil.rmtree(profile, ignore_errors=True)
        raise BrowserMissing(f"chromedriver could not start chromium: {str(e).strip()[:400]}") from None
    try:
        for page in pages:
            name = str(page.relative_to(site))
            driver.get(page.as_uri())
            driver.execute_script("return document.readyState")
            out["console_errors"] += [f"{name}: {e['message']}" for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            out["broken_images"] += [f"{name}: {src}" for src in driver.execute_script(IMAGES_JS)]
            out["images_checked"] += driver.execute_script("return document.images.length")
            links = driver.execute_script(LINKS_JS) + driver.execute_script(RESOURCES_JS)
            out["links_checked"] += len(links)
            out["broken_links"] += [f"{name}: {p}" for p in (link_problem(u, site) for u in links) if p]
        if screenshot is not None and (site / "index.html").exists():
            driver.get((site / "index.html").as_uri())
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(screenshot))
            out["screenshot"] = str(screenshot)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return out


def problems(result: dict) -> int:
    return len(result["console_errors"]) + len(result["broken_links"]) + len(result["broken_images"])


def _number_problem(page: str, address_text: str, spec: str, shown: str, card: dict, history: list) -> str | None:
    """Why one marked-up number is wrong, or None: its record, formatted as the page formatted it, must read
    exactly as shown (the precision printed, no tolerance beyond it)."""
    try:
        recorded = resolve(json.loads(address_text), card, history)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):  # an address that is no address
        return f"{page}: {shown} cites {address_text}, which no record holds"
    try:
        expected = format_number(recorded, spec)
    except (TypeError, ValueError):
        return f"{page}: shows {shown} for {address_text}, where the record holds {recorded!r} (not a number)"
    return None if shown == expected else f"{page}: shows {shown} for {address_text}, the record says {expected}"


def _count_problems(page: str, found: int, printed: int) -> list[str]:
    """One problem per number more or fewer than the build printed on the page."""
    if found < printed:
        return [f"{page}: a number the build printed from a record is gone ({found} of {printed} left: removed, "
                f"or no longer marked up)"] * (printed - found)
    return [f"{page}: {found} numbers cite records, the build printed {printed}"] * (found - printed)


def numbers_mismatched(site: Path, card: dict, history: list) -> tuple[int, list[str]]:
    """(numbers checked, problems): every number a page marks up against the record it cites, and per page the
    count of them against what the build printed (its manifest), so a number edited, removed or turned into plain
    text is a problem; so is a number citing no record."""
    site = Path(site)
    printed = dict(printed_numbers(site)["pages"])
    checked, bad = 0, []
    for page in pages_of(site):
        name = page.relative_to(site).as_posix()
        found = NUMBER_MARKUP.findall(page.read_text(errors="replace"))
        checked += len(found)
        for _tag, address, spec, shown in found:
            problem = _number_problem(name, html.unescape(address), html.unescape(spec), html.unescape(shown).strip(),
                                      card, history)
            bad += [problem] if problem else []
        bad += _count_problems(name, len(found), printed.pop(name, 0))
    for name, n in printed.items():  # a page the build wrote that is not there any more
        bad += _count_problems(name, 0, n)
    return checked, bad
