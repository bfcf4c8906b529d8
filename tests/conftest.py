from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "testvideo.mp4").is_file():
        pytest.fail(f"shared test clips not found under {SHARED_DATA} (expected ../shared/data beside the repo)")
    return SHARED_DATA
