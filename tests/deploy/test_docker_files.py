"""docker/: lint the Dockerfiles and compose.yaml without a Docker engine.

Every path they copy or mount must exist, every command they run must be a real
slidefed command that accepts the options given (run here with ``--help`` as a plain
process), images must run as a non-root user, and the site containers must see the
slides and their own config read-only.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from slidefed.client.config import load_site_config

# PyYAML comes with flwr; loaded by name so that no type stubs are needed.
yaml: Any = importlib.import_module("yaml")

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = ["site.Dockerfile", "site-cuda.Dockerfile", "coordinator.Dockerfile"]
INSTRUCTIONS = {
    "FROM", "ARG", "RUN", "COPY", "ADD", "ENV", "USER", "WORKDIR", "VOLUME",
    "ENTRYPOINT", "CMD", "EXPOSE", "LABEL", "HEALTHCHECK", "SHELL", "STOPSIGNAL",
}  # fmt: skip
SLIDEFED = str(Path(sys.executable).parent / "slidefed")


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word, rest.strip()))
    assert not pending, f"{path.name}: dangling line continuation"
    return out


def _run_help(words: list[str]) -> str:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    done = subprocess.run(
        [SLIDEFED, *words, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, f"slidefed {' '.join(words)} --help: {done.stderr}"
    return done.stdout


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_syntax_user_and_base_image(name: str) -> None:
    steps = _instructions(DOCKER / name)
    words = [w for w, _ in steps]
    assert set(words) <= INSTRUCTIONS, set(words) - INSTRUCTIONS
    assert "FROM" in words
    assert all(w == "ARG" for w in words[: words.index("FROM")])
    users = [arg for w, arg in steps if w == "USER"]
    assert users, f"{name} never leaves root"
    assert users[-1] not in ("root", "0")
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    base = next(a for w, a in steps if w == "FROM")
    resolved = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    if resolved.startswith("flwr/"):
        import flwr.supercore.version as flwr_version

        tag = resolved.split(":", 1)[1]
        assert tag.startswith(".".join(flwr_version.package_version.split(".")[:2]))
    else:
        assert "FLWR_VERSION" in args
        assert args["FLWR_VERSION"].split(".")[:2] == ["1", "42"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_copies_only_what_exists_and_its_ignore_file_keeps_it(
    name: str,
) -> None:
    ignore = (DOCKER / f"{name}.dockerignore").read_text().splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for word, arg in _instructions(DOCKER / name):
        if word not in ("COPY", "ADD"):
            continue
        parts = [p for p in shlex.split(arg) if not p.startswith("--")]
        for source in parts[:-1]:
            assert (REPO / source).exists(), f"{name}: COPY {source} does not exist"
            assert source.rstrip("/") in kept, f"{name}: .dockerignore drops {source}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_build_steps_refer_to_real_things(name: str) -> None:
    runs = " ".join(a for w, a in _instructions(DOCKER / name) if w == "RUN")
    # The sed that swaps the simulation extra for plain flwr must change something.
    found = re.search(r"sed -i 's/(.+?)/(.+?)/' pyproject.toml", runs)
    assert found is not None
    pattern = found.group(1).replace("\\[", r"\[").replace("\\]", r"\]")
    assert re.search(pattern, (REPO / "pyproject.toml").read_text())
    # The app folder baked into the image comes from an importable function.
    for module, attr in re.findall(r"from (slidefed[\w.]*) import (\w+)", runs):
        __import__(module)
        assert hasattr(sys.modules[module], attr)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_entrypoint_and_cmd_run(name: str) -> None:
    steps = dict(_instructions(DOCKER / name))
    entrypoint = json.loads(steps["ENTRYPOINT"])
    assert entrypoint == ["slidefed"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "slidefed" in scripts
    _run_help(json.loads(steps["CMD"]))


def test_compose_builds_from_the_dockerfiles_here() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"superlink", "site-a", "site-b", "register"} <= set(services)
    for name, service in services.items():
        build = service.get("build")
        assert build, f"{name} has no build section"
        context = (DOCKER / build["context"]).resolve()
        assert context == REPO
        assert (context / build["dockerfile"]).is_file()


def test_compose_mounts_exist_and_sites_read_slides_and_config_read_only() -> None:
    compose = _compose()
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            source, target, *mode = mount.split(":")
            if source.startswith("."):
                folder = DOCKER / source
                assert folder.is_dir(), f"{name}: {source} missing"
                load_site_config(folder / "site.toml")
            else:
                assert source in declared, f"{name}: volume {source} not declared"
            if name in ("site-a", "site-b") and target in (
                "/slides",
                "/site",
                "/public",
            ):
                assert mode == ["ro"], f"{name}: {target} must be read-only"
        if name.startswith("site"):
            sources = [m.split(":")[0] for m in service.get("volumes", [])]
            assert "coordinator" not in sources, "the CA key must not reach a site"
    published = {n for n, s in compose["services"].items() if s.get("ports")}
    assert published == {"superlink"}
    assert all(
        p.startswith("127.0.0.1:") for p in compose["services"]["superlink"]["ports"]
    )


def test_compose_site_config_matches_the_volumes() -> None:
    for site in ("site-a", "site-b"):
        config = load_site_config(DOCKER / "sites" / site / "site.toml")
        assert config.site.name == site
        assert config.slides_root == Path("/slides")
        assert config.state_dir == Path("/state")
        assert config.audit_path.is_relative_to(Path("/state"))


def _compose_commands() -> list[tuple[str, list[str]]]:
    """(service, slidefed argv) for every slidefed command compose runs."""
    out: list[tuple[str, list[str]]] = []
    for name, service in _compose()["services"].items():
        command = service.get("command", [])
        if service.get("entrypoint") == ["sh", "-c"]:
            script = command[0] if isinstance(command, list) else command
            for part in re.split(r"&&|\|\||;|\(|\)|\bdo\b|\bdone\b", script):
                tokens = shlex.split(part.replace("$$", "$"))
                if "slidefed" in tokens:
                    argv = tokens[tokens.index("slidefed") + 1 :]
                    if ">" in argv:
                        argv = argv[: argv.index(">")]
                    out.append((name, argv))
        else:
            out.append((name, list(command)))
    return out


def test_compose_commands_are_real_slidefed_commands() -> None:
    commands = _compose_commands()
    assert len(commands) >= 8
    helps: dict[tuple[str, ...], str] = {}
    for service, argv in commands:
        words = []
        for token in argv:
            if token.startswith(("-", "/", "$")):
                break
            words.append(token)
        key = tuple(words)
        if key not in helps:
            helps[key] = _run_help(words)
        for option in (t for t in argv if t.startswith("--")):
            assert option in helps[key], (
                f"{service}: slidefed {' '.join(words)} {option}"
            )


def test_compose_healthcheck_is_valid_python() -> None:
    test = _compose()["services"]["superlink"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    compile(test[3], "healthcheck", "exec")


def test_site_executor_entry_point_runs() -> None:
    for command in ("executor", "clientapp"):
        done = subprocess.run(
            [sys.executable, "-m", "slidefed.deploy.approval_gate", command, "--help"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert "--site-config" in done.stdout
        assert "Warning" not in done.stderr  # e.g. runpy's "found in sys.modules"


def test_compose_registers_sites_over_the_coordinators_loopback() -> None:
    # The Control API answers on 127.0.0.1 of the SuperLink's container only, so
    # the one-shot registration shares that container's network.
    services = _compose()["services"]
    assert services["register"]["network_mode"] == "service:superlink"
    command = " ".join(services["register"]["command"])
    assert "slidefed server register-site" in command


def test_coordinator_image_has_the_public_front() -> None:
    steps = _instructions(DOCKER / "coordinator.Dockerfile")
    runs = " ".join(arg for op, arg in steps if op == "RUN")
    assert "apt-get install" in runs
    assert " nginx" in runs
