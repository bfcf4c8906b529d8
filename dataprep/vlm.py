"""Scene captions from an OpenAI-compatible chat-completions endpoint (e.g. a vLLM server).

One request per scene: the LCT two-tier prompt, then each shot's keyframe(s) as base64 JPEG
data-URLs, in order. The answer must be JSON with one global caption and exactly one caption
per shot. Timeouts, connection errors, 5xx and 429 are retried with exponential backoff, and
so are malformed answers (sampling may fix them); other 4xx are not. The API key is read from
the environment variable named in the config and never logged nor put in an error message.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import time
from dataclasses import dataclass

import httpx
import numpy as np
from PIL import Image

from dataprep.config import VLMConfig

log = logging.getLogger(__name__)

LCT_PROMPT = """You are captioning one scene of a film for training a multi-shot video generator.
The scene has {n_shots} shots, in order; the images of each shot follow its "Shot i" label.

Answer with JSON only, no other text:
{{"global": "[Character] Character 1: <appearance>. Character 2: <appearance>. [Environment] <where the scene takes place, lighting, style> [Story] <what happens across the shots>",
 "shots": ["<caption of shot 1>", ..., "<caption of shot {n_shots}>"]}}

Rules:
- Give every recurring person, animal or object of interest an ID (Character 1, Character 2, ...),
  describe their appearance once in [Character], and refer to them only by ID elsewhere.
- "shots" has exactly {n_shots} captions, one per shot, in order. Each names the characters by ID,
  says what they do and the framing and camera motion, e.g. "Character 1 slides to the left, close-up".
- Describe only what is visible. One or two sentences per shot."""

RETRY_STATUS = {429, 500, 502, 503, 504}
SNIPPET = 300  # characters of a bad answer quoted in an error


class CaptionError(Exception):
    """A scene the VLM could not caption (after retries). The message says what was wrong."""


@dataclass(frozen=True)
class SceneCaptions:
    global_caption: str
    shot_captions: list[str]


def data_url(image: np.ndarray, quality: int = 90) -> str:
    """(H, W, 3) uint8 -> 'data:image/jpeg;base64,...'."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def pick_keyframes(frames: np.ndarray, n: int) -> np.ndarray:
    """n evenly spaced keyframes (the middle one when n == 1) of (K, H, W, 3)."""
    k = len(frames)
    if n >= k:
        return frames
    return frames[[int((i + 0.5) * k / n) for i in range(n)]]


def parse_answer(text: str, n_shots: int) -> SceneCaptions:
    """The model's message -> SceneCaptions; ValueError saying what is wrong."""
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    body = fenced.group(1) if fenced else text
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed answer, not JSON ({e.msg})") from None
    if not isinstance(data, dict) or not {"global", "shots"} <= data.keys():
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"malformed answer, expected keys 'global' and 'shots', got {keys}")
    glob, shots = data["global"], data["shots"]
    if not isinstance(glob, str) or not glob.strip():
        raise ValueError("malformed answer, 'global' is not a non-empty string")
    if not isinstance(shots, list) or not all(isinstance(s, str) and s.strip() for s in shots):
        raise ValueError("malformed answer, 'shots' is not a list of non-empty strings")
    if len(shots) != n_shots:
        raise ValueError(f"wrong number of shot captions: got {len(shots)}, the scene has {n_shots} shots")
    return SceneCaptions(glob.strip(), [s.strip() for s in shots])


class VLMCaptioner:
    """Holds the HTTP client; __call__ captions one scene."""

    def __init__(self, cfg: VLMConfig, api_key: str | None = None):
        """`api_key` overrides the `cfg.api_key_env` variable (the Ray driver passes it to remote actors)."""
        self.cfg = cfg
        self.endpoint = cfg.url.rstrip("/") + "/chat/completions"
        self._key = api_key or (os.environ.get(cfg.api_key_env) if cfg.api_key_env else None)
        if cfg.api_key_env and not self._key:
            log.warning("environment variable %s is not set: calling %s without an API key", cfg.api_key_env, self.endpoint)
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        self.client = httpx.Client(timeout=cfg.timeout_s, headers=headers)

    def request(self, scene_keyframes: list[np.ndarray]) -> dict:
        """The chat-completions body: prompt, then 'Shot i' + its image(s) for each shot."""
        content: list[dict] = [{"type": "text", "text": LCT_PROMPT.format(n_shots=len(scene_keyframes))}]
        for i, frames in enumerate(scene_keyframes):
            content.append({"type": "text", "text": f"Shot {i + 1}:"})
            for image in pick_keyframes(frames, self.cfg.max_images_per_shot):
                content.append({"type": "image_url", "image_url": {"url": data_url(image)}})
        return {
            "model": self.cfg.model,
            "messages": [{"role": "user", "content": content}],
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }

    def __call__(self, scene_keyframes: list[np.ndarray]) -> SceneCaptions:
        """[(K, H, W, 3) uint8 keyframes per shot] -> SceneCaptions; CaptionError after retries."""
        if not scene_keyframes:
            raise ValueError("a scene needs at least one shot")
        for i, frames in enumerate(scene_keyframes):
            if frames.ndim != 4 or frames.shape[0] == 0 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
                raise ValueError(f"shot {i}: expected (K>=1, H, W, 3) uint8 keyframes, got {frames.shape} {frames.dtype}")
        body = self.request(scene_keyframes)
        attempts = 1 + self.cfg.retries
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.cfg.backoff_s * 2 ** (attempt - 1))
            answer = self._attempt(body, len(scene_keyframes))
            if isinstance(answer, SceneCaptions):
                return answer
            log.warning("VLM attempt %d/%d failed: %s", attempt + 1, attempts, answer)
        raise CaptionError(f"VLM {self.endpoint} failed after {attempts} attempts; last: {answer}")

    def _attempt(self, body: dict, n_shots: int) -> SceneCaptions | str:
        """One request: the captions, or what went wrong (retryable). Other 4xx raise."""
        try:
            response = self.client.post(self.endpoint, json=body)
        except httpx.TimeoutException:
            return f"timed out after {self.cfg.timeout_s} s"
        except httpx.TransportError as e:
            return f"connection failed ({type(e).__name__}: {e})"
        if response.status_code in RETRY_STATUS:
            return f"HTTP {response.status_code}: {self._snippet(response.text)}"
        if response.status_code != 200:
            raise CaptionError(
                f"VLM {self.endpoint} refused the request, HTTP {response.status_code} (not retried): "
                f"{self._snippet(response.text)}"
            )
        text = self._message(response)
        try:
            return parse_answer(text, n_shots)
        except ValueError as e:
            return f"{e}; answer: {self._snippet(text)}"

    def _message(self, response: httpx.Response) -> str:
        """The assistant message text of a chat-completions response ('' if absent)."""
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return response.text
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return content or ""

    def _snippet(self, text: str) -> str:
        text = text.replace(self._key, "***") if self._key else text
        return repr(text[:SNIPPET] + ("..." if len(text) > SNIPPET else ""))
