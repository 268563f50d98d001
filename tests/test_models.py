import shutil

import pytest

from pipeline import models


def test_tiny_en_resolves_from_its_package_and_verifies(tiny_model):
    assert tiny_model.name == "tiny.en"
    assert tiny_model.sha256 == models.BUNDLED["tiny.en"].sha256["model.bin"]
    assert set(tiny_model.pinned) == set(models.MODEL_FILES)
    models.verify(tiny_model)


def test_base_is_assembled_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BULKSCRIBE_CACHE", str(tmp_path))
    model = models.resolve("base")
    assert model.path.startswith(str(tmp_path))
    assert models.sha256_file(f"{model.path}/model.bin") == models.BUNDLED["base"].sha256["model.bin"]
    mtime = (tmp_path / model.path / "model.bin").stat().st_mtime_ns
    assert models.resolve("base").path == model.path
    assert (tmp_path / model.path / "model.bin").stat().st_mtime_ns == mtime, "assembled twice"
    assert not [p for p in (tmp_path / model.path).iterdir() if p.name.startswith(".")], "temporary file left"


def test_a_corrupt_model_is_refused_before_loading(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("BULKSCRIBE_CACHE", str(tmp_path))
    base = models.resolve("base")
    with open(f"{base.path}/model.bin", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    with pytest.raises(models.ModelError, match="sha256 of .*model.bin is .* expected"):
        models.verify(base)


def test_local_folder_is_accepted_and_hashed(tmp_path, tiny_model):
    folder = tmp_path / "my-model"
    shutil.copytree(tiny_model.path, folder, ignore=shutil.ignore_patterns("__pycache__"))
    model = models.resolve(str(folder))
    assert model.path == str(folder)
    assert model.sha256 == tiny_model.sha256
    with pytest.raises(models.ModelError, match="no model.bin"):
        models.resolve(str(tmp_path))


def test_unknown_name_without_network_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("BULKSCRIBE_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelError, match="neither bundled"):
        models.resolve("no-such-model-xyz")


def test_catalog_lists_bundled_models():
    names = {row["name"]: row for row in models.catalog()}
    assert names["tiny.en"]["state"] == "installed"
    assert set(names) == {"tiny.en", "base"}
