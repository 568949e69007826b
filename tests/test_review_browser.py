"""The console in real headless Chromium (Debian's chromium, driven by Playwright): log in with a moderator
token, open the queue, claim the next item with the keyboard, decide it with the keyboard, and check the
database. A screenshot of the item page is kept ($DEEPSCREEN_TEST_ARTIFACTS, else the test's tmp dir)."""
# ruff: noqa: F811 - the shared fixtures are imported from test_review_support and named as parameters

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from devservices import free_port, wait_for
from tests.test_review_support import make_item, review_ctx, review_db_url, tokens  # noqa: F401

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.services,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
]
playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def server(review_ctx):  # noqa: ANN001, ANN201
    import uvicorn

    from review.api import create_app

    port = free_port()
    config = uvicorn.Config(create_app(review_ctx), host="127.0.0.1", port=port, log_level="warning",
                            lifespan="off")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    wait_for(lambda: instance.started, 20, what="uvicorn")
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(10)


def test_moderator_logs_in_claims_and_decides_with_the_keyboard(server, review_ctx, tokens, tmp_path) -> None:  # noqa: ANN001
    items = [make_item(review_ctx, faces=2, source="browser", score=0.9 + i / 100).review_item_id for i in range(2)]
    artifacts = Path(os.environ.get("DEEPSCREEN_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.goto(f"{server}/console/queue")
            page.fill("#token", tokens.moderator)
            page.click("button[type=submit]")
            page.wait_for_url(f"{server}/console/queue")
            for item in items:
                assert page.locator(f'tr[data-item="{item}"]').count() == 1
            shortcuts = page.locator("#shortcut-help")
            page.locator("body").press("?")  # the shortcut help opens, and Esc closes it
            shortcuts.wait_for(state="visible", timeout=3000)
            page.keyboard.press("Escape")
            shortcuts.wait_for(state="hidden", timeout=3000)
            preview = page.locator(f'tr[data-item="{items[0]}"] .preview img')
            preview.wait_for()
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(artifacts / "review-queue-page.png"))
            assert "blur" in preview.evaluate("e => getComputedStyle(e).filter")
            page.focus(f'tr[data-item="{items[0]}"] .preview')
            time.sleep(0.4)
            assert preview.evaluate("e => getComputedStyle(e).filter") == "none"  # focus un-blurs

            page.locator("body").press("n")  # claim the next item
            page.wait_for_url(f"{server}/console/items/{items[0]}")
            assert page.locator('button[data-key="f"]').is_visible()
            state = review_ctx.reviews.item(items[0])
            assert state["state"] == "claimed" and state["claimed_by"] == "mod-ann"
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(artifacts / "review-item-page.png"), full_page=True)

            page.locator("body").press("f")  # confirm fake
            page.wait_for_url(f"{server}/console/items/{items[0]}?message=*")
            assert "Recorded: confirm_fake" in page.text_content(".message")
            decided = review_ctx.reviews.item(items[0])
            assert decided["state"] == "confirmed_fake" and decided["decided_by"] == "mod-ann"

            page.locator("body").press("n")
            page.wait_for_url(f"{server}/console/items/{items[1]}")
            page.locator("body").press("s")  # skip: back to the queue for someone else
            page.wait_for_url(f"{server}/console/items/{items[1]}?message=*")
            assert review_ctx.reviews.item(items[1])["state"] == "pending"
            assert not [p for p in problems if "Content Security Policy" in p], problems
        finally:
            browser.close()
    assert (artifacts / "review-item-page.png").stat().st_size > 10_000
