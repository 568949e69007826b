"""`deepscreen webhooks` and `deepscreen bundles`: what goes out to the platform, the webhook relay and the
Ed25519 key that signs evidence bundles."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli import common
from cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def register(sub: argparse._SubParsersAction) -> None:
    p = common.add_command(sub, "webhooks", cmd_webhooks)
    wsub = p.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")
    w = wsub.add_parser(
        "relay",
        help="deliver the webhook outbox; follow new fake verdicts (verdict.fake)",
        description="Delivers the queued webhook messages (escalations, decisions) to "
        "DEEPSCREEN_WEBHOOK_URL, one attempt per message per pass, retried with backoff. With "
        "verdict.fake in DEEPSCREEN_WEBHOOK_TOPICS it also queues each new `fake` verdict; a "
        "cursor in the database remembers how far it got, and the first run starts at the "
        "newest verdict. `serve` runs the same relay in a thread unless "
        "DEEPSCREEN_WEBHOOK_RELAY_IN_SERVE=false.",
    )
    w.add_argument("--once", action="store_true", help="one pass, then exit (for cron)")
    w.add_argument(
        "--interval",
        type=float,
        default=None,
        help="seconds between polls when idle (default $DEEPSCREEN_WEBHOOK_RELAY_INTERVAL_S)",
    )
    w.add_argument("--from-start", action="store_true", help="a new cursor starts at the first verdict")
    common.add_database_flags(w)
    w = wsub.add_parser(
        "redeliver",
        help="queue again the escalation bundles no delivery has reached",
        description="For each escalated item whose newest evidence bundle has no successful "
        "delivery and is not in the outbox, queue it again and make one delivery pass (the "
        "relay retries it with backoff).",
    )
    w.add_argument(
        "--older-than",
        type=float,
        default=600.0,
        help="only bundles at least this many seconds old (younger ones may still be retrying)",
    )
    common.add_database_flags(w)

    p = common.add_command(sub, "bundles", cmd_bundles)
    bsub = p.add_subparsers(dest="bundles_command", required=True, metavar="ACTION")
    b = bsub.add_parser("keygen", help="make the Ed25519 private key file unless it exists (mode 0600)")
    b.add_argument("--key", help="key file (default $DEEPSCREEN_BUNDLE_SIGNING_KEY_FILE)")
    b = bsub.add_parser("public-key", help="print the public key (PEM) that verifies bundles")
    b.add_argument("--key", help="private key file (default $DEEPSCREEN_BUNDLE_SIGNING_KEY_FILE)")
    b = bsub.add_parser("verify", help="verify a bundle zip (exit 0 when genuine and complete)")
    b.add_argument("bundle", help="the bundle zip")
    b.add_argument(
        "--public-key",
        help="check the Ed25519 signature with this PEM (default: the HMAC, with $DEEPSCREEN_SIGNING_SECRET)",
    )


def cmd_webhooks(args: argparse.Namespace) -> int:
    """webhook tools: relay verdict events, redeliver escalations"""
    from review import relay, webhooks
    from review.context import distributed_context

    settings = common.settings(args)
    config = webhooks.config_from(settings)
    if config is None or (args.webhooks_command == "redeliver" and not config.wants("escalation")):
        print(
            f"deepscreen webhooks {args.webhooks_command}: set DEEPSCREEN_WEBHOOK_URL (and, to redeliver, "
            "add escalation to DEEPSCREEN_WEBHOOK_TOPICS)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        ctx = distributed_context(settings)
    except Exception as exc:  # noqa: BLE001 - an outage is exit 3; a defect is re-raised
        return common.outage(common.command_name(args), exc)
    try:
        if args.webhooks_command == "redeliver":
            print(
                json.dumps(
                    {
                        "topic": "escalation",
                        "queued": relay.redeliver_escalations(ctx, config, args.older_than),
                    }
                )
            )
        elif args.once:
            queued = (
                relay.follow_verdicts(ctx, from_start=args.from_start) if config.wants(relay.TOPIC) else 0
            )
            print(json.dumps({"verdicts_queued": queued, "attempts": relay.deliver_due(ctx, config)}))
        else:
            relay.relay_forever(
                ctx, config, args.interval or settings.webhook_relay_interval_s, from_start=args.from_start
            )
    except KeyboardInterrupt:
        pass
    finally:
        ctx.close()
    return EXIT_OK


def cmd_bundles(args: argparse.Namespace) -> int:
    """evidence bundles: the Ed25519 signing key; verify a bundle

    Evidence bundles carry an HMAC (for holders of the signing secret) and, with
    DEEPSCREEN_BUNDLE_SIGNING_KEY_FILE set, an Ed25519 signature that anyone with the exported public key can
    check."""
    from review import signing

    if args.bundles_command == "verify":
        return _verify_bundle(args)
    path = Path(args.key) if args.key else common.settings(args).bundle_signing_key_file
    if path is None:
        print(
            f"deepscreen bundles {args.bundles_command}: give --key or set DEEPSCREEN_BUNDLE_SIGNING_KEY_FILE",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.bundles_command == "keygen":
        made = signing.generate_key_file(path)
        print(
            f"{'wrote a new' if made else 'kept the existing'} Ed25519 key in {path}; publish the output of "
            "`deepscreen bundles public-key`",
            file=sys.stderr,
        )
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
    secret = None if public else common.settings(args).signing_secret.get_secret_value()
    try:
        manifest = bundles.verify_bundle(archive, secret=secret, public_key=public)
    except (signing.SigningKeyError, bundles.BundleInvalid) as exc:
        print(json.dumps({"bundle": args.bundle, "valid": False, "reason": exc.reason}))
        return EXIT_FAILED
    print(
        json.dumps(
            {
                "bundle": args.bundle,
                "valid": True,
                "review_item_id": manifest["review_item"]["id"],
                "files": len(manifest["files"]),
            }
        )
    )
    return EXIT_OK
