"""The review floor's commands: serve the API and console, API tokens, and export-labels (moderators'
decisions as a training dataset)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from cli import common
from cli.common import EXIT_OK, EXIT_USAGE


def register(sub: argparse._SubParsersAction) -> None:
    p = common.add_command(sub, "serve", cmd_serve)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--home", help="serve an embedded scan home (SQLite + local folder) instead")
    common.add_database_flags(p)
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument(
        "--proxy-headers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="take the client address and scheme from X-Forwarded-For/-Proto sent by a proxy in "
        "--forwarded-allow-ips (default $DEEPSCREEN_PROXY_HEADERS, on)",
    )
    p.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help="comma-separated proxy addresses or networks whose X-Forwarded-* are trusted "
        "(default $DEEPSCREEN_FORWARDED_ALLOW_IPS, else $FORWARDED_ALLOW_IPS, else 127.0.0.1,::1); "
        "never * on a port clients reach directly",
    )

    p = common.add_command(sub, "token", cmd_token)
    tsub = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    t = tsub.add_parser("create", help="create a token and print it once")
    t.add_argument(
        "--role",
        required=True,
        choices=["service", "moderator", "admin"],
        help="service: ingest + read verdicts; moderator: review + read; admin: everything",
    )
    t.add_argument(
        "--name", default=None, help="who or what holds it (a moderator's work is recorded under it)"
    )
    t.add_argument("--expires-days", type=float, help="lifetime in days (default: no expiry)")
    t.add_argument("--json", action="store_true")
    t = tsub.add_parser("revoke", help="revoke a token by id or prefix")
    t.add_argument("token", help="token id or the prefix `token list` shows")
    t = tsub.add_parser("list", help="list tokens (never the tokens themselves)")
    t.add_argument("--active", action="store_true", help="hide revoked tokens")
    t.add_argument("--json", action="store_true")
    for t in tsub.choices.values():
        common.add_database_flags(t, home=True)

    p = common.add_command(sub, "export-labels", cmd_export_labels)
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--margin", type=float, help="crop margin per side (default: the model's crop_margin)")
    p.add_argument("--model", dest="model_dir", help="model folder whose crop_margin to use")
    p.add_argument("--val-percent", type=int, default=10, help="share of images in the val split (by sha256)")
    p.add_argument("--home", help="an embedded scan home (SQLite + local folder) instead")
    common.add_database_flags(p)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")


def cmd_serve(args: argparse.Namespace) -> int:
    """run the review API and moderators' console (FastAPI + uvicorn)

    Serve the /v1 API (OpenAPI at /openapi.json, for admin tokens) and the console at /console. Uses
    Postgres, S3 and the queues from DEEPSCREEN_ settings, or with --home the SQLite database and folder of
    `deepscreen scan` (no queue)."""
    import uvicorn

    from review.api import create_app
    from review.context import distributed_context, embedded_context
    from workers.secret_policy import secret_weakness

    settings = common.settings(args)
    problem = settings.serve_secret_problem(args.host)
    if problem:  # refused before any store is opened or port bound
        print(f"deepscreen serve: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if secret_weakness(settings.signing_secret.get_secret_value()):
        print(
            "warning: DEEPSCREEN_SIGNING_SECRET is weak (allowed on loopback without a webhook only); set a "
            "random secret before real use",
            file=sys.stderr,
        )
    try:
        ctx = embedded_context(settings, Path(args.home)) if args.home else distributed_context(settings)
    except Exception as exc:  # noqa: BLE001 - an outage is exit 3; a defect is re-raised
        return common.outage("serve", exc)
    extra: dict[str, Any] = {}
    if os.environ.get("DEEPSCREEN_LOG_FORMAT") == "json":
        # uvicorn's own loggers (startup, access) go through the root logger's JSON formatter too
        extra["log_config"] = None
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).setLevel(args.log_level.upper())
    if key_problem := _bundle_key_problem(settings):
        print(f"deepscreen serve: {key_problem}", file=sys.stderr)
        ctx.close()
        return EXIT_USAGE
    stop_relay = _serve_relay(ctx, settings)
    try:
        uvicorn.run(
            create_app(ctx),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            server_header=False,
            **proxy_options(args, settings),
            **extra,
        )
    finally:
        stop_relay()
    return EXIT_OK


def proxy_options(args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    """uvicorn's proxy-header options: with them on, a request from a proxy in FORWARDED_ALLOW_IPS is
    attributed to the client its X-Forwarded-For names (the address the failed-login limiter counts)."""
    options: dict[str, Any] = {
        "proxy_headers": settings.proxy_headers if args.proxy_headers is None else args.proxy_headers
    }
    allow = args.forwarded_allow_ips or settings.forwarded_allow_ips
    if allow:  # else uvicorn reads $FORWARDED_ALLOW_IPS, and trusts loopback only without it
        options["forwarded_allow_ips"] = allow
    return options


def _bundle_key_problem(settings: Any) -> str | None:
    """Why the configured Ed25519 bundle key cannot sign, found at start rather than at the first escalation."""
    from review import bundles, signing

    try:
        bundles.signing_key(settings)
    except signing.SigningKeyError as exc:
        return f"DEEPSCREEN_BUNDLE_SIGNING_KEY_FILE: {exc} (make one with `deepscreen bundles keygen`)"
    return None


def _serve_relay(ctx: Any, settings: Any) -> Any:
    """The webhook relay thread of `serve` (when a webhook is configured); returns what stops it."""
    from review import relay, webhooks

    config = webhooks.config_from(settings)
    if config is None or not settings.webhook_relay_in_serve:
        return lambda: None
    _, stop = relay.start_in_background(ctx, config, settings.webhook_relay_interval_s)
    return stop.set


def cmd_token(args: argparse.Namespace) -> int:
    """API tokens: create, revoke, list (stored hashed)"""
    from db.engine import connect
    from db.review_store import Actor, ReviewStore
    from db.token_store import TokenError, TokenStore

    engine = connect(common.database_url(args))
    tokens, reviews, actor = TokenStore(engine), ReviewStore(engine), Actor(common.cli_user(), "admin")
    try:
        if args.token_command == "create":
            # a distinct identity unless one is named: a moderator's work is recorded under it
            name = args.name or f"{args.role}-{secrets.token_hex(3)}"
            expires = timedelta(days=args.expires_days) if args.expires_days else None
            plaintext, info = tokens.create(name, args.role, expires)
            reviews.record(
                actor, "token_created", details={"token_id": info.id, "name": info.name, "role": info.role}
            )
            if args.json:
                print(json.dumps({**_jsonable(info.as_dict()), "token": plaintext}))
            else:
                print(plaintext)
                print(
                    f"token {info.id} for {info.name!r} (role {info.role}); shown once, only its hash is kept",
                    file=sys.stderr,
                )
            return EXIT_OK
        if args.token_command == "revoke":
            info = tokens.revoke(tokens.find(args.token).id)
            reviews.record(actor, "token_revoked", details={"token_id": info.id, "name": info.name})
            print(f"revoked token {info.id} ({info.name}, {info.role})")
            return EXIT_OK
        rows = tokens.list(include_revoked=not args.active)
        if args.json:
            for info in rows:
                print(json.dumps(_jsonable(info.as_dict())))
            return EXIT_OK
        print(f"{'id':>4}  {'prefix':<11} {'role':<9} {'name':<24} {'expires':<20} state")
        for info in rows:
            state = "revoked" if info.revoked_at else "active"
            expires = info.expires_at.strftime("%Y-%m-%d %H:%M") if info.expires_at else "never"
            print(
                f"{info.id:>4}  {info.prefix:<11} {info.role:<9} {info.name[:24]:<24} {expires:<20} {state}"
            )
        return EXIT_OK
    except TokenError as exc:
        print(f"deepscreen token: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        tokens.engine.dispose()


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in row.items()}


def cmd_export_labels(args: argparse.Namespace) -> int:
    """write moderators' decisions as a training dataset

    Face crops of decided review items in real/ and fake/, with manifest.csv (file,label,group,split) as
    `deepscreen train --data` reads it."""
    from pipeline.errors import ModelLoadError
    from pipeline.model import read_metadata
    from review.context import distributed_context, embedded_context
    from review.labels import export_labels

    settings = common.settings(args)
    margin = args.margin
    if margin is None:
        try:
            margin = read_metadata(settings.model_dir).crop_margin
        except ModelLoadError as exc:
            print(f"deepscreen export-labels: give --margin, or a model: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        ctx = embedded_context(settings, Path(args.home)) if args.home else distributed_context(settings)
    except Exception as exc:  # noqa: BLE001 - an outage is exit 3; a defect is re-raised
        return common.outage("export-labels", exc)
    try:
        report = export_labels(ctx, Path(args.out), margin, args.val_percent, progress=not args.no_progress)
    finally:
        ctx.close()
    summary = {"out": args.out, **report.as_dict()}
    print(
        json.dumps(summary)
        if args.json
        else f"{report.crops['real']} real and {report.crops['fake']} fake crops from {report.items} decided items "
        f"in {args.out} (manifest.csv); skipped: {report.skipped or 'none'}"
    )
    return EXIT_OK
