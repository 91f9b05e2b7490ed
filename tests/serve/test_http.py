"""A real Ray Serve instance on 127.0.0.1, hit over HTTP with valid and malformed uploads."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.export.models import CLASSES
from tests.serve.conftest import MAX_BODY

pytestmark = pytest.mark.ray

def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(size: tuple[int, int] = (200, 160), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def _assert_prediction(body: dict) -> None:
    assert body["class"] in CLASSES
    assert set(body["probabilities"]) == set(CLASSES)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["confidence"] == pytest.approx(max(body["probabilities"].values()))
    assert isinstance(body["needs_review"], bool)


def test_health_ready_metadata_docs(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["provider"] == "CPUExecutionProvider"
    meta = client.get("/metadata").json()
    assert meta["classes"] == CLASSES and meta["input_size"] == 64 and meta["run_id"] == "test-run"
    assert len(meta["model_version"]) == 12 and meta["limits"]["max_body_bytes"] == MAX_BODY
    # serve.precision=auto: this export has no INT8 model, so the replica runs fp32 and says why.
    assert meta["precision"] == "fp32" and meta["precision_choice"] == "auto: no INT8 model exported"
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/predict", "/predict/batch", "/healthz", "/readyz", "/metadata"} <= set(paths)
    assert client.get("/docs").status_code == 200


API_KEY = "s3cret-key"


@pytest.fixture(scope="module")
def secure(server: str, model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The same model as a second app behind an API key (serve.api_key_file), on the same Serve instance."""
    from ray import serve

    from weldray.config import load_config
    from weldray.inference.serving import build_application

    key_file = tmp_path_factory.mktemp("key") / "api.key"
    key_file.write_text(API_KEY + "\n")
    cfg = load_config(
        [f"serve.api_key_file={key_file}", "serve.min_replicas=1", "serve.max_replicas=1",
         "serve.num_cpus_per_replica=0.25", "serve.intra_op_threads=1"]
    ).serve
    serve.run(build_application(model_path, cfg), name="weldray-secure", route_prefix="/secure")
    return f"{server}/secure"


def test_api_key_guards_the_model_routes_only(secure: str) -> None:
    data = _encode(_photo(), "PNG")
    with httpx.Client(base_url=secure, timeout=30.0) as c:
        for route, kwargs in (("/predict", {"content": data}), ("/metadata", {}), ("/model-card", {})):
            method = c.post if route == "/predict" else c.get
            for headers in ({}, {"x-api-key": "wrong"}, {"authorization": f"Bearer {API_KEY}x"}):
                denied = method(route, headers=headers, **kwargs)
                assert denied.status_code == 401 and denied.json()["error"] == "unauthorized", (route, headers)
                assert denied.headers["www-authenticate"].startswith("Bearer")
            for headers in ({"x-api-key": API_KEY}, {"authorization": f"Bearer {API_KEY}"}):
                assert method(route, headers=headers, **kwargs).status_code == 200, (route, headers)
        assert c.get("/metadata", headers={"x-api-key": API_KEY}).json()["api_key_required"] is True
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200  # open: liveness, the page


def test_a_missing_or_empty_key_file_fails_before_any_replica(model_path: Path, tmp_path: Path) -> None:
    from weldray.config import load_config
    from weldray.inference.serving import build_application

    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    with pytest.raises(FileNotFoundError, match="serve.api_key_file=.*no such file"):
        build_application(model_path, load_config([f"serve.api_key_file={tmp_path / 'none.key'}"]).serve)
    with pytest.raises(ValueError, match="is empty"):
        build_application(model_path, load_config([f"serve.api_key_file={empty}"]).serve)


def test_metadata_links_the_model_card(client: httpx.Client) -> None:
    url = client.get("/metadata").json()["model_card"]
    card = client.get(url)
    assert card.status_code == 200 and card.headers["content-type"].startswith("text/markdown")
    assert card.text.startswith("# Model card: test-run") and "## Intended use and known limits" in card.text


def test_predict_matches_in_process_inference(client: httpx.Client, model_path: Path) -> None:
    from weldray.inference import WeldClassifierInference

    data = _encode(_photo(), "JPEG", quality=90)
    raw = client.post("/predict", content=data, headers={"content-type": "image/jpeg"})
    multi = client.post("/predict", files={"file": ("weld.jpg", data, "image/jpeg")})
    assert raw.status_code == 200 and multi.status_code == 200, (raw.text, multi.text)
    local = WeldClassifierInference(model_path, providers="cpu").predict(data)
    for resp in (raw, multi):
        body = resp.json()
        _assert_prediction(body)
        assert body["class"] == local["class"]
        for name in CLASSES:
            assert body["probabilities"][name] == pytest.approx(local["probabilities"][name], abs=1e-5)


def test_predict_answer_says_where_its_time_went(client: httpx.Client) -> None:
    from weldray.inference.serving import TIMING_STAGES

    resp = client.post("/predict", content=_encode(_photo(), "PNG"))
    assert resp.status_code == 200, resp.text
    parts = [p.strip().split(";") for p in resp.headers["server-timing"].split(",")]
    durations = {p[0]: float(p[1].removeprefix("dur=")) for p in parts if p[0] != "batch"}
    assert list(durations) == list(TIMING_STAGES)  # every stage, in the order a request goes through them
    assert all(v >= 0 for v in durations.values()), durations
    inside = sum(durations[k] for k in TIMING_STAGES if k != "app")
    assert inside <= durations["app"] + 0.05  # the stages account for the handler's time, not more
    assert ["batch", 'desc="1"'] in parts


def test_predict_explain_returns_a_heatmap_overlay(client: httpx.Client) -> None:
    import base64

    ramp = np.linspace(0, 255, 900, dtype=np.uint8)
    photo = Image.fromarray(np.stack([np.tile(ramp, (600, 1))] * 3, axis=-1), "RGB")  # smooth: a small JPEG
    data = _encode(photo, "JPEG")
    r = client.post("/predict?explain=true", content=data, headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    _assert_prediction(body)
    explanation = body["explanation"]
    overlay = Image.open(io.BytesIO(base64.b64decode(explanation["overlay_png_base64"])))
    assert overlay.format == "PNG" and overlay.size == (512, 341) and explanation["photo_size"] == [900, 600]
    assert 0 <= body["peak_xy"][0] < 900 and 0 <= body["peak_xy"][1] < 600
    plain = client.post("/predict", content=data, headers={"content-type": "image/jpeg"}).json()
    assert plain["probabilities"] == pytest.approx(body["probabilities"], abs=1e-5) and "explanation" not in plain
    bad = client.post("/predict?explain=maybe", content=data, headers={"content-type": "image/jpeg"})
    assert bad.status_code == 400 and "explain" in bad.json()["reason"]


def test_served_through_haproxy_direct_ingress(server: str) -> None:
    """serve.ingress=haproxy (the default): HAProxy forwards to the replica's own HTTP server, and
    no Python proxy sits on the request path (the fallback proxy is not the frontend)."""
    import ray
    from ray.util.state import list_actors

    # This session's own Ray by address: auto-detection fails while other Ray instances run on the machine.
    mine = ray.get_runtime_context().gcs_address
    alive = {a.class_name for a in list_actors(address=mine, filters=[("state", "=", "ALIVE")], limit=1000)}
    assert "HAProxyManager" in alive, alive
    import psutil

    port = int(server.rsplit(":", 1)[1])
    listeners = [c for c in psutil.net_connections(kind="tcp") if c.laddr.port == port and c.status == "LISTEN"]
    assert listeners and all(psutil.Process(c.pid).name() == "haproxy" for c in listeners), listeners
    # Started through weldray-haproxy: uploads are held whole, so one whose replica dies can be retried.
    from weldray.inference.haproxy import MARK, config_path

    config = config_path(psutil.Process(listeners[0].pid).cmdline())
    assert config is not None
    text = config.read_text()
    assert MARK in text and "http-request wait-for-body" in text, text[:2000]
    assert "retry-on conn-failure empty-response" in text and "retries 1" in text, text[:2000]
    # HAProxy's own listeners (the app, its stats page, its Prometheus exporter) are on serve.host only.
    haproxies = {c.pid for c in listeners}
    bound = [c.laddr for c in psutil.net_connections(kind="tcp") if c.pid in haproxies and c.status == "LISTEN"]
    assert len(bound) >= 3 and all(a.ip == "127.0.0.1" for a in bound), bound


def test_concurrent_requests_match_in_process_inference(client: httpx.Client, server: str, model_path: Path) -> None:
    """Concurrent uploads are decoded before they join a batch; each still gets its own answer."""
    from weldray.inference import WeldClassifierInference

    uploads = [_encode(_photo(seed=s), "JPEG", quality=90) for s in range(4)]
    local = WeldClassifierInference(model_path, providers="cpu")

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server, timeout=60.0) as c:
            return await asyncio.gather(*(c.post("/predict", content=u) for u in uploads))

    for resp, data in zip(asyncio.run(together()), uploads, strict=True):
        assert resp.status_code == 200, resp.text
        expected = local.predict(data)["probabilities"]
        for name in CLASSES:
            assert resp.json()["probabilities"][name] == pytest.approx(expected[name], abs=1e-5)


@pytest.mark.parametrize("kind", ["grayscale", "16bit", "cmyk", "rgba", "bmp", "tiff", "webp"])
def test_predict_converts_image_kinds(client: httpx.Client, kind: str) -> None:
    rgb = _photo()
    data = {
        "grayscale": lambda: _encode(rgb.convert("L"), "PNG"),
        "16bit": lambda: _encode(Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257), "PNG"),
        "cmyk": lambda: _encode(rgb.convert("CMYK"), "JPEG"),
        "rgba": lambda: _encode(rgb.convert("RGBA"), "PNG"),
        "bmp": lambda: _encode(rgb, "BMP"),
        "tiff": lambda: _encode(rgb, "TIFF"),
        "webp": lambda: _encode(rgb, "WEBP"),
    }[kind]()
    resp = client.post("/predict", content=data)
    assert resp.status_code == 200, resp.text
    _assert_prediction(resp.json())


def _bad_uploads() -> dict[str, tuple[bytes, int, str]]:
    jpeg = _encode(_photo(), "JPEG")
    return {
        "empty": (b"", 400, "empty"),
        "not_an_image": (b"hello, this is text and not an image" * 4, 415, "unsupported_format"),
        "gif": (_encode(_photo(), "GIF"), 415, "unsupported_format"),
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], 400, "corrupt"),
        "corrupt_png_header": (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, 400, "corrupt"),
        "pixel_bomb": (_encode(Image.new("RGB", (1200, 1000), "gray"), "PNG"), 413, "too_large"),
        "body_too_large": (_encode(_photo((640, 640)), "BMP"), 413, "too_large"),
    }


@pytest.mark.parametrize("kind", list(_bad_uploads()))
def test_malformed_uploads_get_json_4xx(client: httpx.Client, kind: str) -> None:
    data, status, code = _bad_uploads()[kind]
    resp = client.post("/predict", content=data)
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == code and body["reason"]
    assert client.get("/healthz").status_code == 200


def test_malformed_multipart_and_batch(client: httpx.Client) -> None:
    no_file = client.post(
        "/predict", files={"note": (None, "a text field, no file")}
    )  # multipart, no file part
    assert no_file.status_code == 400 and "no file part" in no_file.json()["reason"]
    form = client.post("/predict", data={"note": "url-encoded form"})  # not an image at all
    assert form.status_code == 415 and form.json()["error"] == "unsupported_format"
    broken = client.post(
        "/predict", content=b"--xyz\r\ngarbage", headers={"content-type": "multipart/form-data; boundary=xyz"}
    )
    assert broken.status_code == 400 and broken.json()["reason"]
    raw_to_batch = client.post("/predict/batch", content=_encode(_photo(), "PNG"))
    assert raw_to_batch.status_code == 415 and raw_to_batch.json()["error"] == "unsupported_format"
    good = _encode(_photo(), "PNG")
    resp = client.post(
        "/predict/batch",
        files=[
            ("files", ("a.png", good, "image/png")),
            ("files", ("b.txt", b"not an image", "text/plain")),
            ("files", ("c.png", good, "image/png")),
        ],
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["n_ok"] == 2 and body["results"][1]["status"] == 415
    _assert_prediction(body["results"][0])
    assert body["results"][0]["probabilities"] == body["results"][2]["probabilities"]
    too_many = client.post(
        "/predict/batch", files=[("files", (f"{i}.png", good, "image/png")) for i in range(5)]
    )
    assert too_many.status_code == 413 and too_many.json()["error"] == "too_large"


def test_overload_answers_json_503_and_recovers(server: str) -> None:
    data = _encode(_photo((640, 640)), "JPEG")

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server, timeout=60.0) as c:
            return await asyncio.gather(*(c.post("/predict", content=data) for _ in range(24)))

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503}, codes
    assert 200 in codes and 503 in codes, codes
    rejected = next(r for r in responses if r.status_code == 503)
    assert rejected.json()["error"] == "overloaded" and rejected.headers["retry-after"] == "1"
    with httpx.Client(base_url=server, timeout=30.0) as c:
        assert c.get("/healthz").status_code == 200
        assert c.post("/predict", content=data).status_code == 200


@pytest.fixture()
def browser(tmp_path: Path):
    """Headless Chromium (Debian's chromium + chromium-driver; `make test` installs them)."""
    import shutil

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("needs Debian's chromium and chromium-driver (`make browser` installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(tmp_path), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_web_inspector_in_a_real_browser(server: str, browser, tmp_path: Path) -> None:
    """A person's path: open /, choose two photos (one broken), see verdicts, heatmap and the API's reason,
    download the CSV."""
    import csv

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    good = tmp_path / "weld.jpg"
    _photo((320, 240)).save(good, "JPEG")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff" + b"\x00" * 100)
    browser.get(server + "/")
    WebDriverWait(browser, 30).until(lambda d: "model " in d.find_element(By.ID, "model").text)
    assert "classes good_weld, bad_weld" in browser.find_element(By.ID, "model").text
    browser.find_element(By.ID, "files").send_keys(f"{good}\n{broken}")
    rows = lambda d: d.find_elements(By.CSS_SELECTOR, "#results tbody tr")  # noqa: E731
    WebDriverWait(browser, 120).until(
        lambda d: len(rows(d)) == 2 and all(r.get_attribute("data-status") != "pending" for r in rows(d))
    )
    ok, bad = rows(browser)
    cells = ok.find_elements(By.TAG_NAME, "td")
    assert cells[2].text in CLASSES and cells[3].text.endswith("%")
    heatmap = cells[1].find_element(By.TAG_NAME, "img")
    assert heatmap.get_attribute("src").startswith("data:image/png;base64,")
    assert browser.execute_script("return arguments[0].naturalWidth", heatmap) == 320  # the overlay decoded
    assert bad.get_attribute("data-status") == "error" and bad.find_elements(By.TAG_NAME, "td")[5].text.startswith(
        "corrupt: "
    )
    assert "2 of 2 done" in browser.find_element(By.ID, "summary").text
    assert browser.save_screenshot(str(tmp_path / "inspector.png"))
    browser.find_element(By.ID, "csv").click()
    target = tmp_path / "weldray-results.csv"
    WebDriverWait(browser, 30).until(lambda d: target.exists() and target.stat().st_size > 0)
    table = list(csv.DictReader(target.open()))
    assert [r["photo"] for r in table] == ["weld.jpg", "broken.jpg"]
    assert table[0]["class"] in CLASSES and table[1]["error"] == "corrupt"


def test_inspector_asks_for_the_api_key_and_then_classifies(secure: str, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = tmp_path / "weld.png"
    _photo().save(photo)
    browser.get(secure + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "keyform").is_displayed())
    assert "needs an API key" in browser.find_element(By.ID, "model").text
    browser.find_element(By.ID, "apikey").send_keys(API_KEY)
    browser.find_element(By.CSS_SELECTOR, "#keyform button").click()
    WebDriverWait(browser, 30).until(lambda d: "classes good_weld, bad_weld" in d.find_element(By.ID, "model").text)
    assert not browser.find_element(By.ID, "keyform").is_displayed()
    browser.find_element(By.ID, "files").send_keys(str(photo))
    row = lambda d: d.find_element(By.CSS_SELECTOR, "#results tbody tr")  # noqa: E731
    WebDriverWait(browser, 60).until(lambda d: row(d).get_attribute("data-status") == "done")


def test_inspector_assets_are_served_and_nothing_else(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "weldray inspector" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: works offline
    assert client.get("/static/inspector.js").headers["content-type"].startswith("text/javascript")
    missing = client.get("/static/serving.py")  # only the inspector's own files
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
