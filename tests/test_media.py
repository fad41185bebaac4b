"""media: safe local paths and the one guarded way to open a container (open_video)."""
import os
import random
import socket
import subprocess
import sys

import av
import pytest

from vidfeat import media
from vidfeat.media import (
    UnsafeMediaPath,
    VideoError,
    check_local_path,
    ffmpeg_exe,
    open_video,
    sniff_script,
)


def test_ffmpeg_exe_runs():
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-version"], capture_output=True, text=True)
    assert out.returncode == 0 and "ffmpeg version" in out.stdout


@pytest.mark.parametrize("bad", ["http://example.com/v.mp4", "concat:a.mp4|b.mp4", "pipe:0",
                                 "file:/etc/passwd", "data:video/mp4;base64,AAAA"])
def test_check_local_path_refuses_urls_and_protocols(bad):
    with pytest.raises(UnsafeMediaPath, match="not a local file"):
        check_local_path(bad)


def test_check_local_path_makes_dash_names_absolute(tmp_path):
    p = check_local_path("-y.mp4", base=tmp_path)
    assert p == tmp_path / "-y.mp4" and p.is_absolute()


def test_open_video_reads_a_real_video(video):
    with open_video(video("ok.mp4")) as c:
        assert len(c.streams.video) == 1
        assert c.format.name.startswith("mov")


@pytest.mark.parametrize("name", ["-y.mp4", "with space.mp4", "vidéo_日本.mp4", "-i -f.mkv"])
def test_open_video_odd_names(video, name):
    with open_video(video(name)) as c:
        assert c.streams.video[0].frames > 0 or c.streams.video[0].codec_context.width == 64


def test_open_video_refuses_urls():
    with pytest.raises(VideoError, match="not a local file"):
        open_video("http://127.0.0.1:9/v.mp4")


def test_open_video_missing_dir_fifo_empty(tmp_path):
    with pytest.raises(VideoError, match="file not found"):
        open_video(tmp_path / "nope.mp4")
    (tmp_path / "d.mp4").mkdir()
    with pytest.raises(VideoError, match="directory"):
        open_video(tmp_path / "d.mp4")
    os.mkfifo(tmp_path / "f.mp4")  # opening a FIFO for reading would block forever
    with pytest.raises(VideoError, match="not a regular file"):
        open_video(tmp_path / "f.mp4")
    (tmp_path / "e.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match=r"empty file \(0 bytes\)"):
        open_video(tmp_path / "e.mp4")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read any file")
def test_open_video_unreadable(video):
    p = video("locked.mp4")
    p.chmod(0)
    with pytest.raises(VideoError, match="permission denied: file is not readable"):
        open_video(p)


def test_open_video_not_video_bytes(tmp_path):
    (tmp_path / "r.mp4").write_bytes(random.Random(0).randbytes(4096))
    (tmp_path / "t.mp4").write_text("just some text, not a video\n" * 20)
    for name in ("r.mp4", "t.mp4"):
        with pytest.raises(VideoError, match="not a video container"):
            open_video(tmp_path / name)


def test_open_video_truncated_mp4(video, tmp_path):
    data = video("full.mp4", duration=2).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[:len(data) // 3])  # moov is written last by default
    with pytest.raises(VideoError, match=r"truncated MP4 \(moov atom not found\)"):
        open_video(tmp_path / "cut.mp4")


@pytest.mark.parametrize("head,kind", [
    (b"#EXTM3U\n#EXTINF:1,\nseg.ts\n", "HLS"), (b"\xef\xbb\xbf  #EXTM3U\n", "HLS"),
    (b"ffconcat version 1.0\nfile a.mp4\n", "ffconcat"), (b"[playlist]\nFile1=x\n", "PLS"),
    (b'<?xml version="1.0"?><MPD>', "DASH"), (b"v=0\no=- 0 0 IN IP4 1.2.3.4\n", "SDP"),
    (b"file 'a.mp4'\nfile 'b.mp4'\n", "concat list"),
])
def test_sniff_script_names_playlists(head, kind):
    assert kind in sniff_script(head)


def test_sniff_script_passes_real_containers(video, tmp_path):
    for name in ("a.mp4", "a.mkv", "a.avi", "a.ts"):
        assert sniff_script(video(name).read_bytes()[:65536]) is None


class _Listener:
    """A local TCP port that records whether anything connected to it."""

    def __enter__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.settimeout(0.5)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/seg.ts"
        return self

    def connected(self) -> bool:
        try:
            conn, _ = self.sock.accept()
        except socket.timeout:
            return False
        conn.close()
        return True

    def __exit__(self, *exc):
        self.sock.close()


def _playlist(path, entries, kind="hls"):
    if kind == "hls":
        body = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n" + "".join(f"#EXTINF:1,\n{e}\n" for e in entries)
        body += "#EXT-X-ENDLIST\n"
    else:
        body = "ffconcat version 1.0\n" + "".join(f"file '{e}'\n" for e in entries)
    path.write_text(body)
    return path


@pytest.mark.parametrize("kind", ["hls", "concat"])
def test_playlist_disguised_as_mp4_opens_nothing(video, tmp_path, kind):
    target = video("secret.mp4")
    with _Listener() as web:
        fake = _playlist(tmp_path / "x.mp4", [str(target), web.url], kind)
        with pytest.raises(VideoError, match="playlist|script") as err:
            open_video(fake)
        assert "refused" in str(err.value)
        assert not web.connected()


def test_whitelist_stops_playlists_even_without_the_sniffer(video, tmp_path, monkeypatch):
    """Defence in depth: FFmpeg's own demuxer whitelist refuses HLS/concat (no sniffing)."""
    target = video("secret.mp4")
    hls = _playlist(tmp_path / "list.m3u8", [str(target)])
    with av.open(str(hls)) as c:  # control: unguarded FFmpeg does follow the playlist
        assert c.format.name == "hls" and len(c.streams.video) == 1
    monkeypatch.setattr(media, "sniff_script", lambda head: None)
    with _Listener() as web:
        for kind, name in (("hls", "p.m3u8"), ("concat", "p.ffconcat")):
            fake = _playlist(tmp_path / name, [str(target), web.url], kind)
            with pytest.raises(VideoError, match="not a video container"):
                open_video(fake)
        assert not web.connected()


def test_mp4_top_boxes(video):
    boxes = media._mp4_top_boxes(video("b.mp4"))
    assert boxes[0] == b"ftyp" and b"moov" in boxes and b"mdat" in boxes


def test_import_media_stays_light():
    code = ("import sys, vidfeat.media, vidfeat.ingestion.probe, vidfeat.ingestion.sample, vidfeat.ingestion.decode, vidfeat.sandbox;"
            "bad = {'torch', 'torchvision', 'matplotlib', 'sklearn', 'av'} & set(sys.modules);"
            "print(sorted(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
