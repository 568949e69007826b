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
    from review.cli import add_review_commands
    from workers.cli import build_parser

    parser = build_parser()
    add_review_commands(parser)
    for service in services.values():
        words = command_words(service)
        if words and words[0] == "deepscreen":
            parser.parse_args(words[1:])  # argparse exits (SystemExit) on an unknown subcommand or flag


@pytest.mark.parametrize("name", ["worker", "api"])
def test_long_running_roles_have_healthchecks_our_cli_can_run(services: dict[str, dict[str, Any]], name: str) -> None:
    from review.cli import add_review_commands
    from workers.cli import build_parser

    test = services[name]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "deepscreen"
    parser = build_parser()
    add_review_commands(parser)
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
