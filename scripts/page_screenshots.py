"""Screenshots of genforge's web page in English and Chinese, at a desktop and a phone width, driven
through the page itself (headless Debian Chromium + Playwright, from the test extra) against a running
`genforge serve`:

    python scripts/page_screenshots.py --url http://127.0.0.1:8000 --key "$KEY" \
        --text writer --image digits --table penguins [--review REVIEW_ID] --out docs/page

Writes <out>/<lang>-<width>-<what>.png; each shows the page after a real generation (or review)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
WIDTHS = {"desktop": 1280, "phone": 360}
PROMPT = "写一条好评："  # "write a positive review": the prompt the built-in fine-tuned review model learned


def _ready(page: Page, url: str, key: str, lang: str) -> None:
    page.goto(url)
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    page.select_option("#lang", lang)
    page.fill("#key", key)
    page.press("#key", "Enter")
    expect(page.locator("#gen-form")).to_be_visible()


def _generate(page: Page, model: str, what: str) -> None:
    page.select_option("#model", model)
    expect(page.locator(f"#gen-form[data-model='{model}']")).to_be_visible()
    if what == "text":
        expect(page.locator("#prompt")).to_be_visible()
        page.fill("#prompt", PROMPT)
        page.fill("#n", "3")
        page.fill("#max_tokens", "48")
    elif what == "images":
        expect(page.locator("#class")).to_be_visible()
        page.fill("#n", "8")
    else:
        expect(page.locator("#condition-add")).to_be_visible()
        page.click("#condition-add")
        page.fill("#n", "30")
    page.fill("#seed", "1")
    page.click("#generate")
    expect(page.locator(".result").first).to_be_visible(timeout=120_000)


def _review(page: Page, review: str) -> None:
    page.click("#tab-review")
    entries = page.locator("#reviews li")
    entries.first.wait_for()
    (entries.first if review == "first" else entries.filter(has_text=review).first).locator("button").click()
    expect(page.locator("#review-item")).to_be_visible()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--key", required=True)
    ap.add_argument("--text", default="writer")
    ap.add_argument("--image", default="digits")
    ap.add_argument("--table", default="penguins")
    ap.add_argument("--review", help="a review set's name or id to show (first: the first listed)")
    ap.add_argument("--out", type=Path, default=Path("docs/page"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    shots = [("en", "desktop", "text"), ("zh", "desktop", "table"), ("en", "phone", "images"), ("zh", "phone", "text"),
             ("en", "desktop", "images"), ("zh", "desktop", "text")]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
        for lang, width, what in shots:
            page = browser.new_page(viewport={"width": WIDTHS[width], "height": 900})
            _ready(page, args.url, args.key, lang)
            _generate(page, {"text": args.text, "images": args.image, "table": args.table}[what], what)
            page.screenshot(path=str(args.out / f"{lang}-{width}-{what}.png"), full_page=True)
            page.close()
        if args.review:
            for lang, width in (("en", "desktop"), ("zh", "phone")):
                page = browser.new_page(viewport={"width": WIDTHS[width], "height": 900})
                _ready(page, args.url, args.key, lang)
                _review(page, args.review)
                page.screenshot(path=str(args.out / f"{lang}-{width}-review.png"), full_page=True)
                page.close()
        browser.close()
    print("\n".join(sorted(str(f) for f in args.out.glob("*.png"))))


if __name__ == "__main__":
    main()
