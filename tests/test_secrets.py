"""The signing secret: production refuses placeholders and weak values (not only short ones), and `serve`
refuses them in any environment once it is reachable beyond loopback or a webhook is configured."""

from __future__ import annotations

import secrets

import pytest
from pydantic import ValidationError

from workers.secret_policy import is_loopback, secret_weakness
from workers.settings import Settings

WEAK = {
    "placeholder": "changethis",
    "placeholder padded": "changethis" * 4,
    "placeholder spelled apart": "Change-This-Before-Production-0001!",
    "another placeholder": "changeme-changeme-changeme-changeme",
    "minio default": "minioadmin" + "0" * 30,
    "one character": "x" * 40,
    "two characters": "ab" * 20,
    "a repeated block": "0123456789abcdef" * 2,
    "a repeated word": "deepscreen" * 4,
    "an alphabet run": "abcdefghijklmnopqrstuvwxyz0123456789",
    "a keyboard run": "qwertyuiopasdfghjklzxcvbnm1234567890",
    "few symbols": "aabbaabbabababbbaaabbbaabbaaabbbaaab",
    "short": "too-short-secret-value",
}


@pytest.mark.parametrize("secret", WEAK.values(), ids=WEAK.keys())
def test_production_refuses_placeholder_and_weak_secrets_without_echoing_them(secret: str) -> None:
    assert secret_weakness(secret) is not None
    with pytest.raises(ValidationError, match="DEEPSCREEN_SIGNING_SECRET") as caught:
        Settings(environment="production", signing_secret=secret)
    assert secret not in str(caught.value)


def test_random_secrets_of_the_documented_recipes_are_accepted() -> None:
    makers = (
        lambda: secrets.token_hex(16),
        lambda: secrets.token_hex(32),
        lambda: secrets.token_urlsafe(24),
        lambda: secrets.token_urlsafe(48),
    )
    refused = [value for make in makers for value in (make() for _ in range(2000)) if secret_weakness(value)]
    assert refused == []
    assert (
        Settings(environment="production", signing_secret=secrets.token_hex(32)).environment == "production"
    )


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),  # noqa: S104
        ("", False),
        ("10.0.0.7", False),
        ("api.example", False),
    ],
)
def test_loopback_means_loopback_only(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_serve_problem_needs_exposure_or_a_webhook() -> None:
    local = Settings(environment="local")
    assert local.serve_secret_problem("127.0.0.1") is None  # a laptop run keeps working on the placeholder
    assert "0.0.0.0" in (local.serve_secret_problem("0.0.0.0") or "")  # noqa: S104
    hooked = Settings(environment="test", webhook_url="https://receiver.example/hook")
    assert "webhook" in (hooked.serve_secret_problem("127.0.0.1") or "")
    weak = Settings(environment="local", signing_secret="x" * 40)
    assert weak.serve_secret_problem("0.0.0.0") is not None  # noqa: S104
    strong = Settings(
        environment="local", signing_secret=secrets.token_hex(32), webhook_url="https://r.example/h"
    )
    assert strong.serve_secret_problem("0.0.0.0") is None  # noqa: S104


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["serve", "--host", "0.0.0.0"], {}),  # noqa: S104
        (["serve", "--host", "::", "--home", "unused-home"], {"DEEPSCREEN_ENVIRONMENT": "test"}),
        (["serve"], {"DEEPSCREEN_WEBHOOK_URL": "https://receiver.example/hook"}),
        (["serve", "--host", "0.0.0.0"], {"DEEPSCREEN_SIGNING_SECRET": "ab" * 20}),  # noqa: S104
    ],
)
def test_serve_refuses_to_start_exposed_with_a_weak_secret(
    argv: list[str],
    env: dict[str, str],
    monkeypatch,  # noqa: ANN001
    capsys,
    tmp_path,
) -> None:  # noqa: ANN001
    from cli.main import main

    for name in ("DEEPSCREEN_SIGNING_SECRET", "DEEPSCREEN_WEBHOOK_URL", "DEEPSCREEN_ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2  # refused before any store is opened or port bound
    err = capsys.readouterr().err
    assert "DEEPSCREEN_SIGNING_SECRET" in err and "refused" in err
    assert not (tmp_path / "unused-home").exists()
