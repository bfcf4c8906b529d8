"""Caption one film's kept shots and scenes, in priority: sidecar -> VLM -> CoCa -> none.

Shot captions come from the first source that has one; a scene's global caption comes
from the sidecar, else the VLM, else it is composed from its shot captions. A VLM that
fails on a scene (after its retries) is recorded and that scene falls back to CoCa.

No caption is invented: CoCa captions only with configured weights (`coca_pretrained`; a
random-init CoCa writes gibberish, so it runs only when `coca_random` asks for it), an empty
answer counts as none, and a shot nobody captioned is written as "" with source `none`
(a scene whose shots are all uncaptioned gets an empty global caption too). Each scene gets a
status, counted by the run against `max_caption_failure_rate`:

    captioned      every shot has a caption
    failed         a configured captioner (VLM, CoCa) was asked and gave none for some shot
    no_captioner   some shot has no caption and no captioner is configured (not a failure:
                   the run says so, and `lct train` warns that it trains on uncaptioned scenes)
"""

from __future__ import annotations

import logging

from dataprep.caption import CaptionError, CocaCaptioner, VLMCaptioner, compose_global
from dataprep.film import FilmResult
from dataprep.assemble import Captions
from dataprep.sidecar import sidecar_caption, sidecar_global

log = logging.getLogger(__name__)

SCENE_CAPTIONED, SCENE_FAILED, SCENE_NO_CAPTIONER = "captioned", "failed", "no_captioner"


def coca_enabled(cfg) -> bool:
    """CoCa captions only with configured weights, or when a random-init CoCa is asked for explicitly."""
    return bool(cfg.coca and (cfg.coca_pretrained or cfg.coca_random))


def has_captioner(cfg) -> bool:
    """A model captioner is configured (VLM endpoint or CoCa with weights)."""
    return cfg.vlm is not None or coca_enabled(cfg)


def sidecar_only(result: FilmResult, scenes: list[list[int]]) -> tuple[list, list, list]:
    """(shot captions, sources, scene globals) from the sidecar; None where it has nothing."""
    kept = result.kept
    shots: list[str | None] = [None] * len(kept)
    sources = ["none"] * len(kept)
    globals_: list[str | None] = [None] * len(scenes)
    if result.sidecar is None:
        return shots, sources, globals_
    fps = result.fps
    for k, span in enumerate(kept):
        text = sidecar_caption(result.sidecar, span.start_frame / fps, span.end_frame / fps)
        if text:
            shots[k], sources[k] = text, "sidecar"
    for j, scene in enumerate(scenes):
        globals_[j] = sidecar_global(result.sidecar, kept[scene[0]].start_frame / fps, kept[scene[-1]].end_frame / fps)
    return shots, sources, globals_


def has_gaps(shots: list, globals_: list) -> bool:
    """True when a shot caption or a scene caption is still missing (None)."""
    return any(s is None for s in shots) or any(g is None for g in globals_)


def finish(shots: list, sources: list, globals_: list, scenes: list[list[int]], missing: str = SCENE_NO_CAPTIONER) -> Captions:
    """Fill the gaps: empty shot captions (source `none`), composed scene captions ("" when no shot has
    one). `missing` = the status of a scene with an uncaptioned shot (failed, or no_captioner)."""
    status = [missing if any(shots[k] is None for k in scene) else SCENE_CAPTIONED for scene in scenes]
    shots = [s if s is not None else "" for s in shots]
    globals_ = [
        g if g is not None else compose_global([shots[k] for k in scene]) if any(shots[k] for k in scene) else ""
        for g, scene in zip(globals_, scenes)
    ]
    return Captions(shots, sources, globals_, status)


class FilmCaptioner:
    """Holds the VLM client and (lazily) the CoCa model; one instance per captioning actor."""

    def __init__(self, cfg, api_key: str | None = None):
        self.cfg = cfg
        self.vlm = VLMCaptioner(cfg.vlm, api_key) if cfg.vlm is not None else None
        self._coca: CocaCaptioner | None = None

    @property
    def coca(self) -> CocaCaptioner | None:
        if self._coca is None and coca_enabled(self.cfg):
            self._coca = CocaCaptioner(self.cfg)
        return self._coca

    def __call__(self, result: FilmResult, scenes: list[list[int]]) -> tuple[Captions, int]:
        """Captions of the film and how many of its scenes the VLM failed on."""
        shots, sources, globals_ = sidecar_only(result, scenes)
        failures = 0
        if self.vlm is not None:
            for j, scene in enumerate(scenes):
                if all(shots[k] is not None for k in scene) and globals_[j] is not None:
                    continue
                try:
                    answer = self.vlm([result.clips[k].keyframes for k in scene])
                except CaptionError as e:
                    failures += 1
                    log.warning("VLM failed on scene %d of %s: %s", j, result.uri, e)
                    continue
                for k, text in zip(scene, answer.shot_captions):
                    if shots[k] is None and text.strip():
                        shots[k], sources[k] = text, "vlm"
                globals_[j] = globals_[j] or answer.global_caption or None
        missing = [k for k, s in enumerate(shots) if s is None]
        if missing and self.coca is not None:
            middle = [result.clips[k].keyframes[len(result.clips[k].keyframes) // 2] for k in missing]
            for k, text in zip(missing, self.coca(middle)):
                if text.strip():
                    shots[k], sources[k] = text, "coca"
        missing_status = SCENE_FAILED if has_captioner(self.cfg) else SCENE_NO_CAPTIONER
        return finish(shots, sources, globals_, scenes, missing_status), failures
