import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import inputs


def test_folder_is_walked_recursively_for_audio_and_video(speech_dir):
    units = inputs.expand([str(speech_dir)])
    uris = units.column("uri").to_pylist()
    assert len(uris) == 19  # every clip, not manifest.csv nor SOURCES.md
    assert uris == sorted(uris)
    assert all(u.startswith(str(speech_dir.resolve())) for u in uris)
    assert any(u.endswith("big_buck_bunny_small.mp4") for u in uris)
    assert units.column_names[:5] == ["unit_id", "uri", "size_bytes", "start_s", "end_s"]
    assert all(s > 0 for s in units.column("size_bytes").to_pylist())


def test_ids_are_stable_and_paths_normalised(speech_dir):
    a = inputs.expand([str(speech_dir / "misc")])
    b = inputs.expand([str(speech_dir / "misc" / ".." / "misc") + "/"])
    assert a.column("unit_id").to_pylist() == b.column("unit_id").to_pylist()
    assert ".." not in "".join(b.column("uri").to_pylist())
    assert inputs.unit_id("/a.wav", 0.0, None) != inputs.unit_id("/a.wav", 0.0, 30.0)


def test_glob_and_single_file_and_duplicates(speech_dir):
    units = inputs.expand([str(speech_dir / "librispeech" / "*.flac"), str(speech_dir / "librispeech" / "61-70968-0000.flac")])
    assert len(units) == 7  # the named file is also matched by the glob: kept once
    with pytest.raises(inputs.InputError, match="no such file or folder"):
        inputs.expand([str(speech_dir / "nope")])


def test_hidden_files_and_other_extensions_are_skipped(tmp_path, speech_dir):
    shutil.copy(speech_dir / "misc" / "LDC93S1.wav", tmp_path / "a.wav")
    shutil.copy(speech_dir / "misc" / "LDC93S1.wav", tmp_path / ".partial.wav")
    (tmp_path / "notes.pdf").write_bytes(b"%PDF")
    assert [u.rsplit("/", 1)[1] for u in inputs.expand([str(tmp_path)]).column("uri").to_pylist()] == ["a.wav"]


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet", "txt"])
def test_manifests_resolve_relative_paths_and_pass_columns_through(tmp_path, speech_dir, kind):
    rows = [
        {"path": str(speech_dir / "misc" / "jfk.flac"), "speaker": "jfk", "year": 1961},
        {"path": "clips/ldc.wav", "speaker": "ldc", "year": 1993},
        {"path": "missing.wav", "speaker": "nobody", "year": 2000},
    ]
    (tmp_path / "clips").mkdir()
    shutil.copy(speech_dir / "misc" / "LDC93S1.wav", tmp_path / "clips" / "ldc.wav")
    manifest = tmp_path / f"manifest.{kind}"
    if kind == "csv":
        manifest.write_text("path,speaker,year\n" + "".join(f"{r['path']},{r['speaker']},{r['year']}\n" for r in rows))
    elif kind == "jsonl":
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), manifest)
    else:
        manifest.write_text("# one uri a line\n" + "".join(r["path"] + "\n" for r in rows))
    units = inputs.expand([str(manifest)])
    by_uri = {u["uri"]: u for u in units.to_pylist()}
    assert set(by_uri) == {str(speech_dir.resolve() / "misc" / "jfk.flac"), str(tmp_path / "clips" / "ldc.wav"), str(tmp_path / "missing.wav")}
    assert by_uri[str(tmp_path / "missing.wav")]["size_bytes"] is None  # fails later, as a row
    if kind != "txt":
        assert by_uri[str(tmp_path / "clips" / "ldc.wav")]["speaker"] == "ldc"
        assert units.schema.field("year").type == pa.int64()


def test_manifest_without_uri_column_is_refused(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,speaker\na.wav,x\n")
    with pytest.raises(inputs.InputError, match="no 'uri' or 'path' column"):
        inputs.expand([str(manifest)])


def test_manifest_column_with_a_reserved_name_is_renamed(tmp_path, speech_dir):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"uri,language,status,flags,split\n{speech_dir / 'misc' / 'jfk.flac'},en,draft,x,y\n")
    units = inputs.expand([str(manifest)])
    assert {"manifest_language", "manifest_status", "manifest_flags", "manifest_split"} <= set(units.column_names)
    assert not {"language", "status", "flags", "split"} & set(units.column_names)


def test_memory_filesystem_urls(speech_dir):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/corpus/a/jfk.flac", (speech_dir / "misc" / "jfk.flac").read_bytes())
    units = inputs.expand(["memory://corpus"])
    assert units.column("uri").to_pylist() == ["memory:///corpus/a/jfk.flac"]


def test_sizes_a_manifest_gives_are_not_asked_of_the_storage(tmp_path, speech_dir, monkeypatch):
    clips = [speech_dir / "misc" / "jfk.flac", speech_dir / "misc" / "LDC93S1.wav"]
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"uri,size_bytes,speaker\n{clips[0]},1234,a\n{clips[1]},,b\n")
    asked = []
    size_or_none = inputs._size_or_none
    monkeypatch.setattr(inputs, "_size_or_none", lambda target: asked.append(target[2]) or size_or_none(target))
    units = inputs.expand([str(manifest)])
    sizes = dict(zip(units.column("uri").to_pylist(), units.column("size_bytes").to_pylist()))
    assert sizes == {str(clips[0]): 1234, str(clips[1]): clips[1].stat().st_size}
    assert asked == [str(clips[1])]  # only the row without a size
    speakers = dict(zip(units.column("uri").to_pylist(), units.column("speaker").to_pylist()))
    assert "manifest_size_bytes" not in units.column_names and speakers == {str(clips[0]): "a", str(clips[1]): "b"}


def test_durations_a_manifest_gives_are_kept_for_planning(tmp_path, speech_dir):
    clips = [speech_dir / "misc" / "jfk.flac", speech_dir / "misc" / "LDC93S1.wav"]
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"uri,duration_s\n{clips[0]},11.0\n{clips[1]},\n")
    units = inputs.expand([str(manifest)])
    durations = dict(zip(units.column("uri").to_pylist(), units.column("duration_s").to_pylist()))
    assert durations == {str(clips[0]): 11.0, str(clips[1]): None}
    assert "manifest_duration_s" not in units.column_names
    for bad in ("-3", "soon"):
        manifest.write_text(f"uri,duration_s\n{clips[0]},{bad}\n")
        with pytest.raises(inputs.InputError, match="duration_s"):
            inputs.expand([str(manifest)])
