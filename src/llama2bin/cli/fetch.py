"""The fetch command (parsing and printing; the work is in fetch/)."""

from __future__ import annotations

import argparse
import os

from ..errors import Llama2binError
from ..outputs_guard import Output, check_outputs


def add_fetch_parser(sub) -> None:  # type: ignore[no-untyped-def]
    p = sub.add_parser(
        "fetch",
        help="download or locate a model's checkpoint; record it in DEST/SOURCE.json",
        description="Obtain a checkpoint reproducibly. Writes DEST/<filename> (--url), DEST/snapshot/ (--repo) or "
        "nothing (--path, used in place), then DEST/SOURCE.json last: source, resolved revision, sha256 and size of "
        "every file. huggingface.co URLs and --repo go through huggingface_hub (its cache first; HF_HUB_OFFLINE=1 "
        "works offline); other URLs are resumed and sha256-checked before the final name. Credentials only from "
        "HF_TOKEN or the Hugging Face login cache, and only for the Hub.",
    )
    p.add_argument("--model", required=True, metavar="NAME", help="model name (recorded in SOURCE.json)")
    p.add_argument("--dest", metavar="DIR", help="output folder (default resources/checkpoints/NAME)")
    src = p.add_argument_group("source (exactly one)")
    g = src.add_mutually_exclusive_group(required=True)
    g.add_argument("--path", metavar="P", help="local checkpoint file or directory, used in place")
    g.add_argument("--url", metavar="URL", help="download one file: a huggingface.co/ORG/NAME/resolve/REV/FILE URL "
                   "through huggingface_hub, any other URL resumable and retried; checked before its final name")
    g.add_argument("--repo", metavar="ORG/NAME", help="Hugging Face Hub repo (needs --revision)")
    src.add_argument("--sha256", metavar="HEX", help="with --url: expected sha256 (without it a warning prints the one to pin)")
    src.add_argument("--filename", metavar="F", help="with --url: file name in DEST (default: the URL's last segment)")
    src.add_argument("--revision", metavar="REV", help="with --repo: commit hash to pin (a branch works, with a warning)")
    src.add_argument("--file", metavar="F", help="with --repo: the one file in the repo that is the checkpoint "
                     "(a llama2.c .pt or a .bin); it becomes DEST/snapshot/F")
    src.add_argument("--files", nargs="+", metavar="PATTERN", help="with --repo: glob patterns of (further) files to "
                     "fetch (default: all, unless --file is given)")
    p.add_argument("--retries", type=int, default=5, help="retries of a transient failure without progress (5)")
    p.add_argument("--retry-delay", type=float, default=1.0, metavar="S", help="first back-off delay, doubled per retry (1.0)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="timeout of every socket operation (60)")
    p.add_argument("--hf-cache", metavar="DIR", help="Hugging Face cache (default HF_HUB_CACHE, else ~/.cache/huggingface/hub)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_fetch)


def fetch_outputs(model: str, spec, dest: str | None, path: str | None,  # type: ignore[no-untyped-def]
                  hf_cache: str | None) -> tuple[list[str], list[str | Output]]:
    """(inputs, outputs) of `llama2bin fetch`: DEST/SOURCE.json, plus DEST/<file> (url) or
    DEST/snapshot/ (repo); the local --path and the hub cache are read."""
    from ..fetch import SNAPSHOT_DIR, SOURCE_JSON, check_model_name, default_dest  # late: keeps CLI start-up light

    check_model_name(model)  # fetch() checks these again; DEST and the file name are made of them
    spec.validate(f"model {model}")
    folder = os.path.normpath(dest or default_dest(model))
    outputs: list[str | Output] = [os.path.join(folder, SOURCE_JSON)]
    if spec.kind == "url":
        outputs.append(spec.checkpoint_path(folder))
    elif spec.kind == "repo":
        outputs.append(Output(os.path.join(folder, SNAPSHOT_DIR), directory=True))
    return [p for p in (path, hf_cache) if p], outputs


def cmd_fetch(args: argparse.Namespace) -> int:
    from ..fetch import FetchSpec, RetryPolicy, fetch

    kind = "path" if args.path is not None else "url" if args.url is not None else "repo"
    spec = FetchSpec(
        kind, path=args.path, url=args.url, sha256=args.sha256.lower() if args.sha256 else None,
        filename=args.filename, repo=args.repo, revision=args.revision, file=args.file,
        files=tuple(args.files) if args.files else None,
    )  # fetch() validates it, as it does every spec (config entries included)
    if args.retries < 0 or args.retry_delay < 0 or args.timeout <= 0:
        raise Llama2binError("--retries and --retry-delay must be >= 0, --timeout > 0")
    retry = RetryPolicy(retries=args.retries, base_delay=args.retry_delay, timeout=args.timeout)
    check_outputs(*fetch_outputs(args.model, spec, args.dest, args.path, args.hf_cache))
    result = fetch(args.model, spec, args.dest, retry=retry, quiet=args.quiet, hf_cache_dir=args.hf_cache)
    n = len(result.record["files"])
    state = "already present" if result.reused else "ok"
    print(f"{args.model}: {result.checkpoint} ({state}; {n} file{'s' if n != 1 else ''}, {result.total_bytes} bytes)")
    print(f"wrote {result.source_json}")
    return 0
