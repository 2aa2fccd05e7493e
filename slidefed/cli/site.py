"""``slidefed site ...``: commands for hospital IT.

``init``, ``prepare``, ``qc`` and ``budget`` look after the site's data and privacy budget;
``node-key``, ``start``, ``doctor`` and ``approve`` run the site's node (the work
is done by :mod:`slidefed.deploy`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from slidefed.common.errors import ConfigError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Path of site.toml.")]
SuperlinkOpt = Annotated[
    str | None,
    typer.Option("--superlink", help="SuperLink address HOST:PORT."),
]
CaOpt = Annotated[
    Path | None,
    typer.Option("--ca", help="The federation's CA certificate (pki/ca.crt)."),
]
InsecureOpt = Annotated[
    bool,
    typer.Option("--insecure", help="No TLS, no node authentication: tests only."),
]

site_app = typer.Typer(
    help="Run a hospital site.", no_args_is_help=True, rich_markup_mode=None
)

_INSECURE_WARNING = """\
WARNING: --insecure: this site connects WITHOUT TLS and WITHOUT node
WARNING: authentication. Model updates travel in clear text and the coordinator
WARNING: cannot tell this site from anyone else. For tests only."""

_CAUSES = {
    "not_registered": (
        "the SuperLink does not know this site's node key; the coordinator must "
        "register state/keys/node_key.pub ('slidefed server register-site')"
    ),
    "tls_untrusted": (
        "the SuperLink's certificate does not verify with --ca; use the federation's "
        "CA (pki/ca.crt from the coordinator) and an address its certificate names"
    ),
}


# --------------------------------------------------------------- data and budget
@site_app.command("init")
def site_init(
    folder: Annotated[Path, typer.Argument(help="Site folder to create.")],
    name: Annotated[str, typer.Option(help="Site name.")] = "site",
) -> None:
    """Create site.toml with safe defaults, the site's audit key and node key."""
    from slidefed.client.config import SiteConfig, SiteSection, dump_site_config
    from slidefed.client.keys import ensure_site_keys
    from slidefed.deploy.site_node import ensure_node_key

    target = folder / "site.toml"
    if target.exists():
        raise ConfigError(f"{target} exists; edit it, or choose another folder")
    folder.mkdir(parents=True, exist_ok=True)
    config = SiteConfig(site=SiteSection(name=name), base_dir=folder.resolve())
    target.write_text(dump_site_config(config))
    ensure_site_keys(config)
    node_pub = ensure_node_key(config)
    print(
        f"wrote {target} and the site's keys; send {node_pub} to the coordinator; "
        "put manifest.csv next to site.toml, then run "
        f"'slidefed site prepare --config {target}'"
    )


@site_app.command("prepare")
def site_prepare(
    config: ConfigOpt,
    workers: Annotated[int, typer.Option(help="Worker processes (0: auto).")] = 0,
    as_json: JsonOpt = False,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="The site's Ray cluster (head node HOST:PORT): prepare there.",
        ),
    ] = None,
) -> None:
    """Tissue, tiles and features of every slide in the manifest (cached).

    Shows progress (slides, tiles/s, time left, the slide at work) and resumes
    after an interruption: slides already cached are not decoded again. With
    --ray (or [prepare] ray_address) the slides are prepared on the hospital's
    Ray cluster, into the same cache. Each skipped slide and each rejected
    manifest row gets one line naming its manifest line and the reason; the
    report goes to state/prepare-report.json. Exits 2 only when no slide is usable or the
    manifest is invalid.
    """
    from slidefed.cli._prepare_view import prepare_with_progress, report_lines
    from slidefed.client.config import load_site_config

    cfg = load_site_config(config)
    report = prepare_with_progress(cfg, workers=workers, quiet=as_json, ray_address=ray)
    if as_json:
        print(report.model_dump_json(indent=2))
    else:
        for line in report_lines(cfg, report, config):
            print(line)
    if not report.usable:
        raise ConfigError(
            "no usable slide at this site; fix the slides listed above and run again"
        )


StudyOpt = Annotated[
    str | None, typer.Option(help="StudyInstanceUID: its slide series.")
]
PatientOpt = Annotated[
    str | None, typer.Option(help="PatientID on the archive: their slide series.")
]
QueryOpt = Annotated[
    list[str] | None,
    typer.Option(help="QIDO-RS filter KEYWORD=VALUE (repeatable).", show_default=False),
]
PatientIdsOpt = Annotated[
    str, typer.Option(help="pseudonym (keyed hash of PatientID) or archive (as is).")
]
OutOpt = Annotated[
    Path | None, typer.Option(help="Manifest to write (default: site.manifest).")
]
AppendOpt = Annotated[
    bool, typer.Option("--append", help="Add new series to an existing manifest.")
]


@site_app.command("import-dicomweb")
def site_import_dicomweb(
    config: ConfigOpt,
    study: StudyOpt = None,
    patient: PatientOpt = None,
    query: QueryOpt = None,
    label: Annotated[int, typer.Option(help="Label of every new row.")] = 0,
    split: Annotated[str, typer.Option(help="Split of every new row.")] = "train",
    patient_ids: PatientIdsOpt = "pseudonym",
    out: OutOpt = None,
    append: AppendOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Manifest rows for the whole-slide series on the site's DICOMweb archive.

    Lists the slide series of a study, a patient or a query ([dicomweb] in
    site.toml says where the archive is) and writes one row per series,
    dicomweb:<StudyInstanceUID>/<SeriesInstanceUID>; edit the labels after.
    """
    from slidefed.client.config import load_site_config
    from slidefed.client.data.dicomweb_rows import (
        list_whole_slide_series,
        write_manifest_rows,
    )

    if split not in ("train", "test") or patient_ids not in ("pseudonym", "archive"):
        raise ConfigError(
            "--split must be train or test, --patient-ids pseudonym or archive"
        )
    cfg = load_site_config(config)
    rows, seen = list_whole_slide_series(
        cfg,
        study=study,
        patient=patient,
        query=query,
        label=label,
        split="train" if split == "train" else "test",
        patient_ids="archive" if patient_ids == "archive" else "pseudonym",
    )
    if not rows:
        raise ConfigError(
            f"the archive lists no whole-slide series for this search ({len(seen)} "
            "series seen); check the UIDs, or search with --query"
        )
    target = cfg.resolve(out) if out is not None else cfg.manifest_path
    written = write_manifest_rows(target, rows, append=append)
    if as_json:
        series = [s.model_dump() for s in seen]
        out_json = {"manifest": str(target), "series": series, "written": len(written)}
        print(json.dumps(out_json, indent=2))
        return
    for entry in seen:
        if not entry.whole_slide:
            print(f"skipped {entry.slide} ({entry.modality}): {entry.reason}")
    print(
        f"wrote {len(written)} row(s) to {target} ({len(rows) - len(written)} "
        f"already there); set each row's label, then run "
        f"'slidefed site prepare --config {config}'"
    )


@site_app.command("qc")
def site_qc(
    config: ConfigOpt,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="The HTML page to write.")
    ] = Path("qc.html"),
    workers: Annotated[int, typer.Option(help="Worker processes (0: auto).")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Quality control of every slide: tissue, pen ink, folds, focus, exposure.

    Prepares what is not prepared yet (QC runs as part of preparation; cached
    slides keep their QC), then writes one self-contained HTML page with each
    slide's verdict, reasons and thumbnail (mask and artefacts drawn). The page,
    thumbnails and state/qc/qc-report.json stay on site.
    """
    from slidefed.cli._prepare_view import prepare_with_progress, qc_lines
    from slidefed.client.config import load_site_config
    from slidefed.client.prepare.qc import load_site_qc
    from slidefed.client.prepare.qc.html import write_qc_html

    cfg = load_site_config(config)
    if cfg.tiles is not None:
        raise ConfigError(
            f"{config} describes a site of labelled tiles ([tiles]); QC is for "
            "whole slides named in the manifest"
        )
    if not cfg.qc.enabled:
        raise ConfigError(
            f"QC is off in {config} ([qc] enabled = false); set enabled = true"
        )
    prepare_with_progress(cfg, workers=workers, quiet=as_json)
    report = load_site_qc(cfg)
    if report is None:
        raise ConfigError(
            f"no QC report in {cfg.qc_dir}; run 'slidefed site prepare --config "
            f"{config}' and look at its messages"
        )
    page = write_qc_html(report, cfg.qc_dir, out)
    if as_json:
        print(report.model_dump_json(indent=2))
        return
    for s in report.slides:
        if s.verdict == "fail":
            print(f"QC failed {s.slide} (skipped): {'; '.join(s.reasons)}")
    for line in qc_lines(cfg, config):
        print(line)
    print(f"wrote {page}")


@site_app.command("budget")
def site_budget(config: ConfigOpt, as_json: JsonOpt = False) -> None:
    """Privacy spent and remaining, per run and in total."""
    from slidefed.client.config import load_site_config
    from slidefed.client.privacy.accountant import epsilon
    from slidefed.client.privacy.ledger import PrivacyLedger

    cfg = load_site_config(config)
    ledger = PrivacyLedger(cfg.ledger_path).load()
    delta = ledger.delta or cfg.policy.delta_for(1)
    spent = epsilon(ledger.history(), delta, accountant=ledger.accountant)
    runs = []
    for plan in ledger.runs:
        rounds = [
            r for r in ledger.rounds if r.run_id == plan.run_id and r.kind == "train"
        ]
        runs.append(
            {
                "run_id": plan.run_id,
                "run_name": plan.run_name,
                "flower_run_id": plan.flower_run_id,
                "rounds": len(rounds),
                "noise_multiplier": plan.noise_multiplier,
                "epsilon_before": plan.epsilon_before,
                "epsilon_after": rounds[-1].epsilon_after
                if rounds
                else plan.epsilon_before,
            }
        )
    evaluations = [r for r in ledger.rounds if r.kind == "evaluate"]
    result = {
        "site": cfg.site.name,
        "unit": ledger.unit,
        "delta": delta,
        "epsilon_spent": spent,
        "epsilon_max": cfg.policy.max_epsilon,
        "epsilon_remaining": max(cfg.policy.max_epsilon - spent, 0.0),
        "training_rounds": len(ledger.rounds) - len(evaluations),
        "evaluations": len(evaluations),
        # What the evaluations alone cost (the total composes both kinds).
        "epsilon_evaluations": epsilon(
            [(r.noise_multiplier, r.sample_rate, r.steps) for r in evaluations],
            delta,
            accountant="rdp",
        ),
        "runs": runs,
    }
    if as_json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{cfg.site.name}: epsilon {spent:.3f} of {cfg.policy.max_epsilon:.3f} spent "
        f"(delta {delta:.2e}, unit {ledger.unit}); {result['epsilon_remaining']:.3f} left"
    )
    print(
        f"  {result['training_rounds']} training rounds, {len(evaluations)} "
        f"evaluations (epsilon {result['epsilon_evaluations']:.3f} on their own)"
    )
    for r in runs:
        print(
            f"  run {_run_label(r)}: {r['rounds']} rounds, "
            f"sigma {r['noise_multiplier']:.3f}, "
            f"epsilon {r['epsilon_before']:.3f} -> {r['epsilon_after']:.3f}"
        )


def _run_label(run: dict[str, object]) -> str:
    """A run as the audit logs and the report name it: run name and Flower run id."""
    name, flower = run["run_name"], run["flower_run_id"]
    if name:
        where = f", Flower run {flower}" if flower is not None else ""
        return f"'{name}' (ledger id {run['run_id']}{where})"
    if flower is not None:
        return f"{flower} (no run-name)"
    return f"{run['run_id']} (ledger id)"


# ---------------------------------------------------------------------- the node
@site_app.command("node-key")
def site_node_key(config: ConfigOpt) -> None:
    """Create the site's SuperNode key if missing; print its public half."""
    from slidefed.client.config import load_site_config
    from slidefed.deploy.site_node import ensure_node_key

    public = ensure_node_key(load_site_config(config))
    print(public.read_text(encoding="ascii").strip())
    print(
        f"send {public} to the coordinator; it runs "
        "'slidefed server register-site node_key.pub --name SITE --config server.toml'",
        file=sys.stderr,
    )


@site_app.command("start")
def site_start(
    config: ConfigOpt,
    superlink: Annotated[
        str, typer.Option("--superlink", help="SuperLink address HOST:PORT.")
    ],
    ca: CaOpt = None,
    insecure: InsecureOpt = False,
    runtime_port: Annotated[
        int,
        typer.Option(help="Local port of the SuperNode's Runtime API (0: any free)."),
    ] = 0,
    max_wait_time: Annotated[
        float | None,
        typer.Option(help="Give up reaching the SuperLink after this many seconds."),
    ] = None,
) -> None:
    """Run the site's SuperNode (TLS, node key) and its app-approving executor.

    Slides not prepared yet (see 'site prepare') are prepared first: a round
    only reads prepared features.
    """
    from slidefed.client.config import load_site_config
    from slidefed.deploy.approval import approvals_path, load_approved_apps
    from slidefed.deploy.doctor.node_status import (
        clear_node_status,
        record_node_status,
    )
    from slidefed.deploy.site_node import build_site_launch, prepare_before_serving
    from slidefed.deploy.supervisor import supervise

    launch = build_site_launch(
        config,
        superlink=superlink,
        ca=ca,
        insecure=insecure,
        runtime_port=runtime_port,
        max_wait_time=max_wait_time,
    )
    # Rounds read prepared features only: prepare what 'site prepare' has not.
    for line in prepare_before_serving(config):
        print(line, file=sys.stderr if line.startswith("warning:") else sys.stdout)
    if insecure:
        print(_INSECURE_WARNING, file=sys.stderr)
    approvals = approvals_path(config)
    if not load_approved_apps(approvals).app:
        print(
            f"warning: no app approved in {approvals}: every run will be refused; "
            f"approve one with 'slidefed site approve --config {config} --app-dir APP'",
            file=sys.stderr,
        )
    print(
        f"starting site node: SuperLink {superlink}, Runtime API "
        f"127.0.0.1:{launch.runtime_port}, FLWR_HOME {launch.env['FLWR_HOME']}",
        flush=True,
    )
    site = load_site_config(config)
    ended = supervise(
        [launch.supernode, launch.executor],
        launch.env,
        on_connected=lambda: clear_node_status(site),
    )
    record_node_status(site, ended.code, ended.flower_code, ended.cause)
    if ended.cause in _CAUSES:
        print(f"error: {_CAUSES[ended.cause]}", file=sys.stderr)
    raise typer.Exit(ended.code)


@site_app.command("doctor")
def site_doctor(
    config: ConfigOpt,
    superlink: SuperlinkOpt = None,
    ca: CaOpt = None,
    insecure: InsecureOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Check data, cache, disk, GPU, certificates, SuperLink, key, approvals, budget."""
    from slidefed.deploy.doctor import render_json, render_text, run_doctor

    report = run_doctor(config, superlink=superlink, ca=ca, insecure=insecure)
    print(render_json(report) if as_json else render_text(report))
    if report.failed:
        raise typer.Exit(1)


@site_app.command("approve")
def site_approve(
    config: ConfigOpt,
    app_dir: Annotated[
        Path | None, typer.Option("--app-dir", help="A Flower app folder.")
    ] = None,
    fab: Annotated[
        Path | None, typer.Option("--fab", help="A built .fab file.")
    ] = None,
    fab_hash: Annotated[
        str | None, typer.Option("--hash", help="A FAB's SHA-256 (64 hex digits).")
    ] = None,
    note: Annotated[str, typer.Option(help="Who approved it and why.")] = "",
) -> None:
    """Approve one app version (by FAB hash) for this site."""
    from slidefed.client.config import load_site_config
    from slidefed.deploy.approval import (
        approvals_path,
        approve_app,
        load_approved_apps,
        resolve_fab_hash,
    )

    load_site_config(config)
    digest, name = resolve_fab_hash(app_dir=app_dir, fab=fab, fab_hash=fab_hash)
    path = approvals_path(config)
    before = load_approved_apps(path).entry(digest)
    if before is not None:
        since = f" since {before.approved_at}" if before.approved_at else ""
        print(
            f"already approved {digest} ({before.name or 'by hash'}) in "
            f"{path}{since}; nothing changed"
        )
        return
    approve_app(path, digest, name=name, note=note)
    print(f"approved {digest} ({name or 'by hash'}) in {path}")


__all__ = ["site_app"]
