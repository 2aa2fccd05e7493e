"""End to end: sites prepare features with a network encoder from local weights,
then a simulated federation trains ABMIL on them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from slidefed.cli import main
from slidefed.client.config import load_site_config
from slidefed.client.keys import ensure_site_keys
from slidefed.client.prepare.cache import FeatureCache
from slidefed.client.prepare.prepared import read_report
from slidefed.demo.synth import synth_site
from tests.encoders_support import save_hf_vit, save_timm_weights

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[3]


def _site(folder: Path, seed: int, features: str) -> Path:
    synth_site(folder, patients=8, seed=seed, width=512, height=512)
    # 1 um/px tiles (few per slide, so a ViT on a CPU stays quick); the
    # encoder is told its resolution is the same.
    (folder / "site.toml").write_text(
        f'[site]\nname = "{folder.name}"\n[tiling]\ntarget_mpp = 1.0\n'
        f"[features]\n{features}mpp = 1.0\n[policy]\nmin_eval_patients = 1\n"
    )
    ensure_site_keys(load_site_config(folder / "site.toml"))
    return folder / "site.toml"


def _federate(sites: list[Path], out: Path) -> list[dict[str, object]]:
    cmd = [sys.executable, "-m", "slidefed.cli", "simulate", "--rounds", "1"]
    cmd += ["--out", str(out), "--local-epochs", "1"]
    for site in sites:
        cmd += ["--sites", str(site)]
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", ["timm", "hf"])
def test_sites_prepare_network_features_and_a_federation_trains_abmil(
    kind: str, tmp_path: Path
) -> None:
    sites = []
    for i in range(2):
        folder = tmp_path / f"site-{i}"
        (folder / "models").mkdir(parents=True)
        if kind == "timm":
            save_timm_weights(
                "vit_small_patch16_224", folder / "models" / "vit_small.safetensors"
            )
            features = (
                'encoder = "timm:vit_small_patch16_224"\n'
                'weights = "models/vit_small.safetensors"\n'
            )
        else:
            save_hf_vit(folder / "models" / "tiny-vit", hidden=48)
            features = 'encoder = "hf:tiny-vit"\nweights = "models/tiny-vit"\n'
        sites.append(_site(folder, 60 + i, features))
    dim = 384 if kind == "timm" else 48

    for site in sites:
        assert main(["site", "prepare", "--config", str(site)]) == 0
        config = load_site_config(site)
        report = read_report(config)
        assert report.feature_dim == dim
        assert report.encoder_id.startswith(config.features.encoder + ":")
        cache = FeatureCache(config.cache_dir)
        feats = [cache.load(s.key) for s in report.usable]
        assert feats
        assert all(f.shape[1] == dim for f in feats)
        assert all(np.all(np.isfinite(f)) for f in feats)

    rows = _federate(sites, tmp_path / "run")
    assert [r["sites_trained"] for r in rows] == [2]
    final = load_file(str(tmp_path / "run" / "final.safetensors"))
    assert final["embed.weight"].shape[1] == dim
