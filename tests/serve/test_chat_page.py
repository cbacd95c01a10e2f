"""The chat page in a real headless browser (Debian's chromium + chromium-driver, driven by selenium):
a question streams in with a citation whose passage opens on click, then "ask all modes" answers side
by side with their TTFTs; the page loads nothing but this server's files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
STATIC = Path(__file__).parents[2] / "engine" / "serve" / "static"


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no chromium/chromedriver on PATH: `apt-get install chromium chromium-driver` (.ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", "--disable-extensions", "--no-first-run"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_the_page_ships_no_external_resources():
    for file in STATIC.iterdir():
        text = file.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, file.name


def test_a_question_streams_in_with_citations_then_all_modes_side_by_side(browser, server, tmp_path):
    wait = WebDriverWait(browser, 120, poll_frequency=0.05)
    browser.get(f"{server.url}/#key={server.api_key}")
    wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("ready"))
    assert [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#model option")] == ["rag", "baked", "hybrid"]

    browser.find_element(By.ID, "max-tokens").clear()
    browser.find_element(By.ID, "max-tokens").send_keys("24")
    browser.find_element(By.ID, "question").send_keys("Who founded Fenwhistle Aquatronics?")
    browser.find_element(By.ID, "ask").click()
    answer = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#single .answer"))
    streaming = wait.until(lambda d: answer.find_element(By.CSS_SELECTOR, ".text").text or None)
    wait.until(lambda d: answer.get_attribute("data-done") == "1")
    text = answer.find_element(By.CSS_SELECTOR, ".text").text
    assert text.startswith(streaming) and len(text) >= len(streaming)
    citations = answer.find_elements(By.CSS_SELECTOR, ".citations li")
    assert len(citations) == 3
    quote = citations[0].find_element(By.TAG_NAME, "blockquote")
    assert not quote.is_displayed()
    citations[0].find_element(By.CSS_SELECTOR, "button.cite").click()
    assert quote.is_displayed() and len(quote.text) > 40
    assert answer.find_elements(By.CSS_SELECTOR, ".timings .bar span")  # the stage bar
    assert "first token" in answer.find_element(By.CSS_SELECTOR, ".ttft").text

    browser.find_element(By.ID, "max-tokens").clear()
    browser.find_element(By.ID, "max-tokens").send_keys("8")
    browser.find_element(By.ID, "ask-all").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#all .answer[data-done='1']")) == 3)
    columns = browser.find_elements(By.CSS_SELECTOR, "#all .answer")
    assert [c.get_attribute("data-model") for c in columns] == ["rag", "baked", "hybrid"]
    ttfts = {c.get_attribute("data-model"): int(c.get_attribute("data-ttft-ms")) for c in columns}
    assert all(ms > 0 for ms in ttfts.values()), ttfts
    assert columns[0].location["y"] == columns[1].location["y"]  # side by side
    print(f"page TTFT per mode (ms): {ttfts}")

    shot = tmp_path / "chat-page.png"
    browser.save_screenshot(str(shot))
    from PIL import Image

    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the screenshot looks blank"
    assert not browser.get_log("browser") or all(e["level"] != "SEVERE" for e in browser.get_log("browser"))
