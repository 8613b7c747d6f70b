"""The MLflow UI in a real browser: what a person sees after a pipeline run.

A small pipeline run (LightGBM only, planted-signal candles, so the gate passes and version 1 gets the
``production`` alias) fills a SQLite store of its own (conftest's ``tiny_promoted``); ``mlflow server``
serves it on 127.0.0.1 and headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by
Selenium) opens it. The tests check the visible text of three pages and save a screenshot of each:

* the experiment's runs table: the pipeline run and its child runs ``tune-lightgbm`` and ``ensemble``,
  with the ``holdout_macro_f1`` value the store holds (``experiment-runs.png``);
* the pipeline run's page: its metrics and the tags ``gate`` and ``model_version`` (``run.png``), and an
  artifact of the ensemble run opened in the artifact viewer;
* the Model Registry: ``tiny-model`` version 1 with the ``production`` alias (``registered-model.png``).

Screenshots go to a temporary directory; with ``UPDATE_SCREENSHOTS=1`` they replace the ones in
``docs/screenshots/`` that docs/mlflow-ui.md shows.

The browser: Selenium is given ``/usr/bin/chromedriver`` and ``/usr/bin/chromium`` explicitly, so Selenium
Manager (which would look for, and download, a driver and a browser) never runs; the test makes that a
hard failure by replacing ``SeleniumManager.binary_paths`` while the driver starts. Without the two
binaries the tests fail in CI (``CI`` set; ``.ci/run`` installs them) and are skipped elsewhere.

MLflow 3.17 UI notes (found by looking at its pages):

* ``/#/experiments/<id>`` of an experiment without a kind opens a GenAI "Overview" of traces; the classic
  runs table is ``/#/experiments/<id>/runs?workflowType=machine_learning`` ("Model training" in the UI).
* On first load the UI opens an "MLflow Assistant" side panel, and the registry shows a "new Model Registry
  UI" promotion dialog; both are dismissed through the browser's localStorage (the keys the UI itself
  writes when a user closes them), set before the first page of the SPA loads. UI telemetry is off too.
* Child runs are folded under their parent until its expander (the button in the run-name cell) is
  clicked; metric and tag columns are added through the "Columns" selector, as a user would.
* Metric values appear unrounded, as JavaScript prints a number (``0.6754908391272028``).
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from models.registry import PRODUCTION
from tests.helpers import TINY_EXPERIMENT, TINY_MODEL
from tests.servers import LOCALHOST, mlflow_server

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.common.selenium_manager import SeleniumManager
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # reported by browser_unavailable(): a failure in CI, a skip elsewhere
    webdriver = None

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "docs" / "screenshots"
MAX_SCREENSHOT_BYTES = 400_000

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1440,900",
]
WIDTH, HEIGHT = 1440, 900
WAIT_S = 60
SEARCH_COLUMNS = "//input[@placeholder='Search columns']"  # the runs table's column selector

EXPERIMENT = TINY_EXPERIMENT  # "crypto-signals"
MODEL = TINY_MODEL
CHILD_RUNS = ("tune-lightgbm", "ensemble")

# localStorage entries the UI writes when a user dismisses these (key suffix _v1 = the UI's version 1).
UI_STORAGE = {
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",  # do not open the Assistant panel
    "mlflow.assistant.panelOpen_v1": "false",
    "_mlflow_model_registry_promo_modal_dismissed_v1": "true",  # "new Model Registry UI" dialog
    "mlflow.settings.telemetry.enabled_v1": "false",
    "mlflow.telemetry.info.alert.dismissed_v1": "true",
    "mlflow.workflowType_v1": '"machine_learning"',  # "Model training", not the GenAI views
}


# ------------------------------------------------------------------------------------------------ helpers


def js_number(x: float) -> str:
    """``x`` as the UI shows a metric: JavaScript's ``Number#toString`` (shortest round-trip digits, like
    Python's ``repr``; an integral value has no ``.0``). Exponent spellings differ below 1e-6: not needed."""
    if x.is_integer() and abs(x) < 1e21:
        return str(int(x))
    return repr(x)


def squash(text: str) -> str:
    """Whitespace (line breaks between a tag's key and value, cell borders) collapsed to single spaces."""
    return " ".join(text.split())


def browser_unavailable() -> str | None:
    """Why the browser test cannot run here, or ``None``."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not (p.is_file() and os.access(p, os.X_OK))]
    if missing:
        return (
            f"{' and '.join(missing)} not found: install Debian's browser and driver with "
            "`apt-get update && apt-get install -y chromium chromium-driver`"
        )
    if webdriver is None:
        return "selenium is not installed (pip install -r requirements-dev.txt)"
    return None


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def browser_check() -> None:
    """Fail in CI, skip elsewhere, when Chromium, its driver or Selenium is missing (checked first, so a
    machine without a browser does not train a model for nothing)."""
    reason = browser_unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {reason} (.ci/run installs them)", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def ui_store(browser_check, request: pytest.FixtureRequest) -> Iterator[dict]:
    """A tracking store holding one small pipeline run that passed its gate, and what it holds: conftest's
    shared ``tiny_promoted`` (asked for after ``browser_check``, so that a machine without a browser does
    not train it for this module)."""
    tiny = request.getfixturevalue("tiny_promoted")
    assert (tiny.experiment, tiny.model_name) == (EXPERIMENT, MODEL)
    result = tiny.summary
    assert result["gate"]["result"] == "passed", result["gate"]
    client = MlflowClient(tiny.uri)
    run = client.get_run(result["run_id"])
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    child_ids = {c.data.tags["mlflow.runName"]: c.info.run_id for c in children}
    assert sorted(child_ids) == sorted(CHILD_RUNS)
    production = client.get_model_version_by_alias(MODEL, PRODUCTION)
    yield {
        "dir": tiny.dir,
        "uri": tiny.uri,
        "experiment_id": run.info.experiment_id,
        "run_id": run.info.run_id,
        "run_name": run.data.tags["mlflow.runName"],
        "metrics": run.data.metrics,
        "tags": run.data.tags,
        "child_ids": child_ids,
        "production_version": str(production.version),
    }


@pytest.fixture(scope="module")
def ui_server(ui_store: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` over the store on a free 127.0.0.1 port; stopped after the module.

    The runs logged their artifacts straight into ``<store>/mlruns`` (the local default root), so the server
    reads them there: ``--default-artifact-root`` is that directory and artifact proxying is off. Its log
    goes to a directory of the module's own (the store is shared).
    """
    tmp: Path = ui_store["dir"]
    with mlflow_server(
        ui_store["uri"],
        tmp / "mlruns",
        serve_artifacts=False,
        log_path=tmp_path_factory.mktemp("ui-server") / "mlflow-server.log",
        extra_env={"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"},
    ) as url:
        yield f"{url}/"


@pytest.fixture(scope="module")
def driver(ui_server: str, tmp_path_factory: pytest.TempPathFactory):
    """Headless Chromium at 1440x900 with the UI's first-visit panels dismissed; quit after the module."""

    def no_selenium_manager(self, args):
        raise AssertionError(f"Selenium Manager was asked for a driver or browser ({args}): no downloads")

    logs = tmp_path_factory.mktemp("chromium")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in [*CHROMIUM_ARGS, f"--user-data-dir={tempfile.mkdtemp(prefix='profile-', dir=logs)}"]:
        options.add_argument(arg)
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(logs / "chromedriver.log"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")  # Selenium Manager's own switch, should anything still start it
        for var in ("NO_PROXY", "no_proxy"):  # the client reaches chromedriver on 127.0.0.1 directly
            mp.setenv(var, ",".join(filter(None, [os.environ.get(var, ""), LOCALHOST, "localhost"])))
        mp.setattr(SeleniumManager, "binary_paths", no_selenium_manager)
        drv = webdriver.Chrome(service=service, options=options)
    try:
        drv.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
        )
        # Same origin as the SPA but not the SPA: set its localStorage before its first load.
        drv.get(ui_server + "health")
        for key, value in UI_STORAGE.items():
            drv.execute_script("window.localStorage.setItem(arguments[0], arguments[1]);", key, value)
        yield drv
    finally:
        drv.quit()


@pytest.fixture(scope="module")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return SCREENSHOTS
    return tmp_path_factory.mktemp("screenshots")


# ------------------------------------------------------------------------------------------ page helpers


def body_text(driver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def wait_for_text(driver, *texts: str, timeout_s: float = WAIT_S) -> str:
    """Wait until the page's visible text contains every one of ``texts``; return that text."""
    try:
        WebDriverWait(driver, timeout_s, ignored_exceptions=(StaleElementReferenceException,)).until(
            lambda d: all(t in body_text(d) for t in texts)
        )
    except TimeoutException:
        text = body_text(driver)
        missing = [t for t in texts if t not in text]
        raise AssertionError(
            f"{driver.current_url}: not shown within {timeout_s:g} s: {missing}. Page text:\n{text[-3000:]}"
        ) from None
    return body_text(driver)


def wait_clickable(driver, xpath: str, timeout_s: float = WAIT_S):
    return WebDriverWait(driver, timeout_s).until(ec.element_to_be_clickable((By.XPATH, xpath)))


def toggle_column(driver, name: str) -> None:
    """Tick or untick one column in the runs table's "Columns" selector, as a user would."""
    wait_clickable(driver, "//button[normalize-space()='Columns']").click()
    search = wait_clickable(driver, SEARCH_COLUMNS)
    search.clear()
    search.send_keys(name)
    # The entry whose whole label is `name` (the search also lists e.g. gate_confidence for "gate").
    wait_clickable(driver, f"(//*[@role='dialog']//span[normalize-space(.)='{name}'])[last()]").click()
    search.send_keys(Keys.ESCAPE)
    WebDriverWait(driver, 10).until(lambda d: not d.find_elements(By.XPATH, SEARCH_COLUMNS))


def save_screenshot(driver, directory: Path, name: str) -> Path:
    """The viewport as an optimised PNG (palette-reduced if it would exceed the size budget)."""
    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    path = directory / name
    image.save(path, optimize=True)
    if path.stat().st_size > MAX_SCREENSHOT_BYTES:
        image.quantize(colors=256).save(path, optimize=True)
    assert image.size == (WIDTH, HEIGHT), image.size
    assert path.stat().st_size < MAX_SCREENSHOT_BYTES, (path, path.stat().st_size)
    return path


# -------------------------------------------------------------------------------------------------- tests


def test_experiment_page_lists_the_runs_and_their_metrics(driver, ui_server, ui_store, screenshot_dir):
    run_id, run_name = ui_store["run_id"], ui_store["run_name"]
    assert run_name.startswith("pipeline ")
    driver.get(f"{ui_server}#/experiments/{ui_store['experiment_id']}/runs?workflowType=machine_learning")
    wait_for_text(driver, EXPERIMENT, run_name)
    if not all(name in body_text(driver) for name in CHILD_RUNS):  # children are folded under the parent
        wait_clickable(driver, f"//*[@role='gridcell'][.//a[normalize-space()='{run_name}']]//button").click()
    wait_for_text(driver, run_name, *CHILD_RUNS, "3 matching runs")

    for column in ("Dataset", "Source", "Models"):  # hide wide columns so the rest fits the screenshot
        toggle_column(driver, column)
    for column in ("Description", "holdout_macro_f1", "baseline_macro_f1", "gate", "model_version"):
        toggle_column(driver, column)
    holdout = js_number(ui_store["metrics"]["holdout_macro_f1"])
    baseline = js_number(ui_store["metrics"]["baseline_macro_f1"])
    text = wait_for_text(driver, "Metrics", "Tags", "holdout_macro_f1", "model_version", holdout, baseline)

    # The pipeline run's own row (ag-grid draws the pinned run-name part and the scrolling part as two rows
    # with the same row-id) carries its metrics and tags.
    parts = driver.find_elements(By.XPATH, f"//*[@role='row'][@row-id='{run_id}']")
    row = squash(" ".join(part.text for part in parts))
    assert run_name in row and holdout in row and baseline in row, row
    assert "passed" in row and ui_store["tags"]["model_version"] in row, row
    assert "gate passed" in row, row  # the run's description (mlflow.note.content) says it at a glance
    assert MODEL in text  # the ensemble run's logged model, linked to its registered version
    save_screenshot(driver, screenshot_dir, "experiment-runs.png")


def test_run_page_shows_metrics_tags_and_artifacts(driver, ui_server, ui_store, screenshot_dir):
    exp_id, metrics, tags = ui_store["experiment_id"], ui_store["metrics"], ui_store["tags"]
    driver.get(f"{ui_server}#/experiments/{exp_id}/runs/{ui_store['run_id']}")
    text = wait_for_text(
        driver,
        ui_store["run_name"],
        "holdout_macro_f1",
        js_number(metrics["holdout_macro_f1"]),
        "baseline_macro_f1",
        js_number(metrics["baseline_macro_f1"]),
        "Child runs",
        *CHILD_RUNS,
        "model_version",
    )
    assert f"Metrics ({len(metrics)})" in text
    assert re.search(r"\bgate\s*:\s*passed\b", text), squash(text)[-2000:]
    version_tag = rf"\bmodel_version\s*:\s*{re.escape(tags['model_version'])}\b"
    assert re.search(version_tag, text), squash(text)[-2000:]
    save_screenshot(driver, screenshot_dir, "run.png")

    # Artifacts are read from the store's ./mlruns by the server: open the ensemble run's gate report.
    driver.get(f"{ui_server}#/experiments/{exp_id}/runs/{ui_store['child_ids']['ensemble']}/artifacts")
    wait_for_text(driver, "gate_report.json")
    driver.find_element(By.XPATH, "//*[normalize-space(text())='gate_report.json']").click()
    wait_for_text(driver, '"macro_f1_floor"', '"result": "passed"')


def test_model_registry_shows_the_production_alias(driver, ui_server, ui_store, screenshot_dir):
    version = ui_store["production_version"]
    assert version == ui_store["tags"]["model_version"]  # the version the pipeline run says it registered
    driver.get(f"{ui_server}#/models")
    text = wait_for_text(driver, "Registered Models", MODEL, f"Version {version}", PRODUCTION)
    assert re.search(rf"@\s*{PRODUCTION}\s*:\s*Version {version}\b", text), squash(text)

    driver.get(f"{ui_server}#/models/{MODEL}")
    wait_for_text(driver, MODEL, "Versions", "Aliases", f"Version {version}", PRODUCTION)
    wait_clickable(driver, "//*[normalize-space(text())='Tags']").click()  # fold the audit tags away
    WebDriverWait(driver, 10).until(lambda d: "audit.000001" not in body_text(d))  # folded
    text = wait_for_text(driver, f"Version {version}", PRODUCTION)
    assert re.search(rf"@\s*{PRODUCTION}\b", text), squash(text)
    assert re.search(r"\bgate\s*:\s*passed\b", text), squash(text)  # the version's own gate tag
    save_screenshot(driver, screenshot_dir, "registered-model.png")
