"""The web page (issue 14): every string translated, the static files public and locked down, and a user's
whole journey in headless Chromium (Debian's `chromium`, driven by Playwright) against a live `genforge serve`:
key, text, images, rows with a csv download, a rating that reaches the feedback store, a blind side-by-side
review whose summary reaches the report, Chinese and back, a moderation refusal, a rate limit, a phone screen."""

import json
import re
import shutil

import openai
import pytest

from genforge.evaluation.pipeline import EvalOptions, evaluate_run
from genforge.review.build import create_review
from genforge.serve.feedback_store import FeedbackStore
from genforge.serve.keys import KeyStore
from genforge.serve.page import FOLDER
from test_feedback import home  # noqa: F401 - the fixture: a workspace with writer (gpt), digits-gan, penguins (copula)
from test_serve import Server, http

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def _languages() -> dict[str, dict[str, str]]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted((FOLDER / "i18n").glob("*.json"))}


def _keys_used() -> set[str]:
    """Every translation key the page names: data-i18n attributes, t("...") calls, and the namespaced key
    strings in app.js (run-time choices are spelled out there as constants)."""
    html = (FOLDER / "index.html").read_text(encoding="utf-8")
    js = (FOLDER / "app.js").read_text(encoding="utf-8")
    namespaces = {k.split(".")[0] for k in _languages()["en"] if "." in k}
    used = set(re.findall(r'data-i18n="([^"]+)"', html)) | set(re.findall(r'\bt\("([\w.]+)"', js))
    return used | {k for k in re.findall(r'"([a-z]+(?:\.\w+)+)"', js) if k.split(".")[0] in namespaces}


def test_every_string_the_page_shows_is_translated():
    langs, used = _languages(), _keys_used()
    assert set(langs) == {"en", "zh"} and len(used) > 80
    for lang, strings in langs.items():
        assert not used - set(strings), f"{lang}.json lacks {sorted(used - set(strings))}"
        assert set(strings) == set(langs["en"]), f"{lang}.json and en.json name different keys"
        for key, text in strings.items():
            assert text.strip(), f"{lang}.json: {key} is empty"
            placeholders = set(re.findall(r"\{(\w+)\}", langs["en"][key]))
            assert set(re.findall(r"\{(\w+)\}", text)) == placeholders, f"{lang}.json: {key} has other placeholders"
    untranslated = [k for k in langs["en"] if langs["en"][k] == langs["zh"][k] and k != "title"]
    assert not untranslated, f"zh.json copies English for {untranslated}"
    assert not set(langs["en"]) - used, f"unused keys: {sorted(set(langs['en']) - used)}"


@pytest.fixture(scope="module")
def server(home):  # noqa: F811 - the imported fixture
    s = Server(home, {"models": [{"name": "writer", "run": "writer"}, {"name": "digits", "run": "digits-gan"},
                                 {"name": "penguins", "run": "penguins"}],
                      "limits": {"max_tokens": 16}, "reload_interval_s": 0, "keys_db": str(home / "keys.db")},
               name="page")
    yield s
    s.stop()


def test_the_page_is_public_offline_and_locked_down(server):
    index = http("GET", server.url + "/")
    assert index.status_code == 200 and "text/html" in index.headers["content-type"]
    csp = index.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert not re.search(r'(src|href)="(https?:)?//', index.text), "the page must fetch nothing from elsewhere"
    for path in ("/page/app.js", "/page/style.css", "/page/i18n/zh.json"):
        r = http("GET", server.url + path)
        assert r.status_code == 200 and r.headers["x-content-type-options"] == "nosniff", path
    assert "http" not in http("GET", server.url + "/page/style.css").text  # no external fonts
    assert http("GET", server.url + "/page/../keys.db").status_code in (401, 404)
    assert http("POST", server.url + "/page/app.js").status_code == 401  # public for reading only
    assert http("GET", server.url + "/v1/models").status_code == 401  # the API behind it still needs a key


def test_a_model_s_details_are_what_the_page_builds_its_form_from(server, home):  # noqa: F811
    client = server.client(KeyStore(home / "keys.db").create("details", models=["digits", "penguins"])[0])
    digits = client.models.retrieve("digits").model_dump()
    assert digits["kind"] == "image" and digits["classes"] == [str(i) for i in range(10)]
    assert digits["size"] == "28x28" and "truncation" in digits["options"]
    table = client.models.retrieve("penguins").model_dump()
    species = next(c for c in table["columns"] if c["name"] == "species")
    assert species["categories"] == ["Adelie", "Chinstrap", "Gentoo"] and species["categories_listed_all"]
    mass = next(c for c in table["columns"] if c["name"] == "body_mass_g")
    assert mass["type"] == "numeric" and mass["min"] < mass["max"]
    for hidden in ("writer", "nope"):  # a model the key may not use is as absent as one that does not exist
        with pytest.raises(openai.NotFoundError) as e:
            client.models.retrieve(hidden)
        assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra: pip install -e '.[test]'")
    if CHROMIUM is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install -y chromium; .ci/run does it as root)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def _open(browser, url: str, width: int = 1200):
    from playwright.sync_api import expect
    page = browser.new_page(viewport={"width": width, "height": 900}, accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if "missing translation" in m.text else None)
    page.goto(url)
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    return page, errors


def _use_key(page, secret: str) -> None:
    from playwright.sync_api import expect
    page.fill("#key", secret)
    page.press("#key", "Enter")  # the keyboard alone submits the form
    expect(page.locator("#gen-form")).to_be_visible()


def test_a_user_generates_rates_and_switches_language(server, browser, home):  # noqa: F811
    from playwright.sync_api import expect
    store = KeyStore(home / "keys.db")
    key = store.create("page-user")[0]
    page, errors = _open(browser, server.url)
    expect(page.locator("#key-status")).to_contain_text("No key yet")
    _use_key(page, key)
    expect(page.locator("#model option")).to_have_count(3)

    # text: two completions, each labelled, one rated with a correction
    page.select_option("#model", "writer")
    expect(page.locator("#model-summary")).to_contain_text("family gpt")
    page.fill("#prompt", "A short ad for green tea")
    page.fill("#n", "2")
    page.fill("#seed", "7")
    page.click("#generate")
    results = page.locator(".result")
    expect(results).to_have_count(2)
    expect(results.first.locator(".ai-label")).to_contain_text("AI-generated")
    gid = results.first.locator(".gid").inner_text().strip(" ·")
    results.first.locator("input[type=radio][value='4']").check()
    results.first.locator("textarea").fill("Green tea, picked this spring.")
    results.first.locator("button[type=submit]").click()
    expect(results.first.locator(".status")).to_contain_text("rating 4 saved")
    rated = {r.generation.id: r.rating for r in FeedbackStore(home / "serve" / "feedback.db").rated(4)}
    assert rated[gid].rating == 4 and rated[gid].corrected_output == "Green tea, picked this spring."

    # images of a chosen class
    page.select_option("#model", "digits")
    expect(page.locator("#class option[value='3']")).to_have_count(1)
    page.select_option("#class", "3")
    page.fill("#n", "3")
    page.click("#generate")
    expect(page.locator(".result img")).to_have_count(3)
    assert page.locator(".result img").first.get_attribute("src").startswith("data:image/png;base64,")
    expect(page.locator(".result figcaption").first).to_have_text("3")
    page.fill("#n", "17")  # above the server's max_images (16): refused, naming the bound
    page.click("#generate")
    expect(page.locator("#gen-status .error")).to_have_text("The request is over one of this service's limits.")
    expect(page.locator("#gen-status .detail")).to_contain_text("max_images of 16")

    # rows meeting a condition, previewed and downloaded as csv
    page.select_option("#model", "penguins")
    expect(page.locator("#n-label")).to_have_text("Rows")
    page.click("#condition-add")
    page.locator("#conditions select").nth(1).select_option(label="Gentoo")
    page.fill("#n", "12")
    page.click("#generate")
    expect(page.locator(".result tbody tr")).to_have_count(12)
    with page.expect_download() as download:
        page.click(".result button.secondary")
    lines = open(download.value.path(), encoding="utf-8").read().splitlines()
    assert lines[0].startswith("species,") and len(lines) == 13 and all(l.startswith("Gentoo,") for l in lines[1:])

    # Chinese, remembered across a reload (the key too: same tab), and back
    page.select_option("#lang", "zh")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.locator("#tab-generate")).to_have_text("生成")
    expect(page.locator("#model-summary")).to_contain_text("表格")  # dynamic text re-translated in place
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator("#tab-review")).to_have_text("评审")
    expect(page.locator("#key-status")).to_have_text("此标签页已设置密钥。")
    page.select_option("#lang", "en")
    expect(page.locator("#tab-review")).to_have_text("Review")

    # a moderation refusal, in plain words, never echoing the prompt
    page.select_option("#model", "writer")
    page.fill("#prompt", "ok, I will k.i.l.l you")
    page.click("#generate")
    expect(page.locator("#gen-status .error")).to_have_text("Refused by the content policy. Rephrase the request.")
    assert "k.i.l.l" not in page.locator("#gen-status").inner_text()

    # without a key
    page.click("#key-forget")
    page.fill("#prompt", "tea")
    page.click("#generate")
    expect(page.locator("#gen-status .error")).to_have_text("Enter your API key first.")
    assert not errors, errors


def test_a_reviewer_completes_a_blind_side_by_side_review_and_the_report_shows_it(server, browser, home,  # noqa: F811
                                                                                 monkeypatch):
    from playwright.sync_api import expect
    monkeypatch.setenv("GENFORGE_HOME", str(home))
    review = create_review(["digits-gan"], 4, mode="pairs", name="digits against real")  # generated vs held-out
    page, errors = _open(browser, server.url)
    _use_key(page, KeyStore(home / "keys.db").create("reviewer")[0])
    page.click("#tab-review")
    entry = page.locator("#reviews li", has_text="digits against real")
    expect(entry).to_contain_text("side by side, 4 items, 0 rated by you")
    entry.locator("button").click()
    expect(page.locator("#review-progress")).to_have_text("0 of 4 rated")
    for i, choice in enumerate(("Left is better", "Right is better", "About the same", "Left is better")):
        expect(page.locator("#review-item img")).to_have_count(2)  # two unlabelled images: nothing says which is real
        assert "AI-generated" not in page.locator("#review-item").inner_text()
        page.get_by_role("button", name=choice).click()
        expect(page.locator("#review-progress")).to_have_text(f"{i + 1} of 4 rated")
    expect(page.locator("#review-summary")).to_contain_text("4 ratings by 1 reviewer(s) on 4 of 4 items.")
    expect(page.locator("#review-summary tbody tr")).to_have_count(2)  # the run and the real held-out images
    summary = http("GET", f"{server.url}/v1/reviews/{review.id}/summary", key=KeyStore(home / "keys.db").create("x")[0]).json()
    assert summary["ratings"] == 4 and sum(s["wins"] + s["ties"] / 2 for s in summary["sources"]) == 4

    report = evaluate_run("digits-gan", EvalOptions(n=20, seed=0, fid=False)).read_text()
    assert "Human review" in report and review.id in report and "digits against real" in report
    assert not errors, errors


def test_a_rate_limited_key_is_told_when_to_retry(server, browser, home):  # noqa: F811
    from playwright.sync_api import expect
    limited = KeyStore(home / "keys.db").create("page-limited", requests_per_minute=3)[0]
    page, errors = _open(browser, server.url)
    _use_key(page, limited)  # GET /v1/models and GET /v1/models/writer: 2 of 3
    page.fill("#prompt", "tea")
    page.click("#generate")  # 3 of 3
    expect(page.locator(".result")).to_have_count(2)
    page.click("#generate")
    expect(page.locator("#gen-status .error")).to_contain_text("Too many requests for this key. Try again in")
    assert re.search(r"Try again in \d+ seconds", page.locator("#gen-status").inner_text())
    assert not errors, errors


def test_the_page_works_on_a_phone_and_labels_every_input(server, browser, home):  # noqa: F811
    from playwright.sync_api import expect
    page, errors = _open(browser, server.url, width=360)
    _use_key(page, KeyStore(home / "keys.db").create("page-phone")[0])
    for model in ("writer", "digits", "penguins"):
        page.select_option("#model", model)
        if model == "penguins":
            expect(page.locator("#n-label")).to_have_text("Rows")
            page.click("#condition-add")
        page.click("#generate")
        expect(page.locator(".result").first).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 360, f"{model}: wider than the phone"
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea, button')]
        .filter((el) => el.offsetParent !== null)
        .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim()
                        && !el.closest('label'))
        .map((el) => el.outerHTML.slice(0, 80))""")
    assert not unlabelled, unlabelled
    pairs = page.evaluate("""() => ['body', 'label', '.hint', 'button', 'button.secondary', '.ai-label', '#tab-review']
        .map((sel) => { const el = document.querySelector(sel), s = getComputedStyle(el);
                        let bg = el, b = s.backgroundColor;
                        while (b === 'rgba(0, 0, 0, 0)' && bg.parentElement) { bg = bg.parentElement; b = getComputedStyle(bg).backgroundColor; }
                        return [sel, s.color, b === 'rgba(0, 0, 0, 0)' ? 'rgb(255, 255, 255)' : b]; })""")
    for selector, fg, bg in pairs:
        assert _contrast(fg, bg) >= 4.5, f"{selector}: {fg} on {bg} is {_contrast(fg, bg):.2f}:1"
    assert not errors, errors


def _contrast(a: str, b: str) -> float:
    """WCAG 2's contrast ratio of two CSS rgb() colours."""
    def luminance(css: str) -> float:
        channels = [int(v) / 255 for v in re.findall(r"\d+", css)[:3]]
        lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)
