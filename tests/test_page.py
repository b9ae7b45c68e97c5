"""The page in ``torchcf serve``: the JSON behind it (same ``Recommender`` as the API), and the
page itself in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver`` through
Selenium): a user's view, a random user, an unknown id, a new user from three picked titles, an
item's similar items, the run's card, the keyboard alone. Screenshots of each view are saved in
``screenshots/`` under pytest's base temporary directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import planted
from test_recommend import GROUPS, train_run, write_planted
from test_serve import running_server
from torchcf.data.sources import DataSpec, load_split
from torchcf.runs.rundir import RunDir
from torchcf.runs.train import run_training
from torchcf.serving.explore import History
from torchcf.serving.http import create_app
from torchcf.serving.recommender import Recommender
from torchcf.training.config import recipe

K = 5


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("page")
    data = planted(num_users=40, num_items=30, groups=GROUPS, per_user=6)
    return train_run(write_planted(root / "data", data), root / "gmf", epochs=8)


@pytest.fixture(scope="module")
def other(run) -> Path:
    """A second run on the same data (EASE), for the side-by-side view."""
    config = RunDir(run).read_config()
    out = run.parent / "ease"
    run_training(config.data, recipe("ease", {"eval_negatives": 20}), out, progress=False,
                 echo=lambda _: None)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def history(run) -> History:
    config = RunDir(run).read_config()
    split, _ = load_split(DataSpec(path=config.data.path), config.split, progress=False)
    return History.from_split(split)


@pytest.fixture(scope="module")
def client(run, history) -> TestClient:
    return TestClient(create_app(Recommender.load(run), history=history))


def test_the_page_is_one_self_contained_document(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    text = response.text
    assert "<script>" in text and "<style>" in text and "{{" not in text
    assert "http://" not in text and "https://" not in text  # nothing fetched from elsewhere
    assert 'src="' not in text and "<link" not in text


def test_a_users_view_is_the_apis_recommendations_with_history(client, history):
    body = client.get("/explore/user", params={"user": 3, "k": K}).json()
    api = client.get("/recommend", params={"user": 3, "k": K}).json()
    assert [r["item"] for r in body["recommendations"]] == [r["item"] for r in api["items"]]
    assert [r["score"] for r in body["recommendations"]] == [r["score"] for r in api["items"]]
    assert all(r["title"].startswith("Movie ") and r["genres"] == "Drama" for r in body["history"])
    index = 2  # user 3 (1-based ids in the files)
    assert [h["item"] for h in body["history"]] == [
        int(i) + 1 for i in history.items[index]
    ]  # most recent first
    held = {(h["holdout"], h["item"]) for h in body["held_out"]}
    assert held == {(name, i + 1) for name, i in history.held_out[index]}
    listed = [r["item"] for r in body["recommendations"]]
    for h in body["held_out"]:
        position = listed.index(h["item"]) + 1 if h["item"] in listed else None
        assert h["position"] == position
    # "because you watched": history items (titles), most similar first
    titles = {h["title"] for h in body["history"]}
    assert all(set(r["because"]) <= titles for r in body["recommendations"])
    assert any(r["because"] for r in body["recommendations"])


def test_the_history_order_is_by_time(history, run):
    config = RunDir(run).read_config()
    split, _ = load_split(DataSpec(path=config.data.path), config.split, progress=False)
    train = split.train
    for user, items in list(history.items.items())[:10]:
        rows = np.flatnonzero(train.users == user)
        times = {int(train.items[r]): int(train.timestamps[r]) for r in rows}
        shown = [times[int(i)] for i in items]
        assert shown == sorted(shown, reverse=True)
    assert history.order == "most recent first"


def test_search_random_user_item_and_bad_input(client):
    found = client.get("/explore/items", params={"q": "movie 1"}).json()
    assert found and all("movie 1" in r["title"].lower() for r in found)
    assert client.get("/explore/items", params={"q": "7"}).json()[0]["item"] == 7  # by id
    assert client.get("/explore/items", params={"q": "no such title"}).json() == []
    user = client.get("/explore/random-user").json()["user"]
    assert client.get("/explore/user", params={"user": user}).status_code == 200
    assert client.get("/explore/item", params={"item": 4}).json()["title"].startswith("Movie 4 ")
    for path, params in (
        ("/explore/user", {"user": 99999}),
        ("/explore/item", {"item": "nope"}),
    ):
        response = client.get(path, params=params)
        assert response.status_code == 404 and "unknown" in response.json()["detail"]
    for params in ({"user": 3, "k": 0}, {"user": ""}):
        assert client.get("/explore/user", params=params).status_code == 422


def test_two_runs_side_by_side_over_the_api(run, other, history):
    client = TestClient(
        create_app(Recommender.load(run), history=history, other=(Recommender.load(other), None))
    )
    assert client.get("/explore/runs").json() == [
        {"run": 0, "model": "gmf"},
        {"run": 1, "model": "ease"},
    ]
    b = client.get("/explore/user", params={"user": 3, "k": K, "run": 1}).json()
    want = Recommender.load(other).recommend(3, k=K)[0].tolist()
    assert [r["item"] for r in b["recommendations"]] == want
    assert client.get("/explore/model", params={"run": 1}).json()["model"] == "ease"
    assert client.get("/recommend", params={"user": 3}).json()["items"]  # the API: run A's
    assert client.get("/explore/user", params={"user": 3, "run": 2}).status_code == 422


def test_a_bare_model_directory_serves_the_page_without_held_out_items(run):
    client = TestClient(create_app(Recommender.load(run / "model")))
    body = client.get("/explore/user", params={"user": 3}).json()
    assert body["held_out"] == [] and body["history"] and "no order" in body["history_order"]


# -- in a real browser -----------------------------------------------------------------------------
def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no chromium/chromedriver (apt-get install chromium chromium-driver)")
    return chromium, driver


@pytest.fixture(scope="module")
def server(run):
    with running_server(run) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1000"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    directory = tmp_path_factory.getbasetemp() / "screenshots"
    directory.mkdir(exist_ok=True)
    return directory


def _wait(browser, condition, timeout=20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(condition)


def _count(browser, selector):
    from selenium.webdriver.common.by import By

    return len(browser.find_elements(By.CSS_SELECTOR, selector))


def _texts(browser, selector):
    from selenium.webdriver.common.by import By

    return [e.text for e in browser.find_elements(By.CSS_SELECTOR, selector)]


def test_the_page_in_a_real_browser(server, browser, shots, client):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(server + "/")
    _wait(browser, lambda b: b.find_element(By.ID, "user-id").is_displayed())
    k = browser.find_element(By.ID, "k")
    k.clear()
    k.send_keys(str(K))

    # a user's view, by typing an id and pressing Enter
    browser.find_element(By.ID, "user-id").send_keys("3", Keys.ENTER)
    _wait(browser, lambda b: _count(b, "#recommendations li") == K)
    titles = _texts(browser, "#recommendations li a")
    want = client.get("/recommend", params={"user": 3, "k": K}).json()["items"]
    assert titles == [r["title"] for r in want]
    assert _count(browser, "#history li") > 0 and "Held-out test item" in browser.page_source
    assert "because you watched" in browser.find_element(By.ID, "recommendations").text
    assert browser.find_element(By.ID, "user-id").get_attribute("value") == "3"
    browser.save_screenshot(str(shots / "user.png"))

    # an unknown id: a message on the page, the page still there
    field = browser.find_element(By.ID, "user-id")
    field.clear()
    field.send_keys("99999", Keys.ENTER)
    message = browser.find_element(By.ID, "message")
    _wait(browser, lambda b: message.is_displayed() and "99999" in message.text)
    assert "unknown user" in message.text and _count(browser, "#recommendations li") == 0
    browser.save_screenshot(str(shots / "unknown-user.png"))

    # the keyboard alone: Tab from the id field to "Show", then "Random user", Enter
    field.send_keys(Keys.TAB)
    assert browser.switch_to.active_element.get_attribute("id") == "show-user"
    browser.switch_to.active_element.send_keys(Keys.TAB)
    assert browser.switch_to.active_element.get_attribute("id") == "random"
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    _wait(browser, lambda b: _count(b, "#recommendations li") == K)
    assert not message.is_displayed()

    # a new user: no titles picked is a message; three picked give recommendations
    browser.find_element(By.ID, "nav-new").click()
    _wait(browser, lambda b: b.find_element(By.ID, "search").is_displayed())
    browser.find_element(By.ID, "fold-in").click()
    _wait(browser, lambda b: "Pick at least one title" in b.find_element(By.ID, "message").text)
    browser.find_element(By.ID, "search").send_keys("Movie 1", Keys.ENTER)
    _wait(browser, lambda b: _count(b, "#search-results li") >= 3)
    for button in browser.find_elements(By.CSS_SELECTOR, "#search-results button.pick")[:3]:
        button.click()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#picked button")) == 3
    browser.find_element(By.ID, "fold-in").click()
    _wait(browser, lambda b: _count(b, "#new-recommendations li") == K)
    assert all(t.startswith("Movie ") for t in _texts(browser, "#new-recommendations li a"))
    browser.save_screenshot(str(shots / "new-user.png"))

    # an item: click a title, see its similar items
    first = browser.find_element(By.CSS_SELECTOR, "#new-recommendations li a")
    title = first.text
    first.click()
    _wait(browser, lambda b: _count(b, "#similar li") == K)
    assert browser.find_element(By.ID, "item-title").text == title
    browser.save_screenshot(str(shots / "item.png"))

    # the run's card
    browser.find_element(By.ID, "nav-run").click()
    _wait(browser, lambda b: "gmf" in b.find_element(By.ID, "model-card").text)
    card = browser.find_element(By.ID, "model-card").text
    assert "selected epoch" in card and "test hr@10" in card
    browser.save_screenshot(str(shots / "run.png"))
    for name in ("user", "unknown-user", "new-user", "item", "run"):
        assert (shots / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    print(f"screenshots in {shots}")


def test_two_runs_side_by_side_in_a_real_browser(run, other, browser, shots):
    from selenium.webdriver.common.by import By

    client = TestClient(create_app(Recommender.load(run), other=(Recommender.load(other), None)))
    lists = [
        {r["item"] for r in client.get("/explore/user", params={"user": 3, "k": K, "run": i})
         .json()["recommendations"]}
        for i in (0, 1)
    ]  # fmt: skip
    with running_server(run, other) as base:
        browser.get(f"{base}/#user/3")
        k = browser.find_element(By.ID, "k")
        k.clear()
        k.send_keys(str(K))
        browser.find_element(By.ID, "show-user").click()
        _wait(browser, lambda b: _count(b, "#recommendations li") == K
              and _count(b, "#recommendations-b li") == K)  # fmt: skip
        both = len(lists[0] & lists[1])
        assert _count(browser, "#recommendations li.both") == both
        assert _count(browser, "#recommendations-b li.both") == both
        headings = _texts(browser, "section.card h2")
        assert headings[0].startswith("A: gmf") and headings[1].startswith("B: ease")
        browser.save_screenshot(str(shots / "side-by-side.png"))
        browser.find_element(By.ID, "nav-run").click()
        _wait(browser, lambda b: "ease" in b.find_element(By.ID, "model-card-b").text)
