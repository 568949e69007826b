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

from workers.cli import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    build_parser,
    configure_logging,
    run_command,
)
from workers.outages import unavailable_line

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
    from workers.secret_policy import secret_weakness

    settings = _settings(args)
    problem = settings.serve_secret_problem(args.host)
    if problem:  # refused before any store is opened or port bound
        print(f"deepscreen serve: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if secret_weakness(settings.signing_secret.get_secret_value()):
        print("warning: DEEPSCREEN_SIGNING_SECRET is weak (allowed on loopback without a webhook only); set a "
              "random secret before real use", file=sys.stderr)
    try:
        ctx = embedded_context(settings, Path(args.home)) if args.home else distributed_context(settings)
    except Exception as exc:  # noqa: BLE001 - a CLI reports service trouble as an exit code
        print(unavailable_line("serve", exc), file=sys.stderr)
        return EXIT_UNAVAILABLE
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
        uvicorn.run(create_app(ctx), host=args.host, port=args.port, log_level=args.log_level,
                    server_header=False, **proxy_options(args, settings), **extra)
    finally:
        stop_relay()
    return EXIT_OK


def proxy_options(args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    """uvicorn's proxy-header options: with them on, a request from a proxy in FORWARDED_ALLOW_IPS is
    attributed to the client its X-Forwarded-For names (the address the failed-login limiter counts)."""
    options: dict[str, Any] = {"proxy_headers": settings.proxy_headers if args.proxy_headers is None
                               else args.proxy_headers}
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


def _serve_relay(ctx: Any, settings: Any):  # noqa: ANN202
    """The webhook relay thread of `serve` (when a webhook is configured); returns what stops it."""
    from review import relay, webhooks

    config = webhooks.config_from(settings)
    if config is None or not settings.webhook_relay_in_serve:
        return lambda: None
    _, stop = relay.start_in_background(ctx, config, settings.webhook_relay_interval_s)
    return stop.set


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
        print(unavailable_line("export-labels", exc), file=sys.stderr)
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
    if config is None or (args.webhooks_command == "redeliver" and not config.wants("escalation")):
        print(f"deepscreen webhooks {args.webhooks_command}: set DEEPSCREEN_WEBHOOK_URL (and, to redeliver, "
              "add escalation to DEEPSCREEN_WEBHOOK_TOPICS)", file=sys.stderr)
        return EXIT_USAGE
    try:
        ctx = distributed_context(settings)
    except Exception as exc:  # noqa: BLE001
        print(unavailable_line("webhooks relay", exc), file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        if args.webhooks_command == "redeliver":
            print(json.dumps({"topic": "escalation",
                              "queued": relay.redeliver_escalations(ctx, config, args.older_than)}))
        elif args.once:
            queued = relay.follow_verdicts(ctx, from_start=args.from_start) if config.wants(relay.TOPIC) else 0
            print(json.dumps({"verdicts_queued": queued, "attempts": relay.deliver_due(ctx, config)}))
        else:
            relay.relay_forever(ctx, config, args.interval or settings.webhook_relay_interval_s,
                                from_start=args.from_start)
    except KeyboardInterrupt:
        pass
    finally:
        ctx.close()
    return EXIT_OK


# -- bundles: the Ed25519 key of evidence bundles --------------------------------------------------------
def cmd_bundles(args: argparse.Namespace) -> int:
    from review import signing

    if args.bundles_command == "verify":
        return _verify_bundle(args)
    path = Path(args.key) if args.key else _settings(args).bundle_signing_key_file
    if path is None:
        print(f"deepscreen bundles {args.bundles_command}: give --key or set DEEPSCREEN_BUNDLE_SIGNING_KEY_FILE",
              file=sys.stderr)
        return EXIT_USAGE
    if args.bundles_command == "keygen":
        made = signing.generate_key_file(path)
        print(f"{'wrote a new' if made else 'kept the existing'} Ed25519 key in {path}; publish the output of "
              "`deepscreen bundles public-key`", file=sys.stderr)
    try:
        key = signing.load_private_key(path.resolve())
    except signing.SigningKeyError as exc:
        print(f"deepscreen bundles {args.bundles_command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.bundles_command == "public-key":
        sys.stdout.write(signing.public_key_pem(key).decode())
        print(f"key id {signing.key_id(key.public_key())}", file=sys.stderr)
    return EXIT_OK


def _verify_bundle(args: argparse.Namespace) -> int:
    from review import bundles, signing

    try:
        public = Path(args.public_key).read_bytes() if args.public_key else None
        archive = Path(args.bundle).read_bytes()
    except OSError as exc:
        print(f"deepscreen bundles verify: {exc}", file=sys.stderr)
        return EXIT_USAGE
    secret = None if public else _settings(args).signing_secret.get_secret_value()
    try:
        manifest = bundles.verify_bundle(archive, secret=secret, public_key=public)
    except (signing.SigningKeyError, bundles.BundleInvalid) as exc:
        print(json.dumps({"bundle": args.bundle, "valid": False, "reason": exc.reason}))
        return EXIT_FAILED
    print(json.dumps({"bundle": args.bundle, "valid": True, "review_item_id": manifest["review_item"]["id"],
                      "files": len(manifest["files"])}))
    return EXIT_OK


def add_review_commands(parser: argparse.ArgumentParser) -> None:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001

    p = sub.add_parser("serve", help="run the review API and moderators' console (FastAPI + uvicorn)",
                       description="Serve the /v1 API (OpenAPI at /openapi.json, for admin tokens) and the console at "
                       "/console. "
                       "Uses Postgres, S3 and the queues from DEEPSCREEN_ settings, or with --home the SQLite "
                       "database and folder of `deepscreen scan` (no queue).")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--home", help="serve an embedded scan home (SQLite + local folder) instead")
    p.add_argument("--database-url", help="default $DEEPSCREEN_DATABASE_URL")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--proxy-headers", action=argparse.BooleanOptionalAction, default=None,
                   help="take the client address and scheme from X-Forwarded-For/-Proto sent by a proxy in "
                   "--forwarded-allow-ips (default $DEEPSCREEN_PROXY_HEADERS, on)")
    p.add_argument("--forwarded-allow-ips", metavar="IPS",
                   help="comma-separated proxy addresses or networks whose X-Forwarded-* are trusted "
                   "(default $DEEPSCREEN_FORWARDED_ALLOW_IPS, else $FORWARDED_ALLOW_IPS, else 127.0.0.1,::1); "
                   "never * on a port clients reach directly")
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
    w = wsub.add_parser("relay", help="deliver the webhook outbox; follow new fake verdicts (verdict.fake)",
                        description="Delivers the queued webhook messages (escalations, decisions) to "
                        "DEEPSCREEN_WEBHOOK_URL, one attempt per message per pass, retried with backoff. With "
                        "verdict.fake in DEEPSCREEN_WEBHOOK_TOPICS it also queues each new `fake` verdict; a "
                        "cursor in the database remembers how far it got, and the first run starts at the "
                        "newest verdict. `serve` runs the same relay in a thread unless "
                        "DEEPSCREEN_WEBHOOK_RELAY_IN_SERVE=false.")
    w.add_argument("--once", action="store_true", help="one pass, then exit (for cron)")
    w.add_argument("--interval", type=float, default=None,
                   help="seconds between polls when idle (default $DEEPSCREEN_WEBHOOK_RELAY_INTERVAL_S)")
    w.add_argument("--from-start", action="store_true", help="a new cursor starts at the first verdict")
    w.add_argument("--database-url", help="default $DEEPSCREEN_DATABASE_URL")
    w = wsub.add_parser("redeliver", help="queue again the escalation bundles no delivery has reached",
                        description="For each escalated item whose newest evidence bundle has no successful "
                        "delivery and is not in the outbox, queue it again and make one delivery pass (the "
                        "relay retries it with backoff).")
    w.add_argument("--older-than", type=float, default=600.0,
                   help="only bundles at least this many seconds old (younger ones may still be retrying)")
    w.add_argument("--database-url", help="default $DEEPSCREEN_DATABASE_URL")
    p.set_defaults(func=cmd_webhooks)

    p = sub.add_parser("bundles", help="evidence bundles: the Ed25519 signing key; verify a bundle",
                       description="Evidence bundles carry an HMAC (for holders of the signing secret) and, "
                       "with DEEPSCREEN_BUNDLE_SIGNING_KEY_FILE set, an Ed25519 signature that anyone with the "
                       "exported public key can check.")
    bsub = p.add_subparsers(dest="bundles_command", required=True, metavar="ACTION")
    b = bsub.add_parser("keygen", help="make the Ed25519 private key file unless it exists (mode 0600)")
    b.add_argument("--key", help="key file (default $DEEPSCREEN_BUNDLE_SIGNING_KEY_FILE)")
    b = bsub.add_parser("public-key", help="print the public key (PEM) that verifies bundles")
    b.add_argument("--key", help="private key file (default $DEEPSCREEN_BUNDLE_SIGNING_KEY_FILE)")
    b = bsub.add_parser("verify", help="verify a bundle zip (exit 0 when genuine and complete)")
    b.add_argument("bundle", help="the bundle zip")
    b.add_argument("--public-key", help="check the Ed25519 signature with this PEM (default: the HMAC, "
                   "with $DEEPSCREEN_SIGNING_SECRET)")
    p.set_defaults(func=cmd_bundles)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    add_review_commands(parser)
    args = parser.parse_args(argv)
    if getattr(args, "token_command", None) == "create" and not args.name:
        args.name = f"{args.role}-{secrets.token_hex(3)}"  # a distinct identity unless one is named
    configure_logging(args)
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
