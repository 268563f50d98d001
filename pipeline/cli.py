"""The `bulkscribe` command: one function per command (the parser is `pipeline.arguments`),
and the errors a user can fix turned into one line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from pipeline.arguments import actor_options, build_parser, spec_from_args
from pipeline.index import update_index
from pipeline.ledger import read_job


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("pipeline").setLevel(logging.DEBUG if verbose else logging.INFO)


def run_command(args: argparse.Namespace) -> int:
    from pipeline.report import format_summary
    from pipeline.job import run

    summary = run(spec_from_args(args))
    print(format_summary(summary, this_run=True))
    return exit_code(summary)


# Exit codes of run and retry-failed (README, "Exit codes").
EXIT_COMPLETE = 0
EXIT_INCOMPLETE = 1
EXIT_FILES_FAILED = 3


def exit_code(summary) -> int:
    """0: every unit committed and none failed; 3: every unit committed, some failed
    (`retry-failed` may fix them); 1: shards still to run."""
    if not summary.complete:
        return EXIT_INCOMPLETE
    return EXIT_FILES_FAILED if summary.failed else EXIT_COMPLETE


def _forwarded_run_args(argv: list[str]) -> list[str]:
    """The arguments after `submit`, less those that belong to submitting."""
    out, skip = [], False
    for arg in argv[argv.index("submit") + 1:]:
        if skip:
            skip = False
        elif arg == "--address":
            skip = True
        elif not (arg.startswith("--address=") or arg in ("--wait", "--no-pip")):
            out.append(arg)
    return out


def submit_command(args: argparse.Namespace) -> int:
    from pipeline.submit import follow, submit

    if not args.address:
        raise ValueError("submit needs --address http://HEAD:8265 (the cluster's dashboard)")
    spec = spec_from_args(args)  # refuse bad options here, before the cluster sees them
    # The job runs in its own folder: local paths must be absolute (and shared by every node).
    local = {*spec.inputs, spec.output} | ({spec.whisper.model} if os.path.isdir(spec.whisper.model) else set())
    forwarded = [
        os.path.abspath(a) if a in local and "://" not in a else a for a in _forwarded_run_args(args.argv)
    ]
    submission = submit(args.address, forwarded, [*spec.inputs, spec.output], pip=args.pip)
    print(f"submitted {submission.job_id}")
    for command in submission.follow_commands():
        print(f"  {command}")
    if not args.wait:
        return 0
    status = follow(submission)
    print(f"job {submission.job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def query_command(args: argparse.Namespace) -> int:
    from pipeline.query import open_output

    relation = _sql(lambda: open_output(args.output, dict(args.storage_option)).sql(args.sql))
    if args.format == "table":
        text = str(relation)
        if args.to:
            with open(args.to, "w", encoding="utf-8") as f:
                f.write(text)
        else:
            print(text)
        return 0
    table = relation.to_arrow_table()
    if args.format == "parquet":
        if not args.to:
            raise ValueError("--format parquet needs --to FILE")
        import pyarrow.parquet as pq

        pq.write_table(table, args.to, compression="zstd")
        return 0
    if args.format == "csv":
        import pyarrow.csv as pacsv

        sink = args.to or sys.stdout.buffer
        pacsv.write_csv(table, sink)
        return 0
    lines = "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in table.to_pylist())
    if args.to:
        with open(args.to, "w", encoding="utf-8") as f:
            f.write(lines)
    else:
        sys.stdout.write(lines)
    return 0


def _sql(work):
    """`work()`, with DuckDB's message for bad SQL instead of a traceback."""
    import duckdb

    try:
        return work()
    except duckdb.Error as exc:
        raise ValueError(f"the SQL failed: {exc}") from None


def search_command(args: argparse.Namespace) -> int:
    from pipeline.export import format_timestamp
    from pipeline.query import open_output
    from pipeline.search import highlight, search

    hits = search(open_output(args.output, dict(args.storage_option)), args.words, limit=args.limit,
                  language=args.language, uri_like=args.uri_like, min_logprob=args.min_logprob)
    mark = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("[", "]")
    for hit in hits:
        print(f"{hit.uri}  {format_timestamp(hit.start)}-{format_timestamp(hit.end)}")
        if hit.before:
            print(f"    ... {hit.before}")
        print(f"  > {highlight(hit.text, args.words, mark)}")
        if hit.after:
            print(f"    {hit.after} ...")
    print(f"{len(hits)} hit(s)" + (f" (the first {args.limit})" if len(hits) == args.limit else ""))
    return 0


def retry_failed_command(args: argparse.Namespace) -> int:
    from pipeline.report import format_summary
    from pipeline.job import retry_failed

    summary = retry_failed(args.output, storage_options=dict(args.storage_option), actors=actor_options(args),
                           address=args.address, progress=args.progress, unit_timeout_s=args.unit_timeout)
    print(format_summary(summary, this_run=True))
    return exit_code(summary)


def compact_command(args: argparse.Namespace) -> int:
    from pipeline.compact import RETIRED_KEEP_S, compact
    from pipeline.lease import Lease
    from pipeline.store import OutputStore

    store = OutputStore(args.output, dict(args.storage_option))
    if read_job(store) is None:
        raise FileNotFoundError(f"{args.output} holds no bulkscribe job (no job.json)")
    store.refuse_links_out()
    with Lease(store, "compact") as lease:
        markers = update_index(store, before_write=lease.check)
        done = compact(store, markers, before_write=lease.check)
    print(f"{done.shards} shard(s) copied into {done.files} compacted file(s), {done.dropped} file(s) no longer "
          f"used (deleted after {RETIRED_KEEP_S / 3600:g} h: a reader may still hold them), "
          f"{done.deleted} deleted; {done.waiting} committed shard(s) in no compacted file")
    return 0


def tune_command(args: argparse.Namespace) -> int:
    from pipeline.tune import format_profile, tune

    print(format_profile(tune(args.model, args.audio)))
    return 0


def status_command(args: argparse.Namespace) -> int:
    from pipeline.report import format_cost, format_summary, summarize
    from pipeline.store import OutputStore

    store = OutputStore(args.output, dict(args.storage_option))
    if read_job(store) is None:
        raise FileNotFoundError(f"{args.output} holds no bulkscribe job (no job.json)")
    summary = summarize(store)
    print(format_summary(summary))
    if args.node_price is not None:
        print(format_cost(summary, args.node_price))
    return 0


def export_command(args: argparse.Namespace) -> int:
    from pipeline.export import export
    from pipeline.query import open_output

    written = _sql(lambda: export(open_output(args.output, dict(args.storage_option)), args.format, args.to, args.where))
    print(f"wrote {len(written)} {args.format} file(s) below {args.to}")
    return 0


def verify_command(args: argparse.Namespace) -> int:
    from pipeline.store import OutputStore
    from pipeline.verify import verify

    result = verify(OutputStore(args.output, dict(args.storage_option)), reparse=args.reparse)
    print(result.format())
    if not args.reparse and result.shards_committed:
        print(f"rows read in {result.shards_reparsed} of {result.shards_committed} shards; the others' parts were "
              "checked by their writer and are unchanged since (their sha256, or on an object store their ETag, "
              "matches; --reparse reads them all)")
    return 0 if result.ok else 1


def models_command(args: argparse.Namespace) -> int:
    from pipeline.models import catalog, resolve

    for name in args.prepare:
        model = resolve(name)
        print(f"{name}: ready at {model.path} (sha256 {model.sha256} verified)")
    if args.prepare:
        return 0
    for row in catalog():
        print(f"{row['name']:<10} {row['description']}\n{'':<10} {row['state']}; model.bin sha256 {row['sha256']}")
    print("Also accepted: a local CTranslate2 folder, or any faster-whisper name (needs the network).")
    return 0


COMMANDS = {
    "run": run_command,
    "submit": submit_command,
    "retry-failed": retry_failed_command,
    "tune": tune_command,
    "status": status_command,
    "query": query_command,
    "search": search_command,
    "export": export_command,
    "verify": verify_command,
    "compact": compact_command,
    "models": models_command,
}


def main(argv: list[str] | None = None) -> int:
    """Parse `argv`, run its command, and turn the errors a user can fix into one line
    (exit 2); a run stopped by another run's takeover, or by actors that cannot start or
    keep dying with one shard, exits 1; a run or retry that committed everything with
    failed files 3 (`exit_code`); Ctrl-C 130."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    _refuse_unknown_options(parser, argv)
    args = parser.parse_args(argv)
    args.argv = argv
    setup_logging(args.verbose)
    from pipeline.inputs import InputError
    from pipeline.lease import LeaseHeldError, LeaseLostError
    from pipeline.models import ModelError
    from pipeline.resume import JobMismatchError
    from pipeline.store import UnsafeOutputError
    from pipeline.submit import SubmitError

    try:
        _refuse_files_as_folders(args)
        return COMMANDS[args.command](args)
    except (JobMismatchError, LeaseHeldError, ModelError, InputError, SubmitError, UnsafeOutputError, FileNotFoundError,
            ValueError) as exc:
        print(f"bulkscribe: error: {exc}", file=sys.stderr)
        return 2
    except LeaseLostError as exc:
        print(f"bulkscribe: stopped: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        from pipeline.dispatch import ActorStartError, ShardLostError

        if not isinstance(exc, (ActorStartError, ShardLostError)):
            raise
        print(f"bulkscribe: stopped: {exc}; what is committed stays, a rerun goes on from there", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return interrupted(args, argv)


def _refuse_unknown_options(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """A mistyped option of a command is named with the command's usage and the nearest
    option, before argparse would complain of something else (a required option it
    hides) or with the top-level usage."""
    import difflib

    from pipeline.arguments import command_options

    commands = command_options(parser)
    at = next((i for i, a in enumerate(argv) if a in commands), None)
    if at is None:
        return
    sub, known = commands[argv[at]]
    for arg in argv[at + 1:]:
        if arg == "--":
            return
        name = arg.split("=", 1)[0]
        if name.startswith("--") and name not in known:
            near = difflib.get_close_matches(name, sorted(o for o in known if o.startswith("--")), n=1)
            sub.error(f"unrecognized option {name}" + (f"; did you mean {near[0]}?" if near else ""))


def _refuse_files_as_folders(args: argparse.Namespace) -> None:
    """An output folder (or export's --to folder) that is an existing regular file."""
    for what, path in (("output folder", getattr(args, "output", None)),
                       ("export folder (--to)", args.to if args.command == "export" else None)):
        if path and "://" not in path and os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"{path} is a file, not an {what}")


def interrupted(args: argparse.Namespace, argv: list[str]) -> int:
    """After Ctrl-C: what is committed stays, and the same command resumes (exit 130)."""
    import shlex

    print("\nbulkscribe: interrupted; committed shards are kept, shards in flight are abandoned.", file=sys.stderr)
    output = getattr(args, "output", None)
    if args.command in ("run", "retry-failed") and output:
        try:
            from pipeline.report import format_summary, summarize
            from pipeline.store import OutputStore

            print(format_summary(summarize(OutputStore(output, dict(args.storage_option)))), file=sys.stderr)
        except Exception as exc:  # the folder may be half made; the message below still holds
            logging.getLogger(__name__).debug("no summary after the interruption: %s", exc)
        print(f"resume with: {shlex.join(['bulkscribe', *argv])}", file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(main())
