"""Manifest slides stay inside the slide store: ``..``, absolute paths, symlinks."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from slidefed.cli import main
from slidefed.client.config import SiteConfig, dump_site_config, load_site_config
from slidefed.client.data.manifest import load_manifest, load_site_manifest
from slidefed.client.data.slide_paths import SlideRoots, slide_path
from slidefed.client.prepare.report import PrepareReport
from slidefed.common.errors import ConfigError, ManifestError, SlidePathError
from slidefed.demo.synth import write_synthetic_slide

FIX = "or add its folder to site.extra_slide_roots in site.toml"


def _roots(root: Path, *extra: Path) -> SlideRoots:
    return SlideRoots(
        slides_root=root.resolve(), extra=tuple(p.resolve() for p in extra)
    )


def _refused(roots: SlideRoots, slide: str) -> SlidePathError:
    with pytest.raises(SlidePathError) as info:
        roots.check(slide, manifest=Path("/site/manifest.csv"), line=7)
    return info.value


# ------------------------------------------------------------------ resolver
def test_paths_inside_the_store_resolve(tmp_path: Path) -> None:
    store = tmp_path / "slides"
    (store / "sub").mkdir(parents=True)
    (store / "a.tif").write_bytes(b"x")
    roots = _roots(store)
    check = roots.check
    manifest = Path("m.csv")
    assert check("a.tif", manifest=manifest) == store.resolve() / "a.tif"
    # A ".." that comes back inside, and an absolute path inside, are fine.
    assert check("sub/../a.tif", manifest=manifest) == store.resolve() / "a.tif"
    assert check("../slides/a.tif", manifest=manifest) == store.resolve() / "a.tif"
    assert check(str(store / "a.tif"), manifest=manifest) == store.resolve() / "a.tif"
    # A slide that does not exist (yet) is prepare's business: skipped, named.
    assert check("later/b.tif", manifest=manifest) == store.resolve() / "later/b.tif"
    # A DICOM series is a folder.
    assert check("sub", manifest=manifest) == store.resolve() / "sub"


@pytest.mark.parametrize(
    "slide",
    ["../outside/x.tiff", "sub/../../outside/x.tiff", "../slides-evil/x.tiff"],
)
def test_dotdot_out_of_the_store_is_refused(tmp_path: Path, slide: str) -> None:
    store = tmp_path / "slides"
    (store / "sub").mkdir(parents=True)
    for name in ("outside", "slides-evil"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.tiff").write_bytes(b"x")
    err = _refused(_roots(store), slide)
    target = (store / slide).resolve()
    assert str(err) == (
        f"/site/manifest.csv: line 7: slide {slide!r} resolves to {target}, "
        f"outside the slide store; move the slide under slides_root "
        f"({store.resolve()}) {FIX}"
    )
    assert isinstance(err, ManifestError)
    assert err.exit_code == 2


def test_absolute_path_elsewhere_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "slides"
    store.mkdir()
    elsewhere = tmp_path / "archive" / "x.svs"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"x")
    err = _refused(_roots(store), str(elsewhere))
    assert f"slide '{elsewhere}' resolves to {elsewhere.resolve()}" in err.detail
    assert err.fix.endswith(FIX)
    assert "/etc/passwd" in str(_refused(_roots(store), "/etc/passwd"))


def test_symlink_inside_pointing_out_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "slides"
    store.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.tiff").write_bytes(b"x")
    (store / "inner.tiff").write_bytes(b"x")
    (store / "link.tiff").symlink_to(tmp_path / "outside" / "x.tiff")
    (store / "dicom").symlink_to(tmp_path / "outside", target_is_directory=True)
    (store / "alias.tiff").symlink_to(store / "inner.tiff")
    roots = _roots(store)
    err = _refused(roots, "link.tiff")
    assert f"resolves to {(tmp_path / 'outside' / 'x.tiff').resolve()}" in str(err)
    _refused(roots, "dicom")
    _refused(roots, "dicom/x.tiff")
    # A symlink that stays inside is fine; the resolved target is what is read.
    inner = (store / "inner.tiff").resolve()
    assert roots.check("alias.tiff", manifest=Path("m")) == inner


def test_a_symlinked_slides_root_is_resolved_on_both_sides(tmp_path: Path) -> None:
    real = tmp_path / "nas" / "slides"
    real.mkdir(parents=True)
    (real / "a.tif").write_bytes(b"x")
    mount = tmp_path / "mnt"
    mount.symlink_to(real, target_is_directory=True)
    roots = _roots(mount)
    assert roots.slides_root == real.resolve()
    for slide in ("a.tif", str(mount / "a.tif"), str(real / "a.tif")):
        assert roots.check(slide, manifest=Path("m")) == real.resolve() / "a.tif"
    _refused(roots, "../x.tif")


def test_extra_roots_allow_their_folders_only(tmp_path: Path) -> None:
    store, archive = tmp_path / "slides", tmp_path / "archive2"
    store.mkdir()
    (archive / "2019").mkdir(parents=True)
    roots = _roots(store, archive)
    got = roots.check(str(archive / "2019" / "x.svs"), manifest=Path("m"))
    assert got == archive.resolve() / "2019" / "x.svs"
    assert roots.check("../archive2/2019", manifest=Path("m")) == (
        archive.resolve() / "2019"
    )
    _refused(roots, str(tmp_path / "archive3" / "x.svs"))


def test_values_that_are_no_path_are_refused(tmp_path: Path) -> None:
    store = tmp_path / "slides"
    store.mkdir()
    (store / "loop-a").symlink_to(store / "loop-b")
    (store / "loop-b").symlink_to(store / "loop-a")
    roots = _roots(store)
    assert "'a\\x00b.tif' is not a valid path" in str(_refused(roots, "a\x00b.tif"))
    assert roots.resolve("a\x00b.tif") is None
    # A symlink loop gives no traceback: refused (Python 3.11, 3.12) or left
    # unresolved inside the store, where opening it fails (3.13).
    try:
        got = roots.check("loop-a/x.tif", manifest=Path("m"))
    except SlidePathError as exc:
        assert "'loop-a/x.tif' is not a valid path" in str(exc)
    else:
        assert got.is_relative_to(store.resolve())


# -------------------------------------------------------- site.toml settings
def _site(folder: Path, rows: list[str], site_extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["slide,patient_id,label,split", *rows]
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    config = folder / "site.toml"
    config.write_text(f'[site]\nname = "paths"\n{site_extra}')
    return config


def test_extra_roots_resolve_against_the_site_folder(tmp_path: Path) -> None:
    config = load_site_config(
        _site(
            tmp_path / "site",
            ["a.tif,P1,0,train"],
            'extra_slide_roots = ["../archive", "/mnt/archive2"]\n',
        )
    )
    assert config.extra_slide_roots == (
        (tmp_path / "archive").resolve(),
        Path("/mnt/archive2"),
    )
    outside = tmp_path / "archive" / "x.svs"
    assert slide_path(config, str(outside), line=2) == outside.resolve()
    # site.toml written back (site init) keeps the list as the operator wrote it.
    again = SiteConfig.model_validate(
        {**tomllib.loads(dump_site_config(config)), "base_dir": config.base_dir}
    )
    assert again.site.extra_slide_roots == (Path("../archive"), Path("/mnt/archive2"))


def test_filesystem_root_is_no_extra_root(tmp_path: Path) -> None:
    config = _site(tmp_path, ["a.tif,P1,0,train"], 'extra_slide_roots = ["/"]\n')
    with pytest.raises(ConfigError, match=r"extra_slide_roots.*every file"):
        load_site_config(config)


def test_site_manifest_names_the_line_a_person_sees(tmp_path: Path) -> None:
    config = load_site_config(
        _site(tmp_path, ["a.tif,P1,0,train", "", "../outside/x.tiff,P2,1,train"])
    )
    with pytest.raises(SlidePathError) as info:
        load_site_manifest(config)
    assert info.value.detail == (
        f"{config.manifest_path}: line 4: slide '../outside/x.tiff' resolves to "
        f"{(tmp_path / '..' / 'outside' / 'x.tiff').resolve()}, outside the slide store"
    )
    # Reading the rows alone (counting them) does not touch the file system.
    assert len(load_manifest(config.manifest_path).rows) == 2


# ------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def slide_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("one") / "s.tif"
    write_synthetic_slide(path, seed=5, tumour=True, width=768, height=512)
    return path.read_bytes()


def _escaping_site(tmp_path: Path, how: str, slide: bytes) -> tuple[Path, str]:
    """A site with one slide inside and one row escaping ``how``."""
    site, outside = tmp_path / "site", tmp_path / "outside"
    site.mkdir()
    outside.mkdir()
    (site / "a.tif").write_bytes(slide)
    (outside / "x.tiff").write_bytes(slide[:-1] + b"\x01")  # another content hash
    value = {
        "dotdot": "../outside/x.tiff",
        "absolute": str(outside / "x.tiff"),
        "symlink": "link.tiff",
    }[how]
    if how == "symlink":
        (site / "link.tiff").symlink_to(outside / "x.tiff")
    config = _site(site, ["a.tif,P1,0,train", f"{value},P2,1,test"])
    return config, value


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_prepare_refuses_a_row_outside_the_store(
    tmp_path: Path, how: str, slide_bytes: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    config, value = _escaping_site(tmp_path, how, slide_bytes)
    rc = main(["site", "prepare", "--config", str(config), "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    site = config.parent.resolve()
    target = (tmp_path / "outside" / "x.tiff").resolve()
    assert err.strip().splitlines() == [
        f"error: {site / 'manifest.csv'}: line 3: slide {value!r} resolves to "
        f"{target}, outside the slide store; move the slide under slides_root "
        f"({site}) {FIX}"
    ]
    # The whole command is refused: not even the slide inside was prepared.
    assert not list((config.parent / "state").rglob("*.npz"))
    assert not (config.parent / "state" / "prepare-report.json").exists()


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_prepare_reads_a_listed_extra_root(
    tmp_path: Path, how: str, slide_bytes: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    config, value = _escaping_site(tmp_path, how, slide_bytes)
    config.write_text(config.read_text() + 'extra_slide_roots = ["../outside"]\n')
    rc = main(["site", "prepare", "--config", str(config), "--workers", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    state = config.parent / "state" / "prepare-report.json"
    report = PrepareReport.model_validate_json(state.read_text())
    assert [(s.slide, s.status) for s in report.slides] == [
        ("a.tif", "ok"),
        (value, "ok"),
    ]


def test_the_site_at_message_time_refuses_too(
    tmp_path: Path, slide_bytes: bytes
) -> None:
    from slidefed.client.prepare import load_site_features

    config, _ = _escaping_site(tmp_path, "symlink", slide_bytes)
    allowed = config.read_text()
    config.write_text(allowed + 'extra_slide_roots = ["../outside"]\n')
    assert main(["site", "prepare", "--config", str(config), "--workers", "1"]) == 0
    # The operator takes the folder off the list: no round reads the slide again.
    config.write_text(allowed)
    with pytest.raises(SlidePathError, match=r"line 3: slide 'link.tiff'"):
        load_site_features(load_site_config(config))


def test_a_symlink_swapped_after_loading_is_caught(
    tmp_path: Path, slide_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from slidefed.client.data import manifest as manifest_mod
    from slidefed.client.prepare import pipeline

    config, _ = _escaping_site(tmp_path, "symlink", slide_bytes)
    site = load_site_config(config)
    (config.parent / "link.tiff").unlink()
    (config.parent / "link.tiff").write_bytes(slide_bytes)
    loaded = manifest_mod.load_site_manifest(site)
    # The manifest was checked while link.tiff was a file; then it became a link.
    monkeypatch.setattr(pipeline, "load_site_manifest", lambda _config: loaded)
    (config.parent / "link.tiff").unlink()
    (config.parent / "link.tiff").symlink_to(tmp_path / "outside" / "x.tiff")
    with pytest.raises(SlidePathError, match=r"slide 'link.tiff' resolves to"):
        pipeline.prepare_site(site, workers=1)
    assert not list(site.cache_dir.glob("*.npz"))
