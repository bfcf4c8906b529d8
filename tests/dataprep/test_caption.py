"""Captions: sidecar parsing and matching, the VLM client against a real local HTTP server, CoCa."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from dataprep.caption import CaptionError, CocaCaptioner, VLMCaptioner, compose_global
from dataprep.config import CaptionConfig, VLMConfig
from dataprep.errors import FilmError
from dataprep.sidecar import load_sidecar, sidecar_caption, sidecar_global

KEY_ENV, KEY = "LCT_TEST_VLM_KEY", "sk-test-secret-4711"


def keyframes(seed: int, k: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (k, 48, 64, 3), dtype=np.uint8)  # (K, H, W, 3)


# ---- sidecar ---------------------------------------------------------------------------------

SIDECAR = {
    "version": 1,
    "scenes": [
        {"start_s": 0.0, "end_s": 5.0, "global_caption": "[Character] Character 1: a red disc. [Environment] a blue room. [Story] it slides."},
        {"start_s": 5.0, "end_s": 9.0, "global_caption": "[Character] Character 1: a red disc. [Environment] a green field. [Story] it rests."},
    ],
    "shots": [
        {"start_s": 0.0, "end_s": 1.7, "caption": "Character 1 slides to the left, close-up"},
        {"start_s": 1.7, "end_s": 5.0, "caption": "wide shot of the room, Character 1 in the corner"},
        {"start_s": 5.0, "end_s": 9.0, "caption": "Character 1 rests in the grass"},
    ],
}


def write(tmp_path, data, name="film.captions.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_sidecar_matching_by_overlap(tmp_path):
    sidecar = load_sidecar(write(tmp_path, SIDECAR))
    assert sidecar_caption(sidecar, 0.0, 1.7) == "Character 1 slides to the left, close-up"
    assert sidecar_caption(sidecar, 0.1, 1.6) == "Character 1 slides to the left, close-up"  # detection jitter
    assert sidecar_caption(sidecar, 1.0, 3.0) == "wide shot of the room, Character 1 in the corner"  # 1.3 of 2 s
    assert sidecar_caption(sidecar, 8.0, 12.0) is None  # only 1 s of 4 s is covered
    assert sidecar_caption(sidecar, 20.0, 21.0) is None
    assert "green field" in sidecar_global(sidecar, 4.5, 9.0)
    assert "blue room" in sidecar_global(sidecar, 0.0, 1.7)
    assert sidecar_global(sidecar, 20.0, 30.0) is None


def test_missing_sidecar_is_none(tmp_path):
    assert load_sidecar(tmp_path / "absent.captions.json") is None


@pytest.mark.parametrize(
    "data, says",
    [
        ("{not json", "not JSON"),
        ({**SIDECAR, "version": 2}, "version"),
        ({"version": 1, "scenes": []}, "'shots' must be a list"),
        ({**SIDECAR, "shots": [{"start_s": 2.0, "end_s": 1.0, "caption": "x"}]}, r"shots\[0\] needs 0 <= start_s < end_s"),
        ({**SIDECAR, "shots": [{"start_s": 0.0, "end_s": 1.0}]}, r"shots\[0\] needs a non-empty string 'caption'"),
        ({**SIDECAR, "scenes": [{"start_s": "0", "end_s": 1.0, "global_caption": "g"}]}, r"scenes\[0\] needs numeric"),
    ],
)
def test_malformed_sidecar_is_a_film_error(tmp_path, data, says):
    with pytest.raises(FilmError, match=f"bad sidecar captions: .*{says}"):
        load_sidecar(write(tmp_path, data))


# ---- compose_global --------------------------------------------------------------------------


def test_compose_global_layout():
    text = compose_global(["Character 1 slides to the left, close-up.", "Character 2 and Character 1 meet, wide shot", ""])
    assert text == (
        "[Character] Character 1: in shots 1, 2. Character 2: in shot 2. "
        "[Environment] Character 1 slides to the left, close-up. "
        "[Story] Character 1 slides to the left, close-up. Character 2 and Character 1 meet, wide shot."
    )
    described = compose_global(["Character 1: a red disc. Character 2: a blue square", "Character 2 jumps"])
    assert described.startswith("[Character] Character 1: a red disc. Character 2: a blue square. [Environment]")
    assert compose_global([""]) == "[Character] none identified. [Environment] unknown. [Story] unknown."
    with pytest.raises(ValueError, match="at least one shot"):
        compose_global([])


# ---- VLM: a real HTTP server on 127.0.0.1 ----------------------------------------------------


class FakeVLM:
    """Answers POST /v1/chat/completions from a script of replies; records every request."""

    def __init__(self):
        self.script: list[tuple] = []  # ("answer", text) | ("status", code, body) | ("sleep", seconds)
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                kind, *args = fake.script.pop(0) if len(fake.script) > 1 else fake.script[0]
                if kind == "sleep":
                    time.sleep(args[0])
                    return
                code, text = (200, json.dumps({"choices": [{"message": {"content": args[0]}}]})) if kind == "answer" else args
                payload = text.encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()


@pytest.fixture
def vlm(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    fake = FakeVLM()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def client(fake: FakeVLM, **kw) -> VLMCaptioner:
    cfg = dict(url=fake.url, model="test-vlm", api_key_env=KEY_ENV, timeout_s=5.0, retries=2, backoff_s=0.01)
    return VLMCaptioner(VLMConfig(**(cfg | kw)))


GOOD = {"global": "[Character] Character 1: a red disc. [Environment] a room. [Story] it moves.",
        "shots": ["Character 1 slides left, close-up", "Character 1 stops, wide shot"]}


def test_vlm_good_answer_carries_images_model_and_key(vlm):
    vlm.script = [("answer", "```json\n" + json.dumps(GOOD) + "\n```")]
    answer = client(vlm, max_images_per_shot=2)([keyframes(0, k=3), keyframes(1, k=1)])
    assert answer.global_caption == GOOD["global"] and answer.shot_captions == GOOD["shots"]
    (request,) = vlm.requests
    assert request["path"] == "/v1/chat/completions" and request["auth"] == f"Bearer {KEY}"
    body = request["body"]
    assert body["model"] == "test-vlm"
    parts = body["messages"][0]["content"]
    assert "[Character]" in parts[0]["text"] and "exactly 2 captions" in parts[0]["text"]
    images = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert len(images) == 3 and all(u.startswith("data:image/jpeg;base64,") for u in images)  # 2 + 1 keyframes
    assert [p["text"] for p in parts[1:] if p["type"] == "text"] == ["Shot 1:", "Shot 2:"]


def test_vlm_malformed_json_fails_after_retries(vlm, caplog):
    vlm.script = [("answer", "Sure! Here are your captions: {global: oops")]
    with pytest.raises(CaptionError, match="failed after 3 attempts; last: malformed answer, not JSON.*Sure! Here"):
        client(vlm)([keyframes(0), keyframes(1)])
    assert len(vlm.requests) == 3
    assert KEY not in caplog.text


def test_vlm_wrong_shot_count(vlm):
    vlm.script = [("answer", json.dumps(GOOD))]
    with pytest.raises(CaptionError, match="wrong number of shot captions: got 2, the scene has 3 shots"):
        client(vlm, retries=0)([keyframes(0), keyframes(1), keyframes(2)])
    assert len(vlm.requests) == 1


def test_vlm_timeout_is_retried_and_bounded(vlm):
    vlm.script = [("sleep", 1.5)]
    start = time.monotonic()
    with pytest.raises(CaptionError, match=r"failed after 3 attempts; last: timed out after 0.3 s"):
        client(vlm, timeout_s=0.3, backoff_s=0.05)([keyframes(0)])
    assert len(vlm.requests) == 3
    assert time.monotonic() - start < 3 * 0.3 + 0.05 + 0.1 + 1.0  # 3 timeouts + backoffs + slack


def test_vlm_500_then_success(vlm):
    vlm.script = [("status", 503, "overloaded"), ("status", 429, "slow down"), ("answer", json.dumps(GOOD))]
    answer = client(vlm)([keyframes(0), keyframes(1)])
    assert answer.shot_captions == GOOD["shots"] and len(vlm.requests) == 3


def test_vlm_4xx_is_not_retried_and_never_shows_the_key(vlm):
    vlm.script = [("status", 401, f"invalid key {KEY}")]
    with pytest.raises(CaptionError, match=r"HTTP 401 \(not retried\)") as info:
        client(vlm)([keyframes(0)])
    assert KEY not in str(info.value) and "***" in str(info.value)
    assert len(vlm.requests) == 1


def test_vlm_unreachable_is_a_caption_error():
    with pytest.raises(CaptionError, match="connection failed"):
        VLMCaptioner(VLMConfig(url="http://127.0.0.1:9/v1", model="m", retries=1, backoff_s=0.01))([keyframes(0)])


# ---- CoCa ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coca() -> CocaCaptioner:
    return CocaCaptioner(CaptionConfig(coca_seq_len=6, batch_size=2, coca_top_k=5))


def test_coca_one_caption_per_image_deterministic(coca):
    images = [keyframes(i, k=1)[0] for i in range(3)]
    captions = coca(images)
    assert len(captions) == 3 and all(isinstance(c, str) and c.strip() for c in captions)
    assert not any("<start_of_text>" in c or "<end_of_text>" in c for c in captions)
    assert coca(images) == captions  # seeded sampling
    assert coca.description == {"model": "coca_ViT-B-32", "pretrained": None, "random_init": True}
    with pytest.raises(ValueError, match=r"image 0: expected \(H, W, 3\) uint8"):
        coca([keyframes(0)])


def test_coca_random_init_is_the_same_in_every_instance(coca):
    images = [keyframes(i, k=1)[0] for i in range(2)]
    assert CocaCaptioner(coca.cfg)(images) == coca(images)


# ---- caption policy per film: nothing invented, nothing silently empty -----------------------


def _film(n_shots: int = 3):
    """A FilmResult of n kept 1-second shots at 8 fps with random keyframes and no sidecar."""
    from dataprep.film import FilmResult
    from dataprep.filters import Span
    from dataprep.keyframes import ShotClip

    spans = [Span(8 * i, 8 * (i + 1), i) for i in range(n_shots)]
    clips = [ShotClip(b"", keyframes(i), 8) for i in range(n_shots)]
    return FilmResult(uri="/films/x.mp4", film_id="f", fps=8.0, spans=spans, clips=clips)


def test_without_weights_or_endpoint_nothing_is_captioned_by_a_random_model():
    from dataprep.caption_film import FilmCaptioner, has_captioner

    cfg = CaptionConfig()  # the defaults: coca on, but no coca_pretrained and no VLM
    assert not has_captioner(cfg)
    captioner = FilmCaptioner(cfg)
    assert captioner.coca is None  # no random-init CoCa is loaded
    captions, failures = captioner(_film(), [[0, 1], [2]])
    assert captions.shots == ["", "", ""] and captions.sources == ["none"] * 3
    assert captions.scene_globals == ["", ""]  # no composed "[Character] none identified..." either
    assert captions.scene_status == ["no_captioner", "no_captioner"] and failures == 0


def test_an_unreachable_vlm_leaves_failed_scenes_with_source_none():
    import socket

    from dataprep.caption_film import FilmCaptioner

    with socket.socket() as s:  # a port on 127.0.0.1 where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    vlm = VLMConfig(url=f"http://127.0.0.1:{port}/v1", model="fake", api_key_env=None, retries=1, backoff_s=0.0,
                    timeout_s=2)
    captions, failures = FilmCaptioner(CaptionConfig(vlm=vlm, coca=False))(_film(), [[0, 1], [2]])
    assert failures == 2  # both scenes' requests failed after their retry
    assert captions.sources == ["none"] * 3 and captions.shots == ["", "", ""]
    assert captions.scene_status == ["failed", "failed"]  # a configured captioner failed: counted against the policy


def test_empty_model_answers_are_not_captions():
    from dataprep.caption_film import SCENE_FAILED, finish

    captions = finish(["a cat", None], ["vlm", "none"], [None], [[0, 1]], missing=SCENE_FAILED)
    assert captions.shots == ["a cat", ""] and captions.scene_status == [SCENE_FAILED]
    assert "a cat" in captions.scene_globals[0]  # composed from the shot that has a caption
