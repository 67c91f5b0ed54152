"""Screenshots of the web demo's tabs for the README (``docs/images/demo-*.png``).

Serves the demo on the shipped tiny models on loopback, sets topk's density widget, presses
Generate on the Accelerate tab at the CPU size (about a minute on 2 idle cores), runs the image tabs on
their defaults (the tiny FLUX, seconds each), and captures each tab in headless Chromium (Playwright
with Debian's ``chromium``). The PNGs are reduced to 256 colours to stay small.

    python -m tools.demo_screenshots [--out docs/images] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import PIL.Image

from dit_accel.demo import DemoSession
from dit_accel.demo_app import build_app, launch

# The image tabs: (tab, the button pressed on its defaults or None to show the inputs only, file).
IMAGE_TABS = (
    ("Style-aligned batch", "Generate the batch", "demo-style.png"),
    ("Concept masks", "Generate and find the masks", "demo-masks.png"),
    ("Multi-subject", "Generate the batch", "demo-multi-subject.png"),
    ("Compose", None, "demo-compose.png"),  # needs uploaded images
)
# JavaScript: how many images are on show (a tab's result adds some).
VISIBLE_IMAGES = "[...document.querySelectorAll('img')].filter(i => i.offsetParent && i.naturalWidth > 0).length"
# Largest screenshot kept as it is; larger ones are scaled down until they fit.
MAX_BYTES = 300_000
VIEWPORT = {"width": 1200, "height": 900}


def save_small(page, path: Path) -> None:
    """A full-page screenshot of ``page`` as a 256-colour PNG of at most :data:`MAX_BYTES`."""
    page.screenshot(path=str(path), full_page=True)
    image = PIL.Image.open(path).convert("RGB")
    scale = 1.0
    while True:
        size = (round(image.width * scale), round(image.height * scale))
        image.resize(size, PIL.Image.Resampling.LANCZOS).quantize(256).save(path, optimize=True)
        if path.stat().st_size <= MAX_BYTES:
            return
        scale *= 0.85


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    parser.add_argument("--density", default="0.5", help="topk's density for the screenshot")
    parser.add_argument("--minutes", type=float, default=20, help="how long Generate may take")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    app = build_app(DemoSession(device="cpu"))
    launch(app, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(app.local_url)
            density = page.get_by_label("density").first  # the slider's number box
            density.fill(args.density)
            density.press("Enter")
            given = page.get_by_label("options given to the method")
            given.element_handle().wait_for_element_state("visible")
            page.wait_for_function(  # the page answers slowly on a busy CPU
                "el => el.value.startsWith('density=')", arg=given.element_handle(), timeout=180_000
            )
            page.get_by_role("button", name="Generate", exact=True).click()
            page.get_by_text("Block map of layer").wait_for(timeout=args.minutes * 60_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('video')].filter(v => v.videoWidth > 0).length === 2"
            )
            page.wait_for_timeout(1500)  # the plots draw
            save_small(page, args.out / "demo-accelerate.png")
            for tab, button, name in IMAGE_TABS:
                page.get_by_role("tab", name=tab).click()
                page.wait_for_timeout(1000)
                if button is not None:
                    shown = page.evaluate(VISIBLE_IMAGES)
                    page.locator(f"button:visible:text-is('{button}')").click()
                    page.wait_for_function(f"() => ({VISIBLE_IMAGES}) > {shown}", timeout=args.minutes * 60_000)
                    page.wait_for_timeout(1000)
                save_small(page, args.out / name)
            browser.close()
    finally:
        app.close()
    print("wrote", ", ".join(str(args.out / name) for name in ["demo-accelerate.png", *(t[2] for t in IMAGE_TABS)]))


if __name__ == "__main__":
    main()
