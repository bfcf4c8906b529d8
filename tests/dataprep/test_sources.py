from pathlib import Path

import pytest

from dataprep.sources import list_films, local_copy

EXT = (".mp4", ".mov")


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_files_folders_globs_and_file_urls_are_sorted_and_unique(tmp_path):
    a = _touch(tmp_path / "b" / "z.mp4")
    b = _touch(tmp_path / "a" / "deep" / "y.MOV")
    c = _touch(tmp_path / "a" / "notes.txt")
    d = _touch(tmp_path / "x y é.mp4")
    found = list_films([str(tmp_path / "a"), str(tmp_path / "b" / "*.mp4"), str(a), f"file://{d}"], EXT)
    assert found == sorted({str(a), str(b), str(d)})
    assert str(c) not in found


def test_explicit_file_is_kept_whatever_its_extension(tmp_path):
    f = _touch(tmp_path / "film.bin")
    assert list_films([str(f)], EXT) == [str(f)]


def test_symlink_keeps_its_own_name(tmp_path):
    target = _touch(tmp_path / "real.mp4")
    link = tmp_path / "link.mp4"
    link.symlink_to(target)
    assert list_films([str(link)], EXT) == [str(link)]


def test_inputs_that_match_nothing_are_named(tmp_path):
    _touch(tmp_path / "ok.mp4")
    with pytest.raises(FileNotFoundError, match=r"'/nope/x.mp4'.*'.*empty'"):
        (tmp_path / "empty").mkdir()
        list_films([str(tmp_path / "ok.mp4"), "/nope/x.mp4", str(tmp_path / "empty")], EXT)


def test_fsspec_urls_are_listed_and_copied_locally(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/films/one.mp4", b"one")
    fs.pipe("/bucket/films/sub/two.mp4", b"two")
    fs.pipe("/bucket/films/readme.md", b"-")
    found = list_films(["memory://bucket/films"], EXT)
    assert found == ["memory:///bucket/films/one.mp4", "memory:///bucket/films/sub/two.mp4"]
    local = local_copy(found[1], tmp_path / "cache")
    assert local.read_bytes() == b"two" and local.parent == tmp_path / "cache"
    assert local_copy(found[1], tmp_path / "cache") == local  # cached, same name


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("url, package", [("s3://bucket/films/", "s3fs"), ("gs://bucket/films/a.mp4", "gcsfs")])
def test_a_bucket_url_without_its_fsspec_driver_names_the_package(url, package):
    import importlib.util

    from dataprep.sources import SourceError

    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    with pytest.raises(SourceError, match=f"pip install {package}"):
        list_films([url], EXT)


def test_an_unreachable_http_source_is_a_source_error():
    from dataprep.sources import SourceError

    with pytest.raises(SourceError, match=r"cannot list http://127\.0\.0\.1:\d+/films/.*reachable"):
        list_films([f"http://127.0.0.1:{_closed_port()}/films/"], EXT)
    with pytest.raises(SourceError, match="Protocol not known"):
        list_films(["nosuchproto://x/y.mp4"], EXT)
