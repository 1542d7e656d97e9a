"""The forest page is one self-contained document built from the files in ``static/``."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from bistro_provider.plugins import forest_page as page_module
from bistro_provider.plugins.forest_page import SCRIPTS, STATIC_DIR, forest_page


def test_page_inlines_scripts_and_stylesheet() -> None:
    page = forest_page()
    for name in SCRIPTS:
        assert f"// {name}\n" in page
    assert "<style>" in page
    assert page_module.STYLES_MARKER not in page
    assert page_module.SCRIPTS_MARKER not in page


def test_every_static_script_is_served() -> None:
    on_disk = {path.name for path in STATIC_DIR.glob("*.js")}
    assert on_disk == set(SCRIPTS)


def test_page_loads_nothing_from_other_hosts() -> None:
    page = forest_page()
    assert re.findall(r"https?://", page) == []
    assert re.findall(r"\ssrc\s*=", page) == []
    assert "@import" not in page
    assert re.findall(r"url\(", page) == []


def test_template_without_marker_is_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(STATIC_DIR, tmp_path, dirs_exist_ok=True)
    template = tmp_path / page_module.TEMPLATE
    template.write_text(template.read_text().replace(page_module.SCRIPTS_MARKER, ""))
    monkeypatch.setattr(page_module, "STATIC_DIR", tmp_path)
    with pytest.raises(ValueError, match="bistro:scripts"):
        forest_page()


def test_script_that_closes_its_tag_is_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(STATIC_DIR, tmp_path, dirs_exist_ok=True)
    (tmp_path / "app.js").write_text("const text = '</script>';\n")
    monkeypatch.setattr(page_module, "STATIC_DIR", tmp_path)
    with pytest.raises(ValueError, match="app.js"):
        forest_page()
