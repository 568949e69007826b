"""The `deepscreen` entry point: every workers.cli subcommand, plus the review floor's own
(serve, token, export-labels). It lives here because review sits above workers: workers cannot import it.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import secrets
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from workers.cli import EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, build_parser, configure_logging

log = logging.getLogger("deepscreen")


def _settings(args: argparse.Namespace):  # noqa: ANN202
    from workers.settings import Settings

    overrides: dict[str, Any] = {}
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    return Settings(**overrides)


def _token_store(args: argparse.Namespace):  # noqa: ANN202
    from db.migrate import home_database
    from db.review_store import ReviewStore
    from db.store import connect
    from db.token_store import TokenStore

    url = home_database(args.home) if args.home else _settings(args).database_url
    engine = connect(url)
    return TokenStore(engine), ReviewStore(engine)


def _cli_actor():  # noqa: ANN202
    from db.review_store import Actor

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Actor(f"cli:{user}", "admin")


# -- serve -----------------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from review.api import create_app
    from review.context import distributed_context, embedded_context

    settings = _settings(args)
    if settings.signing_secret.get_secret_value() == "changethis":
        print("warning: DEEPSCREEN_SIGNING_SECRET is the placeholder; set a random secret before real use",
              file=sys.stderr)
    try:
        ctx = embedded_context(settings, Path(args.home)) if args.home else distributed_context(settings)
    except Exception as exc:  # noqa: BLE001 - a CLI reports service trouble as an exit code
        print(f"deepscreen serve: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    extra: dict[str, Any] = {}
    if os.environ.get("DEEPSCREEN_LOG_FORMAT") == "json":
        # uvicorn's own loggers (startup, access) go through the root logger's JSON formatter too
        extra["log_config"] = None
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).setLevel(args.log_level.upper())
    uvicorn.run(create_app(ctx), host=args.host, port=args.port, log_level=args.log_level,
                proxy_headers=args.proxy_headers, server_header=False, **extra)
    return EXIT_OK


# -- token -----------------------------------------------------------------------------------------------
def cmd_token(args: argparse.Namespace) -> int:
    from db.token_store import TokenError

    tokens, reviews = _token_store(args)
    try:
        if args.token_command == "create":
            expires = timedelta(days=args.expires_days) if args.expires_days else None
            plaintext, info = tokens.create(args.name, args.role, expires)
            reviews.record(_cli_actor(), "token_created", details={"token_id": info.id, "name": info.name,
                                                                   "role": info.role})
            if args.json:
                print(json.dumps({**_jsonable(info.as_dict()), "token": plaintext}))
            else:
                print(plaintext)
                print(f"token {info.id} for {info.name!r} (role {info.role}); shown once, only its hash is kept",
                      file=sys.stderr)
            return EXIT_OK
        if args.token_command == "revoke":
            info = tokens.revoke(tokens.find(args.token).id)
            reviews.record(_cli_actor(), "token_revoked", details={"token_id": info.id, "name": info.name})
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
            print(f"{info.id:>4}  {info.prefix:<11} {info.role:<9} {info.name[:24]:<24} {expires:<20} {state}")
        return EXIT_OK
    except TokenError as exc:
        print(f"deepscreen token: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        tokens.engine.dispose()


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in row.items()}


# -- export-labels ---------------------------------------------------------------------------------------
def cmd_export_labels(args: argparse.Namespace) -> int:
    from pipeline.errors import ModelLoadError
    from pipeline.model import read_metadata
    from review.context import distributed_context, embedded_context
    from review.labels import export_labels

    settings = _settings(args)
    margin = args.margin
    if margin is None:
        try:
            margin = read_metadata(Path(args.model_dir) if args.model_dir else settings.model_dir).crop_margin
        except ModelLoadError as exc:
            print(f"deepscreen export-labels: give --margin, or a model: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        ctx = embedded_context(settings, Path(args.home)) if args.home else distributed_context(settings)
    except Exception as exc:  # noqa: BLE001
        print(f"deepscreen export-labels: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        report = export_labels(ctx, Path(args.out), margin, args.val_percent, progress=not args.no_progress)
    finally:
        ctx.close()
    summary = {"out": args.out, **report.as_dict()}
    print(json.dumps(summary) if args.json else
          f"{report.crops['real']} real and {report.crops['fake']} fake crops from {report.items} decided items "
          f"in {args.out} (manifest.csv); skipped: {report.skipped or 'none'}")
    return EXIT_OK


# -- webhooks relay --------------------------------------------------------------------------------------
def cmd_webhooks(args: argparse.Namespace) -> int:
    from review import relay, webhooks
    from review.context import distributed_context

    settings = _settings(args)
    config = webhooks.config_from(settings)
    topic = relay.TOPIC if args.webhooks_command == "relay" else "escalation"
    if config is None or not config.wants(topic):
        print(f"deepscreen webhooks {args.webhooks_command}: set DEEPSCREEN_WEBHOOK_URL and add {topic} to "
              "DEEPSCREEN_WEBHOOK_TOPICS", file=sys.stderr)
        return EXIT_USAGE
    try:
        ctx = distributed_context(settings)
    except Exception as exc:  # noqa: BLE001
        print(f"deepscreen webhooks relay: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        if args.webhooks_command == "redeliver":
            print(json.dumps({"topic": "escalation",
                              "delivered": relay.redeliver_escalations(ctx, config, args.older_than)}))
        elif args.once:
            print(json.dumps({"topic": relay.TOPIC, "sent": relay.relay_once(ctx, config, from_start=args.from_start)}))
        else:
            relay.relay_forever(ctx, config, args.interval, from_start=args.from_start)
    except KeyboardInterrupt:
        pass
    finally:
        ctx.close()
    return EXIT_OK


def add_review_commands(parser: argparse.ArgumentParser) -> None:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001

    p = sub.add_parser("serve", help="run the review API and moderators' console (FastAPI + uvicorn)",
                       description="Serve the /v1 API (OpenAPI at /openapi.json) and the console at /console. "
                       "Uses Postgres, S3 and the queues from DEEPSCREEN_ settings, or with --home the SQLite "
                       "database and folder of `deepscreen scan` (no queue).")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--home", help="serve an embedded scan home (SQLite + local folder) instead")
    p.add_argument("--database-url", help="default $DEEPSCREEN_DATABASE_URL")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--proxy-headers", action="store_true", help="trust X-Forwarded-* from a reverse proxy")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("token", help="API tokens: create, revoke, list (stored hashed)")
    tsub = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    t = tsub.add_parser("create", help="create a token and print it once")
    t.add_argument("--role", required=True, choices=["service", "moderator", "admin"],
                   help="service: ingest + read verdicts; moderator: review + read; admin: everything")
    t.add_argument("--name", default=None, help="who or what holds it (a moderator's work is recorded under it)")
    t.add_argument("--expires-days", type=float, help="lifetime in days (default: no expiry)")
    t.add_argument("--json", action="store_true")
    t = tsub.add_parser("revoke", help="revoke a token by id or prefix")
    t.add_argument("token", help="token id or the prefix `token list` shows")
    t = tsub.add_parser("list", help="list tokens (never the tokens themselves)")
    t.add_argument("--active", action="store_true", help="hide revoked tokens")
    t.add_argument("--json", action="store_true")
    for t in tsub.choices.values():
        t.add_argument("--database-url", help="default $DEEPSCREEN_DATABASE_URL")
        t.add_argument("--home", help="an embedded scan home (SQLite) instead")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("export-labels", help="write moderators' decisions as a training dataset",
                       description="Face crops of decided review items in real/ and fake/, with manifest.csv "
                       "(file,label,group,split) as `deepscreen train --data` reads it.")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--margin", type=float, help="crop margin per side (default: the model's crop_margin)")
    p.add_argument("--model", dest="model_dir", help="model folder whose crop_margin to use")
    p.add_argument("--val-percent", type=int, default=10, help="share of images in the val split (by sha256)")
    p.add_argument("--home", help="an embedded scan home (SQLite + local folder) instead")
    p.add_argument("--database-url", help="default $DEEPSCREEN_DATABASE_URL")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export_labels)

    p = sub.add_parser("webhooks", help="webhook tools: relay verdict events, redeliver escalations")
    wsub = p.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")
    w = wsub.add_parser("relay", help="follow new fake verdicts and deliver them (topic verdict.fake)",
                        description="Delivers each new `fake` verdict to DEEPSCREEN_WEBHOOK_URL when "
                        "DEEPSCREEN_WEBHOOK_TOPICS includes verdict.fake. A cursor in the database remembers "
                        "how far it got; the first run starts at the newest verdict.")
    w.add_argument("--once", action="store_true", help="one pass, then exit (for cron)")
    w.add_argument("--interval", type=float, default=5.0, help="seconds between polls when idle")
    w.add_argument("--from-start", action="store_true", help="a new cursor starts at the first verdict")
    w.add_argument("--database-url", help="default $DEEPSCREEN_DATABASE_URL")
    w = wsub.add_parser("redeliver", help="send again the escalation bundles no delivery has reached",
                        description="For each escalated item whose newest evidence bundle has no successful "
                        "delivery, verify the stored bundle and deliver it again (with the usual retries).")
    w.add_argument("--older-than", type=float, default=600.0,
                   help="only bundles at least this many seconds old (younger ones may still be retrying)")
    w.add_argument("--database-url", help="default $DEEPSCREEN_DATABASE_URL")
    p.set_defaults(func=cmd_webhooks)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    add_review_commands(parser)
    args = parser.parse_args(argv)
    if getattr(args, "token_command", None) == "create" and not args.name:
        args.name = f"{args.role}-{secrets.token_hex(3)}"  # a distinct identity unless one is named
    configure_logging(args)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
