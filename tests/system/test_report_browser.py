"""The report of the tiny end-to-end run, opened in headless Chromium.

Uses the tiny workflow run of the session (conftest's `tiny_run`, 1-2 minutes, shared with the
other end-to-end tests), renders `snakemake --report report.html`, then:

  * screenshots the landing page, the Overview page and a drift heatmap into the artifact folder
    ($FTDRIFT_TEST_ARTIFACTS, default <repo>/test-artifacts/report/), kept after the test;
  * loads a probe copy of the report that records script errors and failed resource loads,
    walks every category, subcategory and result the way a reader's clicks would, decodes
    every image, and writes what it saw into the DOM, which --dump-dom returns.

Chromium is never installed here: without it the test skips, except in CI (CI=true), where
it fails. Network access is blocked for the browser, so the report must work offline.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ftdrift.testing import REPO, run_snakemake

CATEGORIES = ["Overview", "Performance", "Drift", "Training", "Methods", "Forgetting"]  # + "Weight space" once weights.csv exists
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
    # offline: any lookup of a host name fails, so a report that fetched anything would show errors
    "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
]


def chromium() -> str:
    """Path of the browser, or skip (locally) / fail (CI) when there is none."""
    override = os.environ.get("FTDRIFT_CHROMIUM")
    for name in ([override] if override else []) + list(CHROMIUM_NAMES):
        path = shutil.which(name) if name else None
        if path:
            return path
    message = ("headless Chromium not found (Debian: apt-get install chromium; or set FTDRIFT_CHROMIUM)")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " -- required in CI")
    pytest.skip(message)


def artifact_dir() -> Path:
    folder = Path(os.environ.get("FTDRIFT_TEST_ARTIFACTS", REPO / "test-artifacts")) / "report"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run_chromium(browser: str, profile: Path, *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    cmd = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


PROBE_HEAD = """<script>
window.__ftdrift = {errors: [], resourceErrors: [], consoleErrors: []};
window.addEventListener("error", function (event) {
  var t = event.target;
  if (t && t !== window && (t.src || t.href)) {
    window.__ftdrift.resourceErrors.push(String(t.src || t.href).slice(0, 200));
  } else {
    window.__ftdrift.errors.push(String(event.message) + " @" + event.lineno);
  }
}, true);
window.addEventListener("unhandledrejection", function (event) {
  window.__ftdrift.errors.push("unhandled rejection: " + String(event.reason));
});
(function () {
  var original = console.error;
  console.error = function () {
    window.__ftdrift.consoleErrors.push(Array.prototype.map.call(arguments, String).join(" ").slice(0, 500));
    return original.apply(console, arguments);
  };
})();
</script>"""

# Walks the report like a reader: every category, subcategory (its label table is where a bad
# label toggle crashes React), every result's info panel and its view; decodes every image.
PROBE_BODY = """<script>
(async function () {
  var sleep = function (ms) { return new Promise(function (r) { setTimeout(r, ms); }); };
  var out = {categories: {}, menu: "", landing: "", visited: 0, images: 0, badImages: [], html: 0, rows: {},
             subcategoryText: {}, done: false};
  try {
    await sleep(300);
    out.menu = (document.querySelector("nav") || document.body).innerText;
    out.landing = document.body.innerText.slice(0, 20000);
    for (var cat of Object.keys(categories)) {
      out.categories[cat] = {};
      app.showCategory(cat);
      await sleep(30);
      for (var sub of Object.keys(categories[cat])) {
        out.categories[cat][sub] = categories[cat][sub].length;
        app.setView({navbarMode: "subcategory", category: cat, subcategory: sub});
        await sleep(30);
        out.rows[cat + " / " + sub] = document.querySelectorAll("table tbody tr").length;
        out.subcategoryText[cat + " / " + sub] = document.body.innerText.slice(0, 3000);
        for (var path of categories[cat][sub]) {
          var entry = results[path];
          app.showResultInfo(path);
          await sleep(5);
          var mime = entry.mime_type || "";
          if (mime.indexOf("image/") === 0) {
            app.setView({content: "img", contentPath: entry.data_uri, resultPath: path});
            var img = new Image();
            img.src = entry.data_uri;
            try {
              await img.decode();
              if (!img.naturalWidth) { out.badImages.push(path + " (zero width)"); } else { out.images += 1; }
            } catch (e) { out.badImages.push(path + ": " + e); }
          } else if (mime === "text/html") {
            app.setView({content: "html", contentPath: entry.data_uri, resultPath: path});
            out.html += 1;
          }
          await sleep(5);
          out.visited += 1;
        }
      }
    }
    out.done = true;
  } catch (e) {
    window.__ftdrift.errors.push("probe: " + e + " " + (e && e.stack ? e.stack.slice(0, 500) : ""));
  }
  await sleep(50);
  out.errors = window.__ftdrift.errors;
  out.resourceErrors = window.__ftdrift.resourceErrors;
  out.consoleErrors = window.__ftdrift.consoleErrors;
  var pre = document.createElement("pre");
  pre.id = "ftdrift-probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"""

def show_result(category: str, subcategory_hint: str, content: str) -> str:
    """A script that opens the first result of a category's subcategory, as a reader's clicks would."""
    return """<script>
(async function () {
  var sleep = function (ms) { return new Promise(function (r) { setTimeout(r, ms); }); };
  await sleep(300);
  var cat = %s, hint = %s;
  var sub = Object.keys(categories[cat] || {}).find(function (s) { return s.indexOf(hint) >= 0; });
  if (!sub) { return; }
  var path = categories[cat][sub][0];
  app.showCategory(cat);
  await sleep(50);
  app.setView({navbarMode: "subcategory", category: cat, subcategory: sub});
  await sleep(50);
  app.setView({content: %s, contentPath: results[path].data_uri, resultPath: path});
})();
</script>""" % (json.dumps(category), json.dumps(subcategory_hint), json.dumps(content))


def inject(report: Path, target: Path, head: str = "", body: str = "") -> Path:
    text = report.read_text(encoding="utf-8")
    assert "<head>" in text and "</body>" in text
    text = text.replace("<head>", "<head>" + head, 1)
    idx = text.rindex("</body>")
    target.write_text(text[:idx] + body + text[idx:], encoding="utf-8")
    return target


def probe_report(browser: str, report: Path, workdir: Path) -> dict:
    probe = inject(report, workdir / "report-probe.html", PROBE_HEAD, PROBE_BODY)
    proc = run_chromium(browser, workdir / "chromium-probe", "--virtual-time-budget=120000", "--dump-dom",
                        probe.as_uri(), timeout=300)
    match = re.search(r'<pre id="ftdrift-probe">(.*?)</pre>', proc.stdout, flags=re.S)
    assert match, f"the probe did not finish (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(html.unescape(match.group(1)))


def screenshot(browser: str, page: Path, target: Path, profile: Path) -> Path:
    if target.exists():
        target.unlink()
    proc = run_chromium(browser, profile, "--window-size=1600,1000", "--virtual-time-budget=15000",
                        f"--screenshot={target}", page.as_uri())
    assert target.exists() and target.stat().st_size > 10_000, f"no screenshot (rc {proc.returncode}):\n{proc.stderr}"
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return target


@pytest.fixture(scope="module")
def tiny_report(tiny_run):
    """The report of the tiny end-to-end run (`tiny_run`: conftest's session fixture, run once)."""
    workdir = Path(tiny_run)
    report = workdir / "report-browser" / "report.html"
    report.parent.mkdir(exist_ok=True)
    run_snakemake(workdir, "--report", str(report))
    return report.parent, report


def test_report_is_self_contained(tiny_report):
    _, report = tiny_report
    text = report.read_text(encoding="utf-8")
    # everything is inlined: no script, style sheet or image is fetched from anywhere
    assert not re.search(r"<script[^>]+src=", text)
    assert not re.search(r"<link[^>]+href=[\"']https?:", text)
    assert not re.search(r"<img[^>]+src=[\"']https?:", text)


@pytest.mark.slow
def test_report_opens_in_headless_chromium(tiny_report):
    browser = chromium()
    workdir, report = tiny_report
    artifacts = artifact_dir()
    landing = screenshot(browser, report, artifacts / "report-landing.png", workdir / "chromium-shot")
    for name, (category, hint, content) in {"drift-heatmap": ("Drift", "heatmap", "img"),
                                             "overview": ("Overview", "", "html")}.items():
        page = inject(report, workdir / f"report-{name}.html", body=show_result(category, hint, content))
        screenshot(browser, page, artifacts / f"report-{name}.png", workdir / f"chromium-{name}")
    shutil.copy(report, artifacts / "report.html")

    seen = probe_report(browser, report, workdir)
    (artifacts / "probe.json").write_text(json.dumps(seen, indent=2))
    assert seen["done"], seen["errors"]
    assert seen["errors"] == [], seen["errors"]
    assert seen["consoleErrors"] == [], seen["consoleErrors"]
    assert seen["resourceErrors"] == [], seen["resourceErrors"]  # nothing fetched: works offline
    for category in CATEGORIES:
        assert category in seen["categories"], sorted(seen["categories"])
        assert category in seen["menu"], seen["menu"]  # listed in the left-hand menu
    # the landing page is the study description, with the headline numbers filled in
    assert "finished (" in seen["landing"] and "H1 (within tolerance of full)" in seen["landing"]
    assert "No overview computed yet" not in seen["landing"]
    total = sum(n for subs in seen["categories"].values() for n in subs.values())
    assert seen["visited"] == total > 0
    assert seen["badImages"] == []
    assert seen["images"] > 0 and seen["html"] >= 2  # SVG figures; overview and table pages
    # every subcategory renders its label table
    assert all(rows > 0 for rows in seen["rows"].values()), seen["rows"]
    drift = seen["categories"]["Drift"]
    assert {"Layer × step heatmaps", "Final-step drift by layer", "Drift over training",
            "Validation metric vs drift"} <= set(drift)
    assert "Per-run diagnostics" in seen["categories"]["Training"]
    # the method axis: ranking, Pareto view and each pair; the intruder intervention beside the
    # other intruder figures (its figure decoded above, as every image)
    assert {"Closeness to the reference", "Pareto view", "Same layer over training"} <= set(seen["categories"]["Methods"])
    weights = seen["subcategoryText"].get("Weight space / Intruder dimensions", "")
    assert "intervention: accuracy and forgetting vs λ" in weights, weights[:500]
    assert landing.exists()
