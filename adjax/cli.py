"""`adjax <command>`: a thin layer that parses flags, then calls the library.

Bad input stops with one sentence on stderr (`adjax <command>: error: ...`) and exit status 2,
never a traceback: the library's own error classes (ValueError subclasses, OSError subclasses,
and the trainer's and evaluator's errors) carry the sentence.
"""

import os
import pathlib
import re
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
  predict      score any images with a trained run: maps (PNG, .npy) and a CSV of scores
               adjax predict --workdir=runs/q --images='photos/*.png'
  config       print a config (its variants and every key, with overrides applied)
               adjax config --config=configs/efficientad.py:quick
  bench        time training and inference of a config; write a `bench` results record
               adjax bench --config=configs/efficientad.py:s --precision=fp32,bf16
  weights import  convert published PyTorch weights (or a distilled teacher) to Flax msgpack
               adjax weights import --from=teacher_small.pth --to=pdn_s.msgpack
                   --kind=efficientad_teacher_s
  analyze      seed 000's data-set analyses: pairwise MSE / 1-SSIM histograms, ResNet-18
               features with PCA and t-SNE (PNG plots and summary.json)
               adjax analyze --root=data/mvtec_ad --category=bottle --out=analysis/bottle
  tables       render tables from stored results records (adjax runs and published numbers)
               adjax tables --source=all --dataset=mvtec_ad
               adjax tables --list;  adjax tables --table=6.3 --publication=Mishra

`adjax <command> --help` lists a command's flags.
"""

CONFIG_HELP = """Config flags (train, bench, config):
  --config=FILE.py:VARIANT   a config file and one of its variants (`adjax config
                             --config=FILE.py` lists them and prints every key)
  --config.KEY=VALUE         override any key, e.g. --config.train.steps=1000
                             --config.data.root=/data/mvtec_ad --config.data.category=bottle
"""

FLAGS = flags.FLAGS


def _errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean bad input (or a run that cannot go on) and are reported as one
    sentence. Only modules already imported are asked, so that a command never imports the
    trainer just to name its errors."""
    from adjax.files import OutputError

    classes: list[type[BaseException]] = [ValueError, FileNotFoundError, FileExistsError,
                                          OutputError]
    for module, name in (("adjax.train", "TrainingError"),
                         ("adjax.evaluate", "EvaluationError")):
        if module in sys.modules:
            classes.append(getattr(sys.modules[module], name))
    return tuple(classes)


def _config_arg(args: list[str]) -> str | None:
    for i, arg in enumerate(args):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(args):
            return args[i + 1]
    return None


def _check_config_file(command: str, args: list[str]) -> None:
    """A config file that is missing or does not compile stops before flag parsing (whose
    message would be a traceback)."""
    spec = _config_arg(args)
    if spec is None:
        return
    path = pathlib.Path(spec.split(":", 1)[0])
    if not path.is_file():
        _fail(command, f"config file {path} does not exist.")
    try:
        compile(path.read_bytes(), str(path), "exec")
    except SyntaxError as err:
        _fail(command, f"config file {path} does not compile (line {err.lineno}: {err.msg}).")
    except (OSError, ValueError) as err:
        _fail(command, f"config file {path} cannot be read ({err}).")


def _unknown_key(args: list[str], err: BaseException) -> str:
    """One sentence for an override of a key the config lacks; ml_collections' message is
    "'stepz'\\nDid you mean "steps" instead of "stepz"?"."""
    while err.args and isinstance(err.args[0], BaseException):  # AttributeError(KeyError(...))
        err = err.args[0]
    text = err.args[0] if err.args and isinstance(err.args[0], str) else str(err)
    lines = text.strip().splitlines() or [""]
    key = lines[0].strip().strip("'\"")
    overrides = [a.split("=", 1)[0].lstrip("-") for a in args if a.startswith("--config.")]
    given = next((o for o in overrides if key in o.split(".")), f"config.{key}")
    hint = re.search(r'Did you mean "([^"]+)"', text)
    suggestion = ""
    if hint:
        suggestion = f" (did you mean {given.rsplit('.', 1)[0]}.{hint.group(1)}?)"
    return f"{given} is not a key of this config{suggestion}."


def _parse(command: str, args: list[str]) -> list[str]:
    """Parses `args` into FLAGS and returns what is left; bad flags and config keys stop with
    one sentence."""
    _check_config_file(command, args)
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
        _fail(command, _unknown_key(args, err))


def _fail(command: str, message: str) -> NoReturn:
    print(f"adjax {command}: error: {message}", file=sys.stderr)
    sys.exit(2)


def _say(message: str) -> None:
    print(message, flush=True)


def _data() -> None:
    from adjax.data import synthetic

    path = synthetic.write_dataset(FLAGS.out, seed=FLAGS.seed, image_size=FLAGS.image_size)
    print(f"adjax: wrote the embedded data set ({', '.join(synthetic.CATEGORIES)}) to {path}")


def _train() -> None:
    import jax

    from adjax import train

    if FLAGS.distributed:
        jax.distributed.initialize()
    if FLAGS.runs:
        from adjax import matrix

        matrix.train_matrix(FLAGS.config, FLAGS.workdir, FLAGS.runs, log=_say)
    else:
        train.train(FLAGS.config, FLAGS.workdir)
    workdir = FLAGS.workdir
    if FLAGS.config.method == "efficientad_distill":
        print(f"adjax: distillation finished; export the teacher with `adjax weights import "
              f"--from={workdir} --kind=efficientad_teacher_{FLAGS.config.model.size} "
              f"--to=FILE.msgpack`")
    elif FLAGS.config.data.layout == "folder":
        print(f"adjax: training finished; score images with `adjax predict --workdir={workdir} "
              f"--images=DIR` (a folder layout has no test split to evaluate)")
    else:
        print(f"adjax: training finished; evaluate with `adjax eval --workdir={workdir}`")


def _data_overrides() -> dict[str, str]:
    return {key: getattr(FLAGS, key) for key in ("root", "category", "layout", "name")
            if getattr(FLAGS, key) is not None}


def _eval() -> None:
    from adjax import evaluate, files, matrix, tables

    workdirs = matrix.read_matrix(FLAGS.workdir) or [files.path(FLAGS.workdir)]
    records = []
    for workdir in workdirs:
        record, path = evaluate.evaluate(workdir, FLAGS.results_dir, FLAGS.fpr_limit,
                                         FLAGS.save_images, data=_data_overrides(), log=_say,
                                         register=FLAGS.register)
        records.append(record)
        print(f"adjax: wrote {path}")
        if FLAGS.save_images:
            print(f"adjax: pictures in {workdir / 'images'}")
    print(tables.render(records, metric_names=tables.DEFAULT_METRICS))
    missing = records[0]["notes"]["missing"]
    if missing:
        reasons = sorted(set(missing.values()))
        print(f"  not computed: {', '.join(missing)} ({'; '.join(reasons)})")


def _predict() -> None:
    from adjax import predict

    out = predict.predict(FLAGS.workdir, FLAGS.images, FLAGS.out, log=_say)
    print(f"adjax: wrote the scores to {out / 'scores.csv'} and the maps to {out}")


def _config() -> None:
    spec = FLAGS["config"].config_filename
    path = spec.split(":", 1)[0]
    variants = _variants(path)
    if variants:
        print(f"# variants of {path}: {', '.join(variants)} (pick one with {path}:VARIANT)")
    print(f"# {spec}, with the overrides given")
    print(FLAGS.config)


def _variants(path: str) -> tuple[str, ...]:
    """The `VARIANTS` a config file declares (empty when it declares none)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("adjax_config_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return tuple(getattr(module, "VARIANTS", ()))


def _bench() -> None:
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
                        latency_runs=FLAGS.latency_runs, results_dir=results_dir, peer=peer,
                        matrix=FLAGS.matrix)
    for record in records:
        print(bench.format_summary(record))
    print(f"adjax bench: records in {results_dir}")


def _tables() -> None:
    # Reads the records under --results and prints one table (a hint of what a readable
    # selection left out goes to stderr; see tables.overview).
    from adjax import files, results, tables

    records = [r for folder in FLAGS.results for r in results.read_all(folder)]
    if not records:
        raise ValueError(f"no results records under {', '.join(FLAGS.results)} (searched it "
                         f"and its subfolders for *.json files whose object has 'schema' and "
                         f"'kind').")
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
        everything=FLAGS.all, where=", ".join(FLAGS.results))
    print(table)
    if hint:
        print(f"adjax tables: {hint}", file=sys.stderr)


def _weights() -> None:
    from adjax import weights
    from adjax.methods.base import count_params

    source = pathlib.Path(FLAGS["from"].value)
    if source.is_dir():  # a finished distillation run: its teacher
        from adjax.methods.efficientad_distill import exported_teacher

        variables = exported_teacher(source, FLAGS.kind)
    else:
        variables = weights.import_file(source, FLAGS.kind)
    path = weights.write_flax(FLAGS.to, variables)
    print(f"adjax: wrote {path} ({FLAGS.kind}, {count_params(variables.get('params', {})):,} "
          f"parameters, from {source}; sha256 {weights.sha256(path)})")


def _analyze() -> None:
    from adjax import analyze

    analyze.analyze(FLAGS.root, FLAGS.category, FLAGS.out, layout=FLAGS.layout,
                    image_size=FLAGS.image_size, weights=FLAGS.weights,
                    half_pairs=FLAGS.half_pairs, seed=FLAGS.seed, log=_say)
    print(f"adjax: wrote distances.png, pca.png, tsne.png and summary.json to {FLAGS.out}")


def _define_config() -> None:
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file and variant, F.py:V.",
                                    lock_config=True)
    flags.mark_flag_as_required("config")


def _define(command: str) -> Callable[[], None]:
    if command == "data":
        flags.DEFINE_string("out", None, "Folder to write the data set to.", required=True)
        flags.DEFINE_integer("seed", 0, "Generator seed (the same seed gives the same files).")
        flags.DEFINE_integer("image_size", 256, "Side of the generated square images.")
        return _data
    if command == "train":
        _define_config()
        flags.DEFINE_string("workdir", None, "Work directory (checkpoints, logs).",
                            required=True)
        flags.DEFINE_bool("distributed", False,
                          "Call jax.distributed.initialize() first (several hosts).")
        flags.DEFINE_string("runs", None, "Train a matrix in one program: categories=a,b|all "
                            "and/or seeds=0-4 (or 0,1,2); one work directory per run under "
                            "--workdir.")
        return _train
    if command == "config":
        _define_config()
        return _config
    if command == "eval":
        flags.DEFINE_string("workdir", None, "A trained run's work directory.", required=True)
        flags.DEFINE_string("results_dir", None, "Where to write the record "
                            "(default <workdir>/results).")
        flags.DEFINE_float("fpr_limit", None, "AUPRO integration limit in (0, 1] (default: the "
                           "config's).")
        flags.DEFINE_bool("save_images", False, "Draw ROC/PR/PRO curves and overlays of the "
                          "worst and best test images as PNG into <workdir>/images.")
        flags.DEFINE_string("root", None, "Score the model on the test split of another data "
                            "set root (default: the run's).")
        flags.DEFINE_string("category", None, "... or of another category.")
        flags.DEFINE_string("layout", None, "... with another layout (mvtec_ad, mpdd, btad, "
                            "visa).")
        flags.DEFINE_string("name", None, "... under another data-set name in the record.")
        flags.DEFINE_bool("register", None, "Align each test and validation image (and mask) "
                          "to a training image before scoring (seed 002's registration; "
                          "default: config.eval.register).")
        return _eval
    if command == "predict":
        flags.DEFINE_string("workdir", None, "A trained run's work directory.", required=True)
        flags.DEFINE_string("images", None, "A folder of images, or a glob pattern (quoted).",
                            required=True)
        flags.DEFINE_string("out", None, "Where to write scores.csv and the maps (default "
                            "<workdir>/predictions).")
        return _predict
    if command == "bench":
        _define_config()
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
        flags.DEFINE_integer("matrix", 0, "Also time this many runs trained in one program "
                             "(adjax train --runs) against one run, at batch 1 and at the "
                             "config's batch.")
        flags.DEFINE_string("peer", None, "Also time a peer implementation, interleaved with "
                            "adjax: anomalib (needs torch and anomalib).")
        return _bench
    if command == "weights":
        from adjax.weights import KINDS

        flags.DEFINE_string("from", None, "A PyTorch state dict (.pth, .safetensors, .npz) or "
                            "a finished distillation run's work directory.", required=True)
        flags.DEFINE_string("to", None, "The Flax msgpack file to write.", required=True)
        flags.DEFINE_enum("kind", None, list(KINDS), "What the weights are.", required=True)
        return _weights
    if command == "analyze":
        flags.DEFINE_string("root", None, "The data set root (the folder of the categories).",
                            required=True)
        flags.DEFINE_string("category", None, "The category folder.", required=True)
        flags.DEFINE_string("out", None, "Folder for distances.png, pca.png, tsne.png and "
                            "summary.json.", required=True)
        flags.DEFINE_string("layout", "mvtec_ad", "Folder layout: mvtec_ad, mpdd, btad, visa.")
        flags.DEFINE_integer("image_size", 256, "Side the images are resized to.")
        flags.DEFINE_string("weights", None, "torchvision ResNet-18 weights (.pth, "
                            ".safetensors, or a .msgpack of `adjax weights import "
                            "--kind=resnet18`); default: a random initialisation.")
        flags.DEFINE_bool("half_pairs", False, "Within a set, only the pairs i < j with i < "
                          "ceil(n/2), as the seed repository's loop.")
        flags.DEFINE_integer("seed", 42, "t-SNE's and PCA's random state and the ResNet "
                             "initialisation's seed.")
        return _analyze
    if command == "tables":
        flags.DEFINE_multi_string("results", ["results"], "Folder of results records or of "
                                  "work directories, searched recursively (non-record JSON is "
                                  "skipped); repeat the flag to read several.")
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


def _help(command: str) -> NoReturn:
    name = {"data": "data synth", "weights": "weights import"}.get(command, command)
    print(f"usage: adjax {name} [flags]\n")
    print(FLAGS.module_help(sys.modules[__name__]).split("\n", 1)[1])
    if command in ("train", "bench", "config"):
        print("\n" + CONFIG_HELP)
    sys.exit(0)


# Commands with one subcommand: (its name, the usage line printed without it).
_SUBCOMMANDS = {
    "data": ("synth", "adjax data synth --out DIR [--seed N] [--image_size S]"),
    "weights": ("import", "adjax weights import --from=FILE --to=FILE.msgpack --kind=KIND"),
}


def run(argv: list[str] | None = None) -> None:
    """Entry point of the `adjax` console script."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(USAGE)
        sys.exit(0 if len(argv) >= 2 else 2)
    command, rest = argv[1], argv[2:]
    if command in _SUBCOMMANDS:
        sub, usage = _SUBCOMMANDS[command]
        if rest and rest[0] == sub:
            rest = rest[1:]
        elif "--help" not in rest and "-h" not in rest:
            print(f"usage: {usage}", file=sys.stderr)
            sys.exit(2)
    try:
        main = _define(command)
    except KeyError:
        print(f"adjax: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    if "--help" in rest or "-h" in rest:
        _help(command)
    # XLA's own log (e.g. its "Very slow compile?" banner on a busy CPU) is not adjax's output:
    # adjax says what it is compiling. TF_CPP_MIN_LOG_LEVEL=0 brings XLA's log back.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from adjax import xla

    xla.configure()  # before JAX starts a backend: XLA:CPU's flags (see adjax.xla)
    unparsed = _parse(command, rest)
    if unparsed:
        _fail(command, f"unexpected arguments: {' '.join(unparsed)}")
    logging.set_verbosity(logging.WARNING)
    try:
        main()
    except _errors() as err:
        _fail(command, str(err).rstrip())
