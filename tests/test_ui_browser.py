"""The Dagster UI as a user drives it: `dagster dev` on 127.0.0.1 with a temporary DAGSTER_HOME,
headless Debian Chromium driven by Playwright (no browser download).

The test opens the `corpus` job, clicks "Materialize all", follows the launched run until it
succeeds, then reads the new version's metadata and its lineage from the asset pages and
checks them against the versioned store. Then it edits one recipe field, reloads the code
location from the UI, and checks that "Materialize unsynced" offers exactly the two assets that
read the field and re-runs only those. Screenshots land in test-artifacts/ui/ (the README's
operator's guide uses them). The server is stopped by its PID, its process group killed if it
does not go.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from nanbeige_data.recipe import RECIPES_DIR
from nanbeige_data.store.versioned import VersionedStore

playwright = pytest.importorskip("playwright.sync_api")

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "ui"
CHROMIUM = os.environ.get("NANBEIGE_CHROMIUM", "/usr/bin/chromium")
# Flags for a root, offline machine: no sandbox, no GPU, no calls home (refused connections).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RUN_TIMEOUT_S = 300

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dagster dev exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(
        f"dagster dev did not answer at {url} in {timeout:.0f} s:\n{log.read_text()[-3000:]}"
    )


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's PID (dagster dev stops its webserver, daemon and code servers),
    then SIGKILL to its whole process group if anything is left."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
    with_group = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True)
    if with_group.stdout.strip():
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture
def dagster_ui(tmp_path):
    """`dagster dev` on a free local port: temporary DAGSTER_HOME, store and a small recipe."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    raw = yaml.safe_load((RECIPES_DIR / "tiny.yaml").read_text())
    for domain in ("web", "books", "code", "papers"):
        raw["corpus"][domain]["max_bytes"] = 60_000
    recipe = tmp_path / "ui.yaml"
    recipe.write_text(yaml.safe_dump({**raw, "name": "ui"}, sort_keys=False))
    store = tmp_path / "store"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "dagster-dev.log"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "NANBEIGE_STORE": str(store),
        "NANBEIGE_RECIPE": str(recipe),
    }
    dagster = Path(sys.executable).parent / "dagster"
    with log.open("w") as out:
        # `env --default-signal`: a server started from a background job would otherwise
        # inherit an ignored SIGINT/SIGTERM and never shut down.
        proc = subprocess.Popen(
            ["env", "--default-signal=INT,TERM", str(dagster), "dev", "-h", "127.0.0.1"]
            + ["-p", str(port), "-w", str(REPO / "workspace.yaml")],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for_server(url, proc, log)
        yield {"url": url, "store": VersionedStore(store), "log": log, "recipe": recipe}
    finally:
        _stop(proc)
        shutil.copy(log, ARTIFACTS / "dagster-dev.log") if ARTIFACTS.exists() else None
    assert proc.poll() is not None, "dagster dev is still running"


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium "
            "(or set NANBEIGE_CHROMIUM to another Chromium binary)"
        )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("failure.*"):
        old.unlink()
    with playwright.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _dismiss_community_dialog(page) -> None:
    """Dagster's first-visit "Join the community" dialog: skip it, as a user would."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(timeout=3000)
        skip.click()
    except playwright.TimeoutError:
        pass


def test_materialize_from_the_ui_and_read_metadata_and_lineage(dagster_ui, browser):
    url, store = dagster_ui["url"], dagster_ui["store"]
    expect = playwright.expect
    expect.set_options(timeout=60_000)  # the graph renders after the code location loads
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    try:
        _drive(page, url, store, expect)
        _rerun_unsynced(page, url, store, expect, dagster_ui["recipe"])
    except BaseException:
        page.screenshot(path=ARTIFACTS / "failure.png")  # what the page showed when it broke
        (ARTIFACTS / "failure.txt").write_text(f"{page.url}\n\n{page.inner_text('body')}")
        raise


def _drive(page, url: str, store: VersionedStore, expect) -> None:

    # 1. the corpus job's asset graph; launch a materialization of its five assets
    page.goto(f"{url}/locations/nanbeige/jobs/corpus")
    materialize = page.get_by_role("button", name="Materialize all")
    materialize.wait_for()
    _dismiss_community_dialog(page)
    expect(page.get_by_text("View 5 assets")).to_be_visible()
    expect(page.get_by_text("raw_web", exact=True).first).to_be_visible()
    page.screenshot(path=ARTIFACTS / "01-job-graph.png")
    materialize.click()

    # 2. the toast links to the launched run; wait there until the run succeeds
    page.get_by_text("Launched run").wait_for()
    page.get_by_role("link", name="View", exact=True).first.click()
    expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]+$"))
    expect(page.get_by_text("Success", exact=True).first).to_be_visible(
        timeout=RUN_TIMEOUT_S * 1000
    )
    page.screenshot(path=ARTIFACTS / "02-run-succeeded.png")

    # 3. the asset page shows the version the store committed, and its lineage as links
    summary = store.require("corpus_summary")
    raw_web = store.get("raw_web", summary.manifest["inputs"]["raw_web"]["version_id"])
    page.goto(f"{url}/assets/corpus_summary")
    expect(page.get_by_text(summary.version_id, exact=True).first).to_be_visible()
    lineage_row = page.locator("tr", has=page.get_by_text("lineage", exact=True)).first
    lineage_row.scroll_into_view_if_needed()
    expect(lineage_row).to_contain_text(raw_web.version_id)
    links = {
        link.inner_text(): link.get_attribute("href")
        for link in lineage_row.get_by_role("link").all()
    }
    assert links == {k: f"/assets/{k}" for k in ("corpus_summary", *_raw_keys())}
    assert page.get_by_text("recipe_hash", exact=True).count() == 1
    page.screenshot(path=ARTIFACTS / "03-asset-metadata-lineage.png")

    # 4. a lineage link leads to the input version's own page
    lineage_row.get_by_role("link", name="raw_web").click()
    expect(page).to_have_url(f"{url}/assets/raw_web")
    expect(page.get_by_text(raw_web.version_id, exact=True).first).to_be_visible()

    # 5. the Lineage tab: the graph of corpus_summary's parents, all materialized
    page.goto(f"{url}/assets/corpus_summary?view=lineage")
    for key in _raw_keys():
        expect(page.get_by_text(key, exact=True).first).to_be_visible()
    expect(page.get_by_text("Materialized", exact=True)).to_have_count(5, timeout=30_000)
    page.screenshot(path=ARTIFACTS / "04-lineage-graph.png")

    # what the UI launched is what the store holds: one version per asset, nothing staged
    for key in ("corpus_summary", *_raw_keys()):
        assert len(store.versions(key)) == 1, key
        assert not list(Path(store.root, key).glob(".staging-*")), key


def _rerun_unsynced(page, url: str, store: VersionedStore, expect, recipe: Path) -> None:
    """6. edit one recipe field, reload the code location from the UI: exactly the assets that
    read the field are unsynced, and materializing them re-runs those and nothing else."""
    raw = yaml.safe_load(recipe.read_text())
    raw["corpus"]["web"]["max_bytes"] = 40_000  # one field of the web domain
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    before = {k: store.require(k).version_id for k in ("corpus_summary", *_raw_keys())}

    page.goto(f"{url}/locations")
    page.get_by_role("button").filter(has_text=re.compile(r"^Reload$")).first.click()
    dialog = page.get_by_role("dialog").filter(has_text="Materialize unsynced assets")
    deadline = time.monotonic() + 120
    while True:  # until the reloaded code versions reach the page
        page.goto(f"{url}/locations/nanbeige/jobs/corpus")
        page.get_by_role("button", name="Materialize all").wait_for()
        page.get_by_role("button", name="arrow_drop_down").first.click()
        page.get_by_role("menuitem", name="Materialize unsynced").click()
        with contextlib.suppress(AssertionError):  # "All assets are up to date": not yet
            expect(dialog.get_by_text("raw_web").first).to_be_visible(timeout=5000)
            break
        assert time.monotonic() < deadline, (
            f"the reloaded code location never showed unsynced: {_code_versions(url)}"
        )
        time.sleep(2)
    expect(dialog.get_by_text("corpus_summary").first).to_be_visible()
    for key in ("raw_books", "raw_code", "raw_papers"):
        expect(dialog.get_by_text(key)).to_have_count(0)
    expect(dialog.get_by_role("button", name="Materialize 2 assets")).to_be_visible()
    page.wait_for_timeout(800)  # the dialog's fade-in, for a clear screenshot
    page.screenshot(path=ARTIFACTS / "05-materialize-unsynced.png")
    dialog.get_by_role("button", name="Materialize 2 assets").click()

    page.get_by_text("Launched run").first.wait_for()
    page.get_by_role("link", name="View", exact=True).first.click()
    expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]+$"))
    expect(page.get_by_text("Success", exact=True).first).to_be_visible(
        timeout=RUN_TIMEOUT_S * 1000
    )
    for key, old in before.items():
        versions = [v.version_id for v in store.versions(key)]
        if key in ("raw_web", "corpus_summary"):
            assert versions[0] == old and len(versions) == 2, key  # re-run, old version kept
        else:
            assert versions == [old], key  # left alone


def _code_versions(url: str) -> dict[str, str]:
    """The code versions the webserver holds (for failure messages)."""
    query = b'{"query": "{ assetNodes { assetKey { path } opVersion } }"}'
    request = urllib.request.Request(
        f"{url}/graphql", data=query, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        nodes = json.loads(resp.read())["data"]["assetNodes"]
    return {"/".join(n["assetKey"]["path"]): n["opVersion"] for n in nodes}


def _raw_keys() -> tuple[str, ...]:
    return ("raw_books", "raw_code", "raw_papers", "raw_web")
