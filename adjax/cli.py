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
    # The library's "bad input" errors: reported as one sentence, without a traceback.
    from adjax.data.layouts import DataError
    from adjax.evaluate import EvaluationError
    from adjax.results import RecordError
    from adjax.train import TrainingError

    return (DataError, EvaluationError, RecordError, TrainingError, FileNotFoundError,
            FileExistsError, ValueError)


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
    from adjax import xla

    xla.configure()  # before JAX starts its backends: the CPU flags adjax's timings rely on
    from adjax import bench

    peer = None
    if FLAGS.peer:
        from adjax import peers

        try:
            peer = peers.get(FLAGS.peer)
        except ImportError as err:
            _fail("bench", f"{err} (or pip install \"adjax[peers]\").")
    config = FLAGS.config
    results_dir = FLAGS.results_dir or bench.default_results_dir(config)
    records = bench.run(config, batch_sizes=[int(b) for b in FLAGS.batch_sizes],
                        precisions=FLAGS.precision, train_chunk=FLAGS.train_chunk,
                        rounds=FLAGS.rounds, repeats=FLAGS.repeats,
                        latency_runs=FLAGS.latency_runs, results_dir=results_dir, peer=peer)
    for record in records:
        print(bench.format_summary(record))
    print(f"adjax bench: records in {results_dir}")


def _tables() -> None:
    from adjax import results, tables

    records = results.read_all(FLAGS.results)
    if FLAGS.update:
        for name in FLAGS.update:
            path = pathlib.Path(name)
            path.write_text(tables.update_blocks(path.read_text(), records))
            print(f"adjax: regenerated the tables in {path}")
        return
    if FLAGS.list:
        for source, table, caption in tables.list_tables(records):
            print(f"{table}\t{source}\t{caption}")
        return
    if FLAGS.table:
        print(tables.thesis_table(records, FLAGS.table, source=FLAGS.publication,
                                  fmt=FLAGS.format))
        return
    if FLAGS.method:
        records = [r for r in records if r["method"] == FLAGS.method]
    if FLAGS.dataset:
        records = [r for r in records if r["dataset"] == FLAGS.dataset]
    if FLAGS.kind == "bench":
        print(tables.speed_table(records, fmt=FLAGS.format))
        return
    print(tables.render(records, fmt=FLAGS.format, source=FLAGS.source,
                        metric_names=FLAGS.metrics or None))


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
                             "(default: config.train.steps_per_call); a peer runs as many.")
        flags.DEFINE_integer("rounds", 3, "Rounds; with a peer, each round times both sides, "
                             "the order alternating, and gives one ratio peer/adjax.")
        flags.DEFINE_integer("repeats", 5, "Timed training calls, and inference calls per batch "
                             "size, per side and round.")
        flags.DEFINE_integer("latency_runs", 30, "Timed batch-1 round trips per side and round.")
        flags.DEFINE_string("results_dir", None, "Where to write the records (default: a new "
                            "runs/bench/<method>-<variant>-<UTC time> folder, so that a trial "
                            "run leaves the committed results/bench/ and the README alone).")
        flags.DEFINE_string("peer", None, "Also time a peer implementation, interleaved with "
                            "adjax: anomalib (needs torch and anomalib).")
        return _bench
    if command == "tables":
        flags.DEFINE_string("results", "results", "Folder of results records (searched "
                            "recursively).")
        flags.DEFINE_enum("format", "md", ["md", "latex", "csv"], "Output format.")
        flags.DEFINE_enum("source", "adjax", ["adjax", "paper", "all"],
                          "adjax runs, published numbers, or both side by side.")
        flags.DEFINE_list("metrics", [], "Metric columns (default: all present).")
        flags.DEFINE_enum("kind", "metrics", ["metrics", "bench"],
                          "Accuracy tables, or the speed table of the bench records.")
        flags.DEFINE_string("method", None, "Only this method.")
        flags.DEFINE_string("dataset", None, "Only this data set.")
        flags.DEFINE_string("table", None, "Rebuild one published table by its id (see --list).")
        flags.DEFINE_string("publication", None, "With --table: part of the citation that "
                            "picks the publication.")
        flags.DEFINE_bool("list", False, "List the published tables that can be rebuilt.")
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
