"""``lodestar artifacts``: the S3 artifact store's operator commands (``docs/operations.md``).

- ``lifecycle [--apply]``: print (or add to the bucket) the object-expiration rule that applies the task retention
  to ``LODESTAR_ARTIFACTS_URL``'s prefix;
- ``delete TASK_ID...``: delete tasks' artifacts now (in whichever store ``LODESTAR_ARTIFACTS_URL`` names).

Both read ``LODESTAR_*`` settings and boto3's own ``AWS_*`` variables, like the API and the workers.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_artifacts_arguments(p: argparse.ArgumentParser) -> None:
    """The subcommands of ``lodestar artifacts``."""
    sub = p.add_subparsers(dest="action", required=True)
    life = sub.add_parser("lifecycle", help="print the S3 lifecycle rule for the task retention (--apply: add it)")
    life.add_argument("--apply", action="store_true", help="add the rule to the bucket (keeps its other rules; needs "
                      "s3:GetLifecycleConfiguration and s3:PutLifecycleConfiguration)")
    delete = sub.add_parser("delete", help="delete tasks' artifacts now (needs LODESTAR_REDIS_URL for Redis ones)")
    delete.add_argument("task_ids", nargs="+")


def artifacts(args: argparse.Namespace) -> int:
    """Run ``lodestar artifacts <action>``; returns the exit code (2: no S3 store configured for ``lifecycle``)."""
    from shared.artifacts import ArtifactError, S3Artifacts, lifecycle_days, lifecycle_rule, parse_s3_url
    from shared.settings import load_settings

    settings = load_settings()
    try:
        if args.action == "lifecycle":
            if not settings.artifacts_url.startswith("s3://"):
                print("lodestar artifacts lifecycle: LODESTAR_ARTIFACTS_URL names no S3 store (artifacts in Redis "
                      "expire with their tasks)", file=sys.stderr)
                return 2
            bucket, prefix = parse_s3_url(settings.artifacts_url)
            days = lifecycle_days(settings)
            rule = (S3Artifacts.from_settings(settings).apply_lifecycle(days) if args.apply
                    else lifecycle_rule(prefix, days))
            print(json.dumps({"bucket": bucket, "applied": bool(args.apply), "rule": rule}, indent=2))
            return 0
        from shared.store import TaskStore

        store = TaskStore.from_settings(settings)
        for task_id in args.task_ids:
            print(f"{task_id}: {store.artifacts.delete_task(task_id)} artifacts deleted")
        return 0
    except (ArtifactError, ValueError) as exc:
        print(f"lodestar artifacts {args.action}: {exc}", file=sys.stderr)
        return 1
