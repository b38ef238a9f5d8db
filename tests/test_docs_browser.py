"""/docs in a real headless Chromium against the running service: Swagger UI renders the operations
from assets the service serves itself (the browser is kept off every other network)."""

from __future__ import annotations

import os
import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
)
EXPECTED = {
    ("POST", "/api/v1/incidents"), ("GET", "/api/v1/incidents"), ("GET", "/api/v1/incidents/analytics"),
    ("GET", "/api/v1/incidents/{incident_id}"), ("PATCH", "/api/v1/incidents/{incident_id}"),
    ("POST", "/api/v1/incidents/{incident_id}/notes"),
    ("GET", "/health"), ("GET", "/health/ready"), ("GET", "/health/live"), ("GET", "/metrics"),
}


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        reason = "Debian's chromium and chromium-driver are not installed (.ci/run installs them)"
        pytest.fail(reason) if os.environ.get("CI") else pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    # Anything not on 127.0.0.1 goes to a dead proxy: a page that needed a CDN would not render.
    options.add_argument("--proxy-server=http://127.0.0.1:9")
    options.add_argument("--proxy-bypass-list=<-loopback>;127.0.0.1")
    service = webdriver.ChromeService(executable_path=driver)
    browser = webdriver.Chrome(options=options, service=service)
    yield browser
    browser.quit()


def test_docs_lists_every_operation_in_a_headless_browser(live_service, browser):
    browser.get(f"{live_service.url}/docs")
    WebDriverWait(browser, 20).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, ".opblock-summary-method"))
    )
    rendered = {
        (
            block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text,
            block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path"),
        )
        for block in browser.find_elements(By.CSS_SELECTOR, ".opblock")
    }
    assert rendered >= EXPECTED
    assert "Incident Management Service" in browser.find_element(By.CSS_SELECTOR, ".info .title").text
