"""A fuzz run: damaged files of every container bulkscribe reads, among undamaged ones.

From two real clips (tests/data/speech) it makes a source in every container the planner
and the decoder read (WAV, RF64, Wave64, AIFF, AU, CAF, FLAC, MP3, Ogg Vorbis, Opus, M4A,
MP4, Matroska, WebM), then FILES damaged files drawn with SEED:

  truncated          cut at a random offset (anywhere, or inside the first 512 bytes)
  header bit flips   1-8 bits flipped in the first 256 bytes
  payload bit flips  1-64 bits flipped after the first 1 KB
  zero-length        an empty file
  absurd header      declared sample rate, data size, sample count or movie duration set
                     to 0, 1 or the field's largest value (per container; other bytes of
                     the first 64 elsewhere)
  wrong extension    an undamaged file of one container named as another
  random bytes       noise with an audio extension
  not a file         a folder, a FIFO, a dangling symbolic link and a symbolic link loop
                     named .wav, and a file with no read permission (readable anyway
                     when the bench runs as root)

One `bulkscribe run` of a manifest of all of them and of the undamaged sources (each
under its own name), and one clean run of the undamaged sources alone. It prints the
outcomes by damage and by error type, and fails (exit 1) unless every damaged file ends
as one `files` row (`ok`, `no_speech` or `failed` with an error type), no shard ran twice
(an actor that crashed), no file hit its time limit, the run finished with exit 0 or 3,
and every undamaged file's transcript equals the clean run's.

    python bench/fuzz.py [--files 1000] [--seed 1] [--work bench/_work/fuzz]
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
import random
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.audio import ffmpeg_exe  # noqa: E402

CLIPS = ("misc/LDC93S1.wav", "librispeech/1221-135766-0002.wav")
# extension: ffmpeg arguments that make it from a clip
CONTAINERS = {
    "wav": ["-c:a", "pcm_s16le", "-f", "wav"],
    "rf64.wav": ["-c:a", "pcm_s16le", "-rf64", "always", "-f", "wav"],
    "w64": ["-c:a", "pcm_s16le", "-f", "w64"],
    "aiff": ["-c:a", "pcm_s16be", "-f", "aiff"],
    "au": ["-c:a", "pcm_s16be", "-f", "au"],
    "caf": ["-c:a", "pcm_s16le", "-f", "caf"],
    "flac": ["-c:a", "flac", "-f", "flac"],
    "mp3": ["-c:a", "libmp3lame", "-b:a", "48k", "-f", "mp3"],
    "ogg": ["-c:a", "libvorbis", "-f", "ogg"],
    "opus": ["-c:a", "libopus", "-b:a", "24k", "-f", "opus"],
    "m4a": ["-c:a", "aac", "-b:a", "48k", "-f", "ipod"],
    "mp4": ["-c:a", "aac", "-b:a", "48k", "-f", "mp4"],
    "mkv": ["-c:a", "libopus", "-b:a", "24k", "-f", "matroska"],
    "webm": ["-c:a", "libopus", "-b:a", "24k", "-f", "webm"],
}
DAMAGES = ("truncated", "header bit flips", "payload bit flips", "zero-length", "absurd header",
           "wrong extension", "random bytes")
NOT_FILES = ("folder", "fifo", "dangling link", "link loop", "no read permission")


def make_sources(folder: Path) -> list[Path]:
    """Every container of each clip, 16 kHz mono as archives mostly hold (WAV at 8 kHz too)."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for i, clip in enumerate(CLIPS):
        for ext, args in CONTAINERS.items():
            target = folder / f"clip{i}.{ext}"
            rate = "8000" if ext == "wav" and i == 1 else "16000"
            subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-i",
                            str(ROOT / "tests" / "data" / "speech" / clip), "-ac", "1", "-ar", rate, *args,
                            str(target)], check=True)
            made.append(target)
    return made


def flip(data: bytearray, rng: random.Random, lo: int, hi: int, bits: int) -> None:
    hi = min(hi, len(data))
    if hi <= lo:
        return
    for _ in range(bits):
        at = rng.randrange(lo, hi)
        data[at] ^= 1 << rng.randrange(8)


def absurd(data: bytearray, ext: str, rng: random.Random) -> str:
    """Set one declared size, rate or duration field to an absurd value; returns which."""
    value = rng.choice((0, 1, "max"))

    def put(at: int, fmt: str) -> None:
        if at + struct.calcsize(fmt) <= len(data):
            top = (1 << (8 * struct.calcsize(fmt))) - 1
            struct.pack_into(fmt, data, at, top if value == "max" else value)

    if ext == "wav":
        field = rng.choice(("sample rate", "byte rate", "data size", "channels"))
        put({"sample rate": 24, "byte rate": 28, "data size": 40}.get(field, 22), "<I" if field != "channels" else "<H")
    elif ext == "flac" and len(data) > 26:
        field = rng.choice(("sample rate", "sample count"))
        if field == "sample rate":  # 20 bits at byte 18 of the file (STREAMINFO after "fLaC" and a block header)
            v = 0 if value == 0 else (1 if value == 1 else 0xFFFFF)
            data[18], data[19] = v >> 12 & 0xFF, v >> 4 & 0xFF
            data[20] = (data[20] & 0x0F) | (v & 0x0F) << 4
        else:  # 36 bits from the low nibble of byte 21
            v = 0 if value == 0 else (1 if value == 1 else (1 << 36) - 1)
            data[21] = (data[21] & 0xF0) | (v >> 32 & 0x0F)
            struct.pack_into(">I", data, 22, v & 0xFFFFFFFF)
    elif ext in ("m4a", "mp4") and (at := bytes(data).find(b"mvhd")) > 0:
        field = rng.choice(("timescale", "duration"))
        put(at + 4 + 4 + 8 + (0 if field == "timescale" else 4), ">I")
    else:
        field = "4 bytes of the first 64"
        at = rng.randrange(0, max(1, min(60, len(data) - 4)))
        data[at:at + 4] = b"\xff\xff\xff\xff" if value == "max" else struct.pack("<I", value)
    return f"{field} = {value}"


def damage(kind: str, source: Path, others: list[Path], rng: random.Random) -> tuple[bytes, str, str]:
    """(bytes, extension, detail) of one damaged file made from `source`."""
    data = bytearray(source.read_bytes())
    ext = source.name.split(".", 1)[1]
    if kind == "truncated":
        cut = rng.randrange(0, min(512, len(data))) if rng.random() < 0.3 else rng.randrange(0, len(data))
        return bytes(data[:cut]), ext, f"{cut} of {len(data)} bytes"
    if kind == "header bit flips":
        bits = rng.randint(1, 8)
        flip(data, rng, 0, 256, bits)
        return bytes(data), ext, f"{bits} bit(s)"
    if kind == "payload bit flips":
        bits = rng.randint(1, 64)
        flip(data, rng, 1024, len(data), bits)
        return bytes(data), ext, f"{bits} bit(s)"
    if kind == "zero-length":
        return b"", ext, ""
    if kind == "absurd header":
        base = ext.split(".")[-1]
        return bytes(data), ext, absurd(data, "wav" if base == "wav" and "rf64" not in ext else base, rng)
    if kind == "wrong extension":
        other = rng.choice([o for o in others if o.suffix != source.suffix])
        return bytes(data), other.name.split(".", 1)[1], f"a {ext} named .{other.name.split('.', 1)[1]}"
    if kind == "random bytes":
        size = rng.choice((1, 44, 4096, 200_000))
        return rng.randbytes(size), rng.choice(list(CONTAINERS)), f"{size} bytes"
    raise ValueError(kind)


def make_not_files(folder: Path) -> dict[str, Path]:
    made = {name: folder / f"{name.replace(' ', '-')}.wav" for name in NOT_FILES}
    made["folder"].mkdir()
    os.mkfifo(made["fifo"])
    made["dangling link"].symlink_to(folder / "nowhere.wav")
    made["link loop"].symlink_to(made["link loop"])
    shutil.copy(ROOT / "tests" / "data" / "speech" / CLIPS[0], made["no read permission"])
    made["no read permission"].chmod(0)
    return made


def write_manifest(path: Path, rows: list[Path]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path"])
        writer.writerows([str(p)] for p in rows)


def run(manifest: Path, out: Path, extra: list[str]) -> tuple[int, float, str]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(manifest), "--output", str(out),
                           "--no-progress", *extra], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    return done.returncode, time.monotonic() - started, done.stdout + done.stderr


def table(out: Path, sql: str) -> list[tuple]:
    import duckdb

    return duckdb.sql(sql.replace("FILES", f"read_parquet('{out}/files/*.parquet')")
                      .replace("SEGMENTS", f"read_parquet('{out}/segments/*.parquet')")).fetchall()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=1000, help="damaged files (default 1000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "_work" / "fuzz")
    parser.add_argument("run_options", nargs="*", help="more `bulkscribe run` options, after --")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    if args.work.exists():
        for p in args.work.rglob("*"):
            if not p.is_symlink() and p.exists():
                p.chmod(0o755 if p.is_dir() else 0o644)
        shutil.rmtree(args.work)
    sources = make_sources(args.work / "clean")
    damaged_dir = args.work / "damaged"
    damaged_dir.mkdir(parents=True)
    kind_of: dict[str, tuple[str, str, str]] = {}  # path: (damage, source container, detail)
    for name, path in make_not_files(damaged_dir).items():
        kind_of[str(path)] = ("not a file", name, "")
    for i in range(max(0, args.files - len(kind_of))):
        kind = DAMAGES[i % len(DAMAGES)]
        source = rng.choice(sources)
        data, ext, detail = damage(kind, source, sources, rng)
        path = damaged_dir / f"{i:05d}-{kind.replace(' ', '-')}.{ext}"
        path.write_bytes(data)
        kind_of[str(path)] = (kind, source.name.split(".", 1)[1], detail)
    write_manifest(args.work / "clean.csv", sources)
    write_manifest(args.work / "all.csv", [Path(p) for p in kind_of] + sources)
    print(f"{len(kind_of)} damaged files from {len(sources)} sources in {len(CONTAINERS)} containers "
          f"(seed {args.seed}), and the {len(sources)} sources undamaged")

    code_clean, clean_s, log_clean = run(args.work / "clean.csv", args.work / "out-clean", args.run_options)
    if code_clean != 0:
        print(log_clean[-3000:])
        print(f"the clean run failed (exit {code_clean})")
        return 1
    code, fuzz_s, log = run(args.work / "all.csv", args.work / "out-fuzz", args.run_options)
    print(f"clean run: {clean_s:.0f} s, exit {code_clean}; fuzz run: {fuzz_s:.0f} s, exit {code}")
    out = args.work / "out-fuzz"
    rows = {uri: (status, error_type, attempts) for uri, status, error_type, attempts in
            table(out, "select uri, status, error_type, attempts from FILES")} if (out / "files").exists() else {}
    units = collections.Counter(uri for (uri,) in table(out, "select uri from FILES")) if rows else {}

    by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    by_error: collections.Counter = collections.Counter()
    missing, crashed, hung, bad_rows = [], [], [], []
    for path, (kind, container, detail) in kind_of.items():
        if path not in rows:
            missing.append(path)
            continue
        status, error_type, attempts = rows[path]
        by_kind[kind][status] += 1
        if status == "failed":
            by_error[error_type] += 1
            if not error_type:
                bad_rows.append(path)
        if status not in ("ok", "no_speech", "failed"):
            bad_rows.append(path)
        if attempts > 1:
            crashed.append(path)
        if error_type == "timeout":
            hung.append(path)
    clean_text = dict(table(args.work / "out-clean", "select f.uri, coalesce(string_agg(s.text, '' order by s.segment), '') "
                            "from FILES f left join SEGMENTS s using (unit_id) group by 1"))
    fuzz_text = dict(table(out, "select f.uri, coalesce(string_agg(s.text, '' order by s.segment), '') "
                           "from FILES f left join SEGMENTS s using (unit_id) group by 1")) if rows else {}
    changed = [uri for uri, text in clean_text.items() if fuzz_text.get(uri) != text]

    print("\noutcome by damage (files):")
    print(f"  {'damage':<20} {'ok':>5} {'no_speech':>9} {'failed':>6}")
    for kind in (*DAMAGES, "not a file"):
        c = by_kind[kind]
        print(f"  {kind:<20} {c['ok']:>5} {c['no_speech']:>9} {c['failed']:>6}")
    print("\nfailed, by error type:")
    for error_type, n in by_error.most_common():
        print(f"  {error_type or '(none)':<20} {n:>5}")
    print(f"\nrows: {sum(units.values())} for {len(units)} files; windowed into several units: "
          f"{sum(1 for n in units.values() if n > 1)}")
    print(f"damaged files without a row: {len(missing)}")
    print(f"rows without a clear outcome: {len(bad_rows)}")
    print(f"crashes (a shard transcribed twice): {len(crashed)}")
    print(f"hangs (a file at its time limit): {len(hung)}")
    print(f"undamaged files whose transcript changed: {len(changed)} of {len(clean_text)}")
    for label, items in (("missing", missing), ("unclear", bad_rows), ("crashed", crashed), ("hung", hung),
                         ("changed", changed)):
        for item in items[:5]:
            print(f"  {label}: {item} {kind_of.get(item, '')}")
    for special in ("fifo", "link loop"):  # traps for whatever walks the work folder next
        Path([p for p, k in kind_of.items() if k[1] == special][0]).unlink(missing_ok=True)
    ok = code in (0, 3) and not (missing or bad_rows or crashed or hung or changed)
    if code not in (0, 3):
        print(log[-3000:])
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
