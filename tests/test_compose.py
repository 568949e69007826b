"""The compose files agree with themselves, with the GPU override and with deploy/env.example."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
GPU_OVERRIDE = ROOT / "deploy" / "docker-compose.gpu.yml"
ENV_EXAMPLE = ROOT / "deploy" / "env.example"
VARIABLE = re.compile(r"\bDEEPSCREEN_[A-Z0-9_]+\b")


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), f"{path.name} is not a mapping"
    return document


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return load(COMPOSE)["services"]


@pytest.fixture(scope="module")
def gpu_services() -> dict[str, dict[str, Any]]:
    return load(GPU_OVERRIDE)["services"]


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, str]]:
    value = service.get("depends_on", {})
    if isinstance(value, list):
        return {name: {"condition": "service_started"} for name in value}
    return value


def environment(service: dict[str, Any]) -> dict[str, str]:
    value = service.get("environment", {})
    if isinstance(value, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in value)
    return value


def command_words(service: dict[str, Any]) -> list[str]:
    value = service.get("command", [])
    return value.split() if isinstance(value, str) else [str(word) for word in value]


def is_ours(service: dict[str, Any]) -> bool:
    return "build" in service or str(service.get("image", "")).startswith("deepscreen")


def test_every_dependency_exists(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for target in depends_on(service):
            assert target in services, f"{name} depends on unknown service {target}"


def test_redis_keeps_an_append_only_file(services: dict[str, dict[str, Any]]) -> None:
    words = command_words(services["redis"])
    assert "--appendonly" in words
    assert words[words.index("--appendonly") + 1] == "yes"
    assert services["redis"].get("volumes"), "an append-only file without a volume is lost with the container"


@pytest.mark.parametrize("name", ["migrate", "worker", "beat", "api"])
def test_roles_run_our_image(services: dict[str, dict[str, Any]], name: str) -> None:
    assert is_ours(services[name])
    assert command_words(services[name])[0] == "deepscreen"


def test_our_image_always_has_the_service_urls(services: dict[str, dict[str, Any]]) -> None:
    ours = [name for name, service in services.items() if is_ours(service)]
    assert ours
    for name in ours:
        env = environment(services[name])
        for variable in ("DEEPSCREEN_DATABASE_URL", "DEEPSCREEN_BROKER_URL"):
            assert env.get(variable), f"{name} lacks {variable}"


def test_worker_waits_for_migrations_and_buckets(services: dict[str, dict[str, Any]]) -> None:
    needs = depends_on(services["worker"])
    assert needs["migrate"]["condition"] == "service_completed_successfully"
    assert needs["redis"]["condition"] == "service_healthy"
    assert needs["minio-init"]["condition"] == "service_completed_successfully"
    assert depends_on(services["migrate"])["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", ["redis", "postgres", "minio"])
def test_stateful_services_have_healthchecks(services: dict[str, dict[str, Any]], name: str) -> None:
    assert services[name]["healthcheck"]["test"]


def test_healthy_conditions_point_at_services_with_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for target, rule in depends_on(service).items():
            if rule.get("condition") == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} to be healthy"


def test_gpu_override_only_changes_existing_services(
    services: dict[str, dict[str, Any]], gpu_services: dict[str, dict[str, Any]]
) -> None:
    assert set(gpu_services) <= set(services)
    worker = gpu_services["worker"]
    assert environment(worker)["DEEPSCREEN_DEVICE"] == "cuda"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(device.get("driver") == "nvidia" for device in devices)


def test_compose_migrate_leaves_the_buckets_to_minio_init(services: dict[str, dict[str, Any]]) -> None:
    # the app's MinIO user may not create buckets, and migrate does not wait for MinIO
    assert "--no-buckets" in command_words(services["migrate"])
    assert "minio" not in depends_on(services["migrate"])


def test_gpu_worker_runs_one_process_per_gpu_at_the_precision_auto_picks(gpu_services: dict[str, dict[str, Any]]) -> None:
    from workers.settings import Settings

    env = environment(gpu_services["worker"])
    devices = gpu_services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert [device.get("count") for device in devices] == [1]
    # one prefork child per GPU: it alone initialises CUDA, keeps the pool's time limits and is replaced if it dies
    settings = Settings(pool=env.get("DEEPSCREEN_POOL", "prefork"), concurrency=int(env["DEEPSCREEN_CONCURRENCY"]))
    assert (settings.pool, settings.concurrency) == ("prefork", 1)
    # auto picks bf16 (fp32's range) on Ampere and later and fp16 only before it
    assert env.get("DEEPSCREEN_PRECISION", "auto") == "auto"


def test_env_example_lists_every_variable_the_compose_files_use() -> None:
    used = set(VARIABLE.findall(COMPOSE.read_text())) | set(VARIABLE.findall(GPU_OVERRIDE.read_text()))
    listed = {
        line.split("=", 1)[0].strip()
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    assert used, "the compose files set no DEEPSCREEN_ variables"
    assert used <= listed, f"missing from deploy/env.example: {sorted(used - listed)}"


def test_every_deepscreen_command_in_compose_exists(services: dict[str, dict[str, Any]]) -> None:
    from cli.main import build_parser

    parser = build_parser()
    for service in services.values():
        words = command_words(service)
        if words and words[0] == "deepscreen":
            parser.parse_args(words[1:])  # argparse exits (SystemExit) on an unknown subcommand or flag


@pytest.mark.parametrize("name", ["worker", "api"])
def test_long_running_roles_have_healthchecks_our_cli_can_run(services: dict[str, dict[str, Any]], name: str) -> None:
    from cli.main import build_parser

    test = services[name]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "deepscreen"
    parser = build_parser()
    args = parser.parse_args(test[2:])
    assert args.command == "probe"
    if name == "api":
        assert args.url.endswith("/readyz")


def test_worker_and_api_wait_for_healthy_stores(services: dict[str, dict[str, Any]]) -> None:
    for name in ("worker", "api"):
        needs = depends_on(services[name])
        for store in ("redis", "postgres", "minio"):
            assert needs[store]["condition"] == "service_healthy", (name, store)


def test_compose_logs_json() -> None:
    assert environment(load(COMPOSE)["services"]["worker"])["DEEPSCREEN_LOG_FORMAT"] == "json"


def test_monitoring_profile_scrapes_the_worker_port_and_loads_the_rules(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    config = load(ROOT / "deploy" / "prometheus" / "prometheus.yml")
    for rule_file in config["rule_files"]:
        assert (ROOT / "deploy" / "prometheus" / rule_file).is_file()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    worker_port = jobs["deepscreen-worker"]["dns_sd_configs"][0]["port"]
    assert str(worker_port) in [str(p) for p in services["worker"]["expose"]]
    from workers.settings import Settings

    assert Settings().metrics_port == worker_port
    assert jobs["deepscreen-api"]["static_configs"][0]["targets"] == ["api:8000"]


# -- credentials, ports, images and the app's MinIO user ---------------------------------------------------
CREDENTIAL = re.compile(r"\$\{(?P<name>[A-Z0-9_]*(?:PASSWORD|SECRET|USER|KEY)[A-Z0-9_]*)(?P<op>:?[-?+]|\})")
REQUIRED = re.compile(r"\$\{(?P<name>[A-Z0-9_]+):\?")
APP_POLICY = ROOT / "deploy" / "minio-app-policy.json"
MINIO_INIT = ROOT / "deploy" / "minio-init.sh"
APP_ACTIONS = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket", "s3:GetBucketLocation"}


def test_credentials_are_required_never_defaulted() -> None:
    text = COMPOSE.read_text()
    assert "minioadmin" not in text.lower()
    uses = [(m["name"], m["op"]) for m in CREDENTIAL.finditer(text)]
    assert {name for name, _ in uses} >= {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "MINIO_APP_USER",
                                          "MINIO_APP_PASSWORD", "POSTGRES_PASSWORD", "DEEPSCREEN_SIGNING_SECRET"}
    defaulted = [(name, op) for name, op in uses if op != ":?"]
    assert defaulted == [], f"credentials with a default or allowed empty: {defaulted}"


def test_every_required_variable_is_listed_in_env_example() -> None:
    required = {m["name"] for m in REQUIRED.finditer(COMPOSE.read_text())}
    listed = {line.split("=", 1)[0].strip() for line in ENV_EXAMPLE.read_text().splitlines()
              if "=" in line and not line.lstrip().startswith("#")}
    assert required - listed == set()
    assert "minioadmin" not in ENV_EXAMPLE.read_text()


def _published(entry: Any) -> str:
    if isinstance(entry, dict):  # the long syntax
        return f"{entry.get('host_ip', '')}:{entry.get('published', '')}:{entry.get('target', '')}"
    return str(entry)


def test_published_ports_listen_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    published = [(name, _published(entry)) for name, service in services.items() for entry in service.get("ports", [])]
    assert {name for name, _ in published} >= {"minio", "api"}
    open_ports = [(name, port) for name, port in published if not port.startswith("127.0.0.1:")]
    assert open_ports == [], f"published beyond loopback: {open_ports}"


def _images() -> list[tuple[str, str]]:
    found = [(f"{path.name}:{name}", str(service["image"])) for path in (COMPOSE, GPU_OVERRIDE)
             for name, service in load(path)["services"].items() if "image" in service]
    dockerfile = ROOT / "deploy" / "Dockerfile"
    found += [(dockerfile.name, line.split()[1]) for line in dockerfile.read_text().splitlines()
              if line.startswith("FROM ")]
    return found


def test_every_image_is_pinned_to_a_version() -> None:
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    images = _images()
    assert len(images) >= 8
    for where, image in images:
        name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
        assert tag and tag != "latest", f"{where}: {image} floats"
        if name == "deepscreen":
            assert tag.split("-")[0] == version, f"{where}: our image is tagged with pyproject's version"
        else:  # a release (postgres numbers its patch releases major.minor) or a dated release, not a bare major
            assert re.fullmatch(r"v?\d+\.\d+(\.\d+)?(-[a-z0-9.-]+)?|RELEASE\.[0-9T-]+Z", tag), f"{where}: {image}"


def test_the_app_signs_in_as_its_own_least_privilege_minio_user(services: dict[str, dict[str, Any]]) -> None:
    import json

    for name in ("migrate", "worker", "beat", "api"):
        env = environment(services[name])
        assert env["AWS_ACCESS_KEY_ID"].startswith("${MINIO_APP_USER:?"), name
        assert env["AWS_SECRET_ACCESS_KEY"].startswith("${MINIO_APP_PASSWORD:?"), name
        assert "MINIO_ROOT_PASSWORD" not in str(env), f"{name} holds MinIO's root credentials"
    init = services["minio-init"]
    assert {"./deploy/minio-init.sh:/deploy/minio-init.sh:ro",
            "./deploy/minio-app-policy.json:/deploy/minio-app-policy.json:ro"} <= set(init["volumes"])
    assert init["entrypoint"] == ["/bin/sh", "/deploy/minio-init.sh"]

    common = environment(services["api"])
    buckets = {common["DEEPSCREEN_S3_BUCKET"], *common["DEEPSCREEN_INPUT_BUCKETS"].split(",")}
    policy = json.loads(APP_POLICY.read_text())
    actions = {a for s in policy["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    resources = {r for s in policy["Statement"] for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])}
    assert all(s["Effect"] == "Allow" for s in policy["Statement"])
    assert actions <= APP_ACTIONS, f"more than object access: {actions - APP_ACTIONS}"
    allowed = {f"arn:aws:s3:::{b}" for b in buckets} | {f"arn:aws:s3:::{b}/*" for b in buckets}
    assert resources <= allowed and resources >= {f"arn:aws:s3:::{b}/*" for b in buckets}


def _run_init(tmp_path: Path, **env: str) -> tuple[int, list[list[str]]]:
    """deploy/minio-init.sh against a stand-in `mc` that records its arguments (no MinIO here)."""
    import os
    import subprocess

    log = tmp_path / "mc.log"
    fake = tmp_path / "bin" / "mc"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text('#!/bin/sh\nprintf "%s\\037" "$@" >> "$MC_LOG"\necho >> "$MC_LOG"\n'
                    'case "$*" in *"policy attach"*) exit "${MC_ATTACH_RC:-0}";; '
                    '*"user info"*) echo "PolicyName: deepscreen-app";; esac\n')
    fake.chmod(0o755)
    full = {"PATH": f"{fake.parent}:{os.environ['PATH']}", "MC_LOG": str(log), **env}
    done = subprocess.run(["sh", str(MINIO_INIT)], env=full, capture_output=True, text=True, timeout=30)
    calls = [line.split("\x1f")[:-1] for line in log.read_text().splitlines()] if log.exists() else []
    return done.returncode, calls


def test_minio_init_makes_the_buckets_and_the_app_user_with_its_policy(tmp_path: Path) -> None:
    creds = {"MINIO_ROOT_USER": "root", "MINIO_ROOT_PASSWORD": "r" * 32, "MINIO_APP_USER": "deepscreen-app",
             "MINIO_APP_PASSWORD": "a" * 32}
    rc, calls = _run_init(tmp_path, **creds)
    assert rc == 0
    assert ["alias", "set", "local", "http://minio:9000", "root", "r" * 32] in calls
    assert {"local/deepscreen", "local/uploads"} <= {c[-1] for c in calls if c[:1] == ["mb"]}
    assert ["admin", "policy", "create", "local", "deepscreen-app", str(APP_POLICY)] in calls
    assert ["admin", "user", "add", "local", "deepscreen-app", "a" * 32] in calls
    assert ["admin", "policy", "attach", "local", "deepscreen-app", "--user", "deepscreen-app"] in calls
    rerun, _ = _run_init(tmp_path, MC_ATTACH_RC="1", **creds)  # a second `compose up`: already attached
    assert rerun == 0
    same, _ = _run_init(tmp_path, **{**creds, "MINIO_APP_USER": "root"})
    assert same == 2, "the app must not get the root user"
    missing, _ = _run_init(tmp_path, **{k: v for k, v in creds.items() if k != "MINIO_APP_PASSWORD"})
    assert missing != 0
