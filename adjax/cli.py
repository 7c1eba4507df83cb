"""`adjax <command>`: a thin layer that parses flags, then calls the library.

  adjax data synth --out DIR          write the embedded default data set (MVTec AD layout)
  adjax train --config=F:V --workdir=W   train (resumes from W's last checkpoint)
  adjax eval --workdir=W              score the test split, write a results record
"""

import pathlib
import sys
from collections.abc import Callable
from typing import NoReturn

from absl import flags, logging

USAGE = """usage: adjax <command> [flags]

commands:
  data synth   write the embedded default data set
               adjax data synth --out data/synth
  train        train a method from a config (resumes from the work directory's checkpoint)
               adjax train --config=configs/efficientad.py:quick --workdir=runs/q
  eval         score a trained run's test split and write a results record
               adjax eval --workdir=runs/q
  bench        time training and inference of a config; write a `bench` results record
               adjax bench --config=configs/efficientad.py:s --precision=fp32,bf16
  tables       render tables from stored results records (adjax runs and published numbers)
               adjax tables --source=all --dataset=mvtec_ad
               adjax tables --list;  adjax tables --table=6.3 --publication=Mishra

`adjax <command> --help` lists a command's flags.
"""

FLAGS = flags.FLAGS


def _errors() -> tuple[type[BaseException], ...]:
    # The library's "bad input" errors: reported as one sentence, without a traceback. Only
    # those of modules already imported: an error of a module never imported cannot have been
    # raised, and importing train or evaluate here would pull in jax (seconds) for `adjax tables`.
    classes = {"adjax.data.layouts": "DataError", "adjax.evaluate": "EvaluationError",
               "adjax.files": "OutputError", "adjax.results": "RecordError",
               "adjax.train": "TrainingError"}
    imported = tuple(getattr(sys.modules[module], name) for module, name in classes.items()
                     if module in sys.modules)
    return (*imported, FileNotFoundError, FileExistsError, ValueError)


def _parse(command: str, args: list[str]) -> list[str]:
    """Parses `args` into FLAGS and returns what is left; bad flags and config keys stop with
    one sentence."""
    try:
        unparsed = FLAGS([f"adjax {command}", *args])[1:]
        if "config" in FLAGS:
            FLAGS.config  # noqa: B018  (config files load lazily; load now to report errors)
        return unparsed
    except flags.Error as err:
        # config_flags embeds the config file's traceback: its last line is the reason.
        reason = [line for line in str(err).splitlines() if line.strip()][-1].strip()
        _fail(command, reason.split(": ", 1)[-1] if "Error: " in reason else reason)
    except OSError as err:
        _fail(command, f"could not read the config file ({err}).")
    except (AttributeError, KeyError) as err:  # an override of a key the config lacks
        key = str(err).strip("\"'")
        given = next((a for a in args if a.startswith("--config.") and key in a), key)
        _fail(command, f"{given.split('=')[0].lstrip('-')} is not a key of this config.")


def _fail(command: str, message: str) -> NoReturn:
    print(f"adjax {command}: error: {message}", file=sys.stderr)
    sys.exit(2)


def _data() -> None:
    from adjax.data import synthetic

    path = synthetic.write_dataset(FLAGS.out, seed=FLAGS.seed, image_size=FLAGS.image_size)
    print(f"adjax: wrote the embedded data set ({', '.join(synthetic.CATEGORIES)}) to {path}")


def _train() -> None:
    import jax

    from adjax import train

    if FLAGS.distributed:
        jax.distributed.initialize()
    train.train(FLAGS.config, FLAGS.workdir)
    print(f"adjax: training finished; evaluate with `adjax eval --workdir={FLAGS.workdir}`")


def _eval() -> None:
    from adjax import evaluate, tables

    record, path = evaluate.evaluate(FLAGS.workdir, FLAGS.results_dir, FLAGS.fpr_limit,
                                     FLAGS.save_images)
    print(tables.metric_table([record]))
    for key, reason in record["notes"]["missing"].items():
        print(f"  {key}: missing ({reason})")
    print(f"adjax: wrote {path}")
    if FLAGS.save_images:
        print(f"adjax: pictures in {pathlib.Path(FLAGS.workdir) / 'images'}")


def _bench() -> None:
    from adjax import bench

    kwargs = dict(batch_sizes=[int(b) for b in FLAGS.batch_sizes], precisions=FLAGS.precision,
                  repeats=FLAGS.repeats, results_dir=FLAGS.results_dir)
    for record in bench.run(FLAGS.config, train_chunk=FLAGS.train_chunk, **kwargs):
        print(bench.format_summary(record))
    if FLAGS.peer:
        try:
            peers = bench.run_peer(FLAGS.config, peer=FLAGS.peer, **kwargs)
        except ImportError as err:
            _fail("bench", f"{err} (or pip install \"adjax[peers]\").")
        for record in peers:
            print(bench.format_summary(record))


def _tables() -> None:
    # Reads the records under --results and prints one table (a hint of what a readable
    # selection left out goes to stderr; see tables.overview).
    from adjax import files, results, tables

    records = results.read_all(FLAGS.results)
    if not records:
        raise ValueError(f"no results records under {FLAGS.results} (searched it and its "
                         f"subfolders for *.json files whose object has 'schema' and 'kind').")
    if FLAGS.update:
        for name in FLAGS.update:
            text = files.read_text(name, what="Markdown file")
            files.write_text(name, tables.update_blocks(text, records))
            print(f"adjax: regenerated the tables in {name}")
        return
    if FLAGS.list:
        print(tables.table_list(records, fmt=FLAGS.format))
        return
    if FLAGS.table:
        print(tables.thesis_table(records, FLAGS.table, publication=FLAGS.publication,
                                  fmt=FLAGS.format))
        return
    table, hint = tables.overview(
        records, fmt=FLAGS.format, source="bench" if FLAGS.kind == "bench" else FLAGS.source,
        method=FLAGS.method, dataset=FLAGS.dataset, metric_names=FLAGS.metrics,
        everything=FLAGS.all, where=FLAGS.results)
    print(table)
    if hint:
        print(f"adjax tables: {hint}", file=sys.stderr)


def _define(command: str) -> Callable[[], None]:
    if command == "data":
        flags.DEFINE_string("out", None, "Folder to write the data set to.", required=True)
        flags.DEFINE_integer("seed", 0, "Generator seed (the same seed gives the same files).")
        flags.DEFINE_integer("image_size", 256, "Side of the generated square images.")
        return _data
    if command == "train":
        from ml_collections import config_flags

        config_flags.DEFINE_config_file("config", None, "Config file and variant, F.py:V.",
                                        lock_config=True)
        flags.mark_flag_as_required("config")
        flags.DEFINE_string("workdir", None, "Work directory (checkpoints, logs).",
                            required=True)
        flags.DEFINE_bool("distributed", False,
                          "Call jax.distributed.initialize() first (several hosts).")
        return _train
    if command == "eval":
        flags.DEFINE_string("workdir", None, "A trained run's work directory.", required=True)
        flags.DEFINE_string("results_dir", None, "Where to write the record "
                            "(default <workdir>/results).")
        flags.DEFINE_float("fpr_limit", None, "AUPRO integration limit (default: the config's).")
        flags.DEFINE_bool("save_images", False, "Draw ROC/PR/PRO curves and overlays of the "
                          "worst and best test images as PNG into <workdir>/images.")
        return _eval
    if command == "bench":
        from ml_collections import config_flags

        config_flags.DEFINE_config_file("config", None, "Config file and variant, F.py:V.",
                                        lock_config=True)
        flags.mark_flag_as_required("config")
        flags.DEFINE_list("batch_sizes", ["1", "16", "64"], "Inference batch sizes.")
        flags.DEFINE_list("precision", ["fp32"], "Precisions: fp32 (no TF32) and/or bf16.")
        flags.DEFINE_integer("train_chunk", None, "Training steps per compiled call "
                             "(default: config.train.steps_per_call).")
        flags.DEFINE_integer("repeats", 10, "Timed calls per measurement.")
        flags.DEFINE_string("results_dir", "results/bench", "Where to write the records.")
        flags.DEFINE_string("peer", None, "Also time a peer implementation: anomalib.")
        return _bench
    if command == "tables":
        flags.DEFINE_string("results", "results", "Folder of results records or of work "
                            "directories, searched recursively (non-record JSON is skipped).")
        flags.DEFINE_enum("format", "md", ["md", "latex", "csv"], "Output format.")
        flags.DEFINE_enum("source", "adjax", ["adjax", "paper", "all"],
                          "adjax runs, published numbers, or both side by side.")
        flags.DEFINE_list("metrics", [], "Metric columns (default: the main metrics; with "
                          "--all or --format=csv every metric present).")
        flags.DEFINE_bool("all", False, "Every metric and, with --source=all, every series "
                          "(default: a readable selection; CSV is always complete).")
        flags.DEFINE_enum("kind", "metrics", ["metrics", "bench"],
                          "Accuracy tables, or the speed table of the bench records.")
        flags.DEFINE_string("method", None, "Only this method (as the records name it).")
        flags.DEFINE_string("dataset", None, "Only this data set.")
        flags.DEFINE_string("table", None, "Rebuild one published table by its id (see --list).")
        flags.DEFINE_string("publication", None, "With --table: a word of the citation that "
                            "picks the publication (--list shows one for each table).")
        flags.DEFINE_bool("list", False, "List the published tables that can be rebuilt, with "
                          "the word to pass to --publication.")
        flags.DEFINE_list("update", [], "Markdown files whose `<!-- adjax tables ... -->` "
                          "blocks to regenerate (e.g. README.md).")
        return _tables
    raise KeyError(command)


def run(argv: list[str] | None = None) -> None:
    """Entry point of the `adjax` console script."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(USAGE)
        sys.exit(0 if len(argv) >= 2 else 2)
    command, rest = argv[1], argv[2:]
    if command == "data":
        if not rest or rest[0] != "synth":
            print("usage: adjax data synth --out DIR [--seed N] [--image_size S]",
                  file=sys.stderr)
            sys.exit(2)
        rest = rest[1:]
    try:
        main = _define(command)
    except KeyError:
        print(f"adjax: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    if "--help" in rest or "-h" in rest:
        print(f"usage: adjax {command} [flags]\n")
        print(FLAGS.module_help(sys.modules[__name__]).split("\n", 1)[1])
        sys.exit(0)
    unparsed = _parse(command, rest)
    if unparsed:
        _fail(command, f"unexpected arguments: {' '.join(unparsed)}")
    logging.set_verbosity(logging.WARNING)
    try:
        main()
    except _errors() as err:
        _fail(command, str(err))
