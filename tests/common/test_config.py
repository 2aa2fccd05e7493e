from pathlib import Path

import pytest

from slidefed.client.config import (
    SiteConfig,
    SiteSection,
    dump_site_config,
    load_site_config,
)
from slidefed.common.errors import ConfigError
from slidefed.common.run_config import RunConfig, parse_run_config


def test_site_config_round_trip(tmp_path: Path) -> None:
    config = SiteConfig(site=SiteSection(name="hosp-a"), base_dir=tmp_path)
    path = tmp_path / "site.toml"
    path.write_text(dump_site_config(config))

    loaded = load_site_config(path)

    assert loaded.site.name == "hosp-a"
    assert loaded.policy == config.policy
    assert loaded.manifest_path == (tmp_path / "manifest.csv").resolve()
    assert loaded.audit_path == (tmp_path / "audit" / "audit.jsonl").resolve()


def test_site_config_bad_value_names_key_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('[site]\nname = "a"\n[policy]\nmax_epsilon = -1\n')

    with pytest.raises(
        ConfigError, match=r"policy\.max_epsilon=-1 .*greater than 0.*fix"
    ):
        load_site_config(path)


def test_site_config_unknown_key_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('[site]\nname = "a"\ncolour = "red"\n')
    with pytest.raises(ConfigError, match=r"site\.colour"):
        load_site_config(path)
    with pytest.raises(ConfigError, match="site init"):
        load_site_config(tmp_path / "nope.toml")


def test_site_config_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text("[site\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_site_config(path)


def test_policy_delta_default_is_at_most_1e5_and_one_over_ten_n() -> None:
    config = SiteConfig(site=SiteSection(name="a"))
    assert config.policy.delta_for(50) == pytest.approx(1e-5)
    assert config.policy.delta_for(3) == pytest.approx(1e-5)
    assert config.policy.delta_for(1_000_000) == pytest.approx(1e-7)


def test_run_config_parses_kebab_keys() -> None:
    run = parse_run_config({"num-server-rounds": 5, "lr": 0.1, "strategy": "fedavg"})
    assert run.num_server_rounds == 5
    assert run.lr == 0.1
    assert RunConfig().model_dump(by_alias=True)["num-server-rounds"] == 3


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"lr": -1.0}, "lr"),
        ({"num-server-rounds": 0}, "num-server-rounds"),
        ({"strategy": "fedfoo"}, "strategy"),
        ({"no-such-key": 1}, "no-such-key"),
    ],
)
def test_run_config_errors_name_the_key(config: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"run config {key}=.*--run-config"):
        parse_run_config(config)


def test_site_config_with_and_without_tiles_round_trips(tmp_path: Path) -> None:
    from slidefed.client.config import TilesSection

    for tiles in (None, TilesSection(labels=("ADI", "TUM"))):
        config = SiteConfig(site=SiteSection(name="t"), tiles=tiles, base_dir=tmp_path)
        path = tmp_path / "site.toml"
        path.write_text(dump_site_config(config))
        assert load_site_config(path).tiles == tiles
