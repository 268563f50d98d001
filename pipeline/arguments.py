"""The `bulkscribe` command line: the parser of every command, and the JobSpec a `run`
(or `submit`) builds from its arguments. `pipeline.cli` runs the commands."""

from __future__ import annotations

import argparse
import json

from pipeline.config import ActorOptions, JobSpec, WhisperOptions


def _storage_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)  # numbers, true/false, JSON objects
    except json.JSONDecodeError:
        return key, value


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("bulkscribe")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bulkscribe",
        allow_abbrev=False,
        description="Transcribe large audio collections with faster-whisper on Ray into resumable Parquet.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    parser.add_argument("--version", action="version", version=f"bulkscribe {_version()}")
    # No abbreviations: `submit` forwards the run's options to the cluster as written, and
    # `--addr` or `--wai` would be read here as --address and --wait but not there.
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", allow_abbrev=False, help="transcribe inputs into an output folder (resumes what is there)")
    add_run_arguments(run)

    tune = sub.add_parser("tune", allow_abbrev=False, help="measure actors x threads x batch size on this node; `run` then uses the best")
    tune.add_argument("--model", default=WhisperOptions().model, help="the model to measure with (default tiny.en)")
    tune.add_argument("--audio", default=None, metavar="FOLDER", help="sample audio (default: the clips in tests/data/speech of a source checkout)")

    status = sub.add_parser("status", allow_abbrev=False, help="summarise an output folder")
    status.add_argument("output", help="the output folder or URL")
    status.add_argument("--storage-option", action="append", type=_storage_option, default=[], metavar="KEY=VALUE")
    status.add_argument("--node-price", type=float, default=None, metavar="PRICE",
                        help="price of one node-hour (any currency): also print cost per audio hour")

    submit = sub.add_parser("submit", allow_abbrev=False, help="send a run to a Ray cluster through its Jobs API (same options as run)",
        description="Submit `bulkscribe run` as a Ray job. --address is the cluster's dashboard URL here.",
    )
    add_run_arguments(submit)
    submit.add_argument("--wait", action="store_true", help="follow the job's logs; exit with its status")
    submit.add_argument("--no-pip", dest="pip", action="store_false",
                        help="do not install bulkscribe's requirements in the job's environment (nodes have them)")

    retry = sub.add_parser("retry-failed", allow_abbrev=False, help="transcribe again only the failed files of an output folder")
    retry.add_argument("output", help="the output folder or URL")
    add_resource_arguments(retry)

    query = sub.add_parser("query", allow_abbrev=False, help="run DuckDB SQL over the views segments, files and plan of an output folder")
    query.add_argument("output", help="the output folder or URL")
    query.add_argument("sql", help="e.g. \"select language, sum(duration_s)/3600 as hours from files group by 1\"")
    query.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table",
                       help="table (default), csv, json (one object a line) or parquet (needs --to)")
    query.add_argument("--to", default=None, help="write to this file instead of standard output")
    query.add_argument("--storage-option", action="append", type=_storage_option, default=[], metavar="KEY=VALUE")

    find = sub.add_parser("search", allow_abbrev=False, help="find segments by words or \"a phrase\", ranked, with context")
    find.add_argument("output", help="the output folder or URL")
    find.add_argument("words", help='words (all must appear) and "quoted phrases"; case and punctuation ignored')
    find.add_argument("--limit", type=int, default=20, help="show at most this many hits, best first (default 20)")
    find.add_argument("--language", default=None, help="only segments in this language")
    find.add_argument("--uri", dest="uri_like", default=None, help="only files whose uri is LIKE this, e.g. '%%/2019/%%'")
    find.add_argument("--min-logprob", type=float, default=None, help="only segments at least this confident (avg_logprob)")
    find.add_argument("--storage-option", action="append", type=_storage_option, default=[], metavar="KEY=VALUE")

    exp = sub.add_parser("export", allow_abbrev=False, help="write one subtitle or text file per transcribed file")
    exp.add_argument("output", help="the output folder or URL")
    exp.add_argument("--format", choices=["srt", "vtt", "txt", "json", "tsv"], required=True)
    exp.add_argument("--to", default="transcripts", help="target folder (default: ./transcripts)")
    exp.add_argument("--where", default=None, help="SQL condition on the files view, e.g. \"language = 'en'\"")
    exp.add_argument("--storage-option", action="append", type=_storage_option, default=[], metavar="KEY=VALUE")

    verify = sub.add_parser("verify", allow_abbrev=False, help="check an output folder: every unit once, no duplicate, parts match markers")
    verify.add_argument("output", help="the output folder or URL")
    verify.add_argument("--reparse", action="store_true",
                        help="read every marker and part, and parse the rows of every part, also of those their "
                             "writer checked (sha256 unchanged) or an object store lists as unchanged (ETag)")
    verify.add_argument("--storage-option", action="append", type=_storage_option, default=[], metavar="KEY=VALUE")

    comp = sub.add_parser("compact", allow_abbrev=False,
                          help="copy committed parts into few big files that queries read (runs do it once 1000 shards wait)")
    comp.add_argument("output", help="the output folder or URL")
    comp.add_argument("--storage-option", action="append", type=_storage_option, default=[], metavar="KEY=VALUE")

    models = sub.add_parser("models", allow_abbrev=False, help="list the bundled models and whether they are installed")
    models.add_argument("--prepare", nargs="+", metavar="MODEL", default=[],
                        help="assemble and verify these models now (once per node, e.g. in setup commands)")
    return parser


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a run; shared by `bulkscribe run` and the Ray job entry point."""
    d = WhisperOptions()
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="folders (recursive), globs, files or URLs, manifests (.csv .jsonl .parquet .txt with a uri column)")
    p.add_argument("-o", "--output", required=True, help="output folder or URL (created if missing)")
    g = p.add_argument_group(
        "model and decoding",
        "A new output folder takes these (or their defaults); a rerun into a folder takes the folder's "
        "own for those not given, and refuses different ones (they would change its transcripts).")
    g.add_argument("--model", help=f"bundled name (tiny.en, base), a CTranslate2 folder, or a faster-whisper name "
                                   f"(default {d.model})")
    g.add_argument("--compute-type", help=f"CTranslate2 compute type (default {d.compute_type})")
    g.add_argument("--beam-size", type=int,
                   help=f"beam width (default {d.beam_size}; faster-whisper's own is 5; 1 is greedy and faster)")
    g.add_argument("--language", help="language code (default: detect; English-only models: en)")
    g.add_argument("--task", choices=["transcribe", "translate"],
                   help="transcribe (default), or translate the speech into English text (multilingual models)")
    g.add_argument("--vad", action=argparse.BooleanOptionalAction,
                   help="drop what Silero VAD calls non-speech before decoding (default off: VAD misses quiet, "
                        "whispered and telephone speech)")
    g.add_argument("--word-timestamps", action=argparse.BooleanOptionalAction,
                   help="add per-word timings to each segment (default off)")
    g.add_argument("--other-languages", choices=["route", "flag"],
                   help="with an English-only model, files found in another language: 'route' transcribes them "
                        "again with the --language-check model, in their own language (default when it is "
                        "installed; kept by reruns); 'flag' keeps the English model's text, flagged "
                        "language_mismatch")
    g.add_argument("--channels", choices=["mix", "split"],
                   help="'split': transcribe each channel of a multi-channel file on its own (stereo call "
                        "recordings: who said what, overlaps kept; a `channel` column; dual mono transcribed "
                        "once); 'mix' (default): mix every file down to mono")
    p.add_argument("--language-check", default="base", metavar="MODEL",
                   help="with an English-only model, a multilingual model that names the language of doubtful "
                        "transcripts, and transcribes those in another language (--other-languages) "
                        "(default: base; 'none': no check)")
    p.add_argument("--rescan", action="store_true",
                   help="list the inputs again and plan files added since the folder was planned (a rerun with "
                        "the folder's own inputs otherwise goes by its saved plan)")
    p.add_argument("--shard-minutes", type=float, default=None,
                   help="audio per shard in minutes (default: chosen from the collection size)")
    p.add_argument("--window-minutes", type=float, default=10.0,
                   help="split local files of 1.5 windows or more into windows of this length, cut at silence "
                        "and transcribed in parallel; 0: never split (default 10)")
    add_resource_arguments(p)


def command_options(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, frozenset[str]]]:
    """Each command's parser and option strings. argparse lists neither publicly: this
    reads its `_subparsers` and `_option_string_actions` (checked on Python 3.10-3.13;
    tests/test_cli.py fails if they change)."""
    found = {}
    for action in parser._subparsers._group_actions:
        for name, sub in action.choices.items():
            found[name] = (sub, frozenset(sub._option_string_actions))
    return found


def add_resource_arguments(p: argparse.ArgumentParser) -> None:
    """Where and how fast to run; they change no transcript. Shared by run and retry-failed."""
    r = p.add_argument_group("resources")
    r.add_argument("--threads", type=int, default=None,
                   help="CPU threads per actor (default: this node's `bulkscribe tune` profile, else 1)")
    r.add_argument("--actors", type=int, default=None,
                   help="a fixed pool of this many actors (default: the profile's, on an embedded Ray; on a cluster, "
                        "an elastic pool: CPUs / threads, growing as nodes join)")
    r.add_argument("--batch-size", type=int, default=None,
                   help="files (or windows) each actor transcribes at once, their decoder steps batched; "
                        "changes no transcript (default: this node's `bulkscribe tune` profile, else 8)")
    r.add_argument("--address", default=None,
                   help="run: join this Ray cluster (default: $RAY_ADDRESS, else start one here); "
                        "submit: the cluster's dashboard URL, http://HEAD:8265 (required)")
    r.add_argument("--unit-timeout", type=float, default=None, metavar="SECONDS",
                   help="time limit per file (default: 60 s + 10 s per second of audio); past it: failed, timeout")
    p.add_argument("--storage-option", action="append", type=_storage_option, default=[], metavar="KEY=VALUE",
                   help="fsspec storage option for inputs and output, e.g. endpoint_url=http://... (repeatable)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show the progress bar (default: when stdout is a terminal)")


# The decoding options of the command line, as WhisperOptions fields.
WHISPER_ARGUMENTS = ("model", "compute_type", "beam_size", "language", "task", "vad", "word_timestamps",
                     "other_languages", "channels")


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    given = {name: getattr(args, name) for name in WHISPER_ARGUMENTS if getattr(args, name) is not None}
    return JobSpec(
        inputs=tuple(args.inputs),
        output=args.output,
        whisper=WhisperOptions(**given),
        whisper_given=frozenset(given),
        actors=actor_options(args),
        address=args.address,
        storage_options=dict(args.storage_option),
        shard_audio_s=None if args.shard_minutes is None else args.shard_minutes * 60,
        progress=args.progress,
        unit_timeout_s=args.unit_timeout,
        window_s=args.window_minutes * 60 or None,
        language_check=None if args.language_check.lower() == "none" else args.language_check,
        rescan=args.rescan,
    )


def actor_options(args: argparse.Namespace) -> ActorOptions:
    """The resource flags, filled in from this node's tuning profile where not given."""
    from pipeline.ray_session import cluster_address
    from pipeline.tune import actor_options as for_this_node

    return for_this_node(args.threads, args.actors, embedded=cluster_address(args.address) is None,
                         batch_size=args.batch_size)
